"""`pipeline report RUN_A RUN_B ... --combine`: one curve from run folders measured separately (1 node, then more).

Each run folder is real files: config.yaml saved from configs/demo.yaml with the run's own overrides, and
configs/<name>/metrics.json written through the record (`fixtures.record`). The tests run in tmp_path, so that the
folders are named as a user types them there (`a`, `b`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config, save_config
from pipeline.layout import RunLayout
from pipeline.report.combine import COMBINED, Source, allreduce_dir, write_combined
from tests.report.fixtures import metrics, record, skipped

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
CODE_A = {"package": "0.1.0", "source_sha256": "aaaa", "commit": "commit-a"}
CODE_B = {"package": "0.1.0", "source_sha256": "bbbb", "commit": "commit-b"}


def make_run(path: Path, runs: dict[str, dict], overrides: tuple[str, ...] | list[str] = (),
             skips: dict[str, dict] | None = None) -> Path:
    """A run folder of the demo experiment with `overrides`, holding `runs` (name -> metrics) and `skips`."""
    config = dataclasses.replace(load_config(DEMO, list(overrides)), run_dir=str(path))
    RunLayout(path).root.mkdir(parents=True, exist_ok=True)
    save_config(config, RunLayout(path).config)
    for name, data in runs.items():
        record(path, name, data)
    for name, data in (skips or {}).items():
        record(path, name, data, kind="skipped")
    return path


def node_b(world_size: int, samples_per_second: float, **extra) -> dict:
    """A configuration measured a week later on another machine by another commit."""
    return metrics(world_size, samples_per_second, 0.3, hostname="node-b", code=CODE_B,
                   measured_at="2026-11-29T10:00:00+00:00", **extra)


def node_a(world_size: int, samples_per_second: float, **extra) -> dict:
    return metrics(world_size, samples_per_second, 0.3, code=CODE_A, **extra)


def scaling_rows(out: Path) -> dict[str, dict]:
    with open(out / "scaling.csv", newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_two_runs_combine_into_one_curve_that_names_both(here):
    make_run(Path("a"), {"ws1-cpu-bs32": node_a(1, 100.0), "ws2-cpu-bs32": node_a(2, 180.0)},
             skips={"ws4-cpu-bs32": skipped(4, "4 ranks need 4 cores, this machine has 2")})
    # b is given as an absolute path: the report still names it as the user sees it from here
    make_run(here / "b", {"ws4-cpu-bs32": node_b(4, 320.0)}, ["train.world_sizes=[4]"],
             skips={"ws8-cpu-bs32": skipped(8, "8 ranks need 8 cores")})

    path = write_combined([Path("a"), here / "b"], Path("out"))

    assert path == Path("out") / "report.md"
    rows = scaling_rows(Path("out"))
    assert {name: rows[name]["curve"] for name in rows} == {f"ws{n}-cpu-bs32": "weak, cpu, 32/rank" for n in (1, 2, 4)}
    assert float(rows["ws4-cpu-bs32"]["speedup"]) == pytest.approx(3.2, rel=1e-6)
    assert rows["ws4-cpu-bs32"]["baseline"] == "ws1-cpu-bs32"
    page = " ".join(path.read_text().split())
    assert "# Combined scaling report: a + b" in page
    assert ("This report combines 2 run folders measured separately: a (configurations ws1-cpu-bs32, ws2-cpu-bs32; "
            "host host, measured 2026-11-22, code commit commit-a); b (configurations ws4-cpu-bs32; host node-b, "
            "measured 2026-11-29, code commit commit-b).") in page
    assert "not all measured with the same machine" in page and "same code version" in page
    assert "ws4-cpu-bs32 was not run" not in page  # b measured what a skipped
    assert "ws8-cpu-bs32 was not run: 8 ranks need 8 cores." in page
    assert str(here) not in page and str(here) not in (Path("out") / COMBINED).read_text()
    assert json.loads((Path("out") / COMBINED).read_text()) == {
        "runs": ["a", "b"],
        "configurations": [{"configuration": "ws1-cpu-bs32", "run": "a", "folders": ["ws1-cpu-bs32"]},
                           {"configuration": "ws2-cpu-bs32", "run": "a", "folders": ["ws2-cpu-bs32"]},
                           {"configuration": "ws4-cpu-bs32", "run": "b", "folders": ["ws4-cpu-bs32"]}],
        "left_out": []}


@pytest.mark.parametrize(("overrides", "extra", "expected"), [
    (["train.model=resnet50"], {"model": "resnet50"},
     ["train.model: 'cnn' in a vs 'resnet50' in b", "model: 'cnn' in a vs 'resnet50' in b"]),
    (["data.root=data/other"], {}, ["data.root: 'data/demo' in a vs 'data/other' in b"]),
    (["train.lr=0.01"], {"lr": 0.01}, ["train.lr: 0.001 in a vs 0.01 in b", "lr: 0.001 in a vs 0.01 in b"]),
    ([], {"labels": ["a", "b", "c"]}, ["labels: ['a', 'b'] in a vs ['a', 'b', 'c'] in b"]),
])
def test_runs_of_another_model_data_or_setting_are_refused_naming_each_difference(here, overrides, extra, expected):
    make_run(Path("a"), {"ws1-cpu-bs32": node_a(1, 100.0)})
    make_run(Path("b"), {"ws2-cpu-bs32": node_b(2, 180.0, **extra)}, ["train.world_sizes=[2]", *overrides])
    with pytest.raises(ValueError, match="cannot combine a, b: their model, data or settings differ") as refused:
        write_combined([Path("a"), Path("b")], Path("out"))
    message = str(refused.value)
    assert all(difference in message for difference in expected), message
    assert message.count(" in a vs ") == len(expected), message  # world sizes, host and code are no difference
    assert not Path("out").exists()


def test_a_configuration_in_two_runs_is_taken_from_the_first_and_named(here):
    make_run(Path("a"), {"ws1-cpu-bs32": node_a(1, 100.0), "ws2-cpu-bs32": node_a(2, 180.0)})
    # b measured ws1 again, twice (repeats): neither repeat is mixed into a's figure
    make_run(Path("b"), {"ws1-cpu-bs32-r1": node_b(1, 50.0, repeat=1, seed=0),
                         "ws1-cpu-bs32-r2": node_b(1, 60.0, repeat=2, seed=1),
                         "ws4-cpu-bs32": node_b(4, 320.0)}, ["train.world_sizes=[1,4]"])

    path = write_combined([Path("a"), Path("b")], Path("out"))

    rows = scaling_rows(Path("out"))
    assert float(rows["ws1-cpu-bs32"]["samples_per_second"]) == 100.0
    assert rows["ws1-cpu-bs32"]["repeats"] == "1"
    assert float(rows["ws4-cpu-bs32"]["speedup"]) == pytest.approx(3.2, rel=1e-6)
    page = " ".join(path.read_text().split())
    assert "a (configurations ws1-cpu-bs32, ws2-cpu-bs32;" in page and "b (configurations ws4-cpu-bs32;" in page
    assert ("ws1-cpu-bs32 was measured in a and also in b: it is taken from a alone (repeats of different folders "
            "are never averaged together); the measurement in b is left out.") in page
    assert json.loads((Path("out") / COMBINED).read_text())["left_out"] == [
        {"configuration": "ws1-cpu-bs32", "run": "b", "folders": ["ws1-cpu-bs32-r1", "ws1-cpu-bs32-r2"],
         "taken_from": "a"}]


def test_pipeline_report_combine_through_the_cli(here, capsys):
    make_run(Path("a"), {"ws1-cpu-bs32": node_a(1, 100.0)})
    make_run(Path("b"), {"ws2-cpu-bs32": node_b(2, 180.0)}, ["train.world_sizes=[2]"])
    make_run(Path("c"), {"ws4-cpu-bs32": node_b(4, 320.0)}, ["train.world_sizes=[4]"])

    assert main(["report", "a", "b", "c", "--combine", "--out", "shared/combined"]) == 0
    assert (Path("shared/combined") / "report.md").is_file()
    assert set(scaling_rows(Path("shared/combined"))) == {"ws1-cpu-bs32", "ws2-cpu-bs32", "ws4-cpu-bs32"}
    assert main(["report", "a", "b", "--combine"]) == 0  # default: <last run>/combined
    assert (Path("b") / "combined" / "report.md").is_file()
    assert "report: b/combined/report.md" in capsys.readouterr().out

    assert main(["report", "a", "--combine"]) == 2
    assert "--combine needs two or more run folders" in capsys.readouterr().err
    assert main(["report", "a", "b", "c"]) == 2  # three folders without --combine are no comparison
    assert "add --combine" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--combine needs two or more run folders"):
        write_combined([Path("a")])


def test_the_largest_measured_all_reduce_feeds_the_projection(here):
    def source(name: str, world_sizes: list[int] | None) -> Source:
        Path(name).mkdir()
        if world_sizes is not None:
            fits = [{"world_size": n, "latency_s": 1e-5, "bus_bandwidth_bytes_s": 1e9} for n in world_sizes]
            RunLayout(Path(name)).allreduce.write_text(json.dumps({"device": "cpu", "backend": "gloo",
                                                                   "fits": fits}))
        return Source(Path(name), name, [], [])

    assert allreduce_dir([source("a", [2]), source("b", [2, 4]), source("c", None)]) == Path("b")
    assert allreduce_dir([source("d", None)]) is None
