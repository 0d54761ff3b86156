"""The report reads runs through pipeline.records and groups them on what they recorded, not on folder names."""

import json

import pytest

from pipeline.records import TrainingMetrics, field_names
from pipeline.report.aggregate import aggregate, one_per_configuration
from pipeline.report.curves import curves, repeat_points
from pipeline.report.table import PHASES, add_units, collect
from tests.report.fixtures import metrics, record, skipped


def test_collect_reads_every_field_of_the_record(tmp_path):
    record(tmp_path, "ws1-cpu-bs32", metrics(1, 100.0, 0.32))
    record(tmp_path, "ws2-cpu-bs32", skipped(2, "needs 2 cores"), "skipped")
    (tmp_path / "configs" / "ws4-cpu-bs32").mkdir()  # submitted, nothing written yet
    (run,), (skip,) = collect(tmp_path)
    assert set(run) == {"name", *TrainingMetrics.read(tmp_path / "configs" / "ws1-cpu-bs32" / "metrics.json")
                        .to_dict()}
    assert run["name"] == "ws1-cpu-bs32" and run["history"][0]["epoch"] == 1
    assert skip == {"name": "ws2-cpu-bs32", "world_size": 2, "device": "cpu", "batch_size_per_rank": 32,
                    "reason": "needs 2 cores"}


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("samples_per_second"), "missing key\\(s\\) samples_per_second in TrainingMetrics"),
    (lambda m: m.update(samples_per_sec=1.0), "unknown key\\(s\\) samples_per_sec in TrainingMetrics"),
])
def test_a_metrics_file_the_record_refuses_is_an_error_naming_it(tmp_path, change, message):
    record(tmp_path, "ws1-cpu-bs32", metrics(1, 100.0, 0.32))
    path = tmp_path / "configs" / "ws1-cpu-bs32" / "metrics.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        collect(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path}: not valid JSON"):
        collect(tmp_path)


def test_runs_are_grouped_on_their_fields_and_ordered_by_repeat(tmp_path):
    """Folders named after nothing in particular: the configuration and the repeat come from metrics.json."""
    for folder, n, k, rate in [("second", 1, 2, 110.0), ("first", 1, 1, 100.0), ("two-ranks", 2, 0, 150.0)]:
        record(tmp_path, folder, metrics(n, rate, 0.3, repeat=k, seed=max(k - 1, 0)))
    runs, _ = collect(tmp_path)
    rows = aggregate(runs)
    assert [(r["name"], r["repeat_names"], r["seeds"]) for r in rows] == [
        ("ws1-cpu-bs32", ["first", "second"], [0, 1]), ("ws2-cpu-bs32", ["two-ranks"], [0])]
    for row in rows + runs:
        add_units(row)
    found = curves(rows, ["weak"])
    points = repeat_points(runs, found)
    assert {r["name"]: r["baseline"] for r in points} == {"first": "ws1-cpu-bs32", "second": "ws1-cpu-bs32",
                                                           "two-ranks": "ws1-cpu-bs32"}
    assert found[0].points[1]["speedup"] == pytest.approx(150 / 105)


def test_one_skipped_note_per_configuration():
    rows = [{"name": f"ws8-cpu-bs32-r{k}", **skipped(8, "needs 8 cores")} for k in (1, 2, 3)]
    rows.append({"name": "elsewhere", **skipped(8, "needs 8 cores", batch=64)})
    assert [(r["name"], r["reason"]) for r in one_per_configuration(rows)] == [
        ("ws8-cpu-bs32", "needs 8 cores"), ("ws8-cpu-bs64", "needs 8 cores")]


def test_the_phase_columns_are_the_timing_phases_of_the_record():
    """table.PHASES are the metrics fields of the phases pipeline.train.timing times."""
    from pipeline.train.timing import PHASES as TIMING_PHASES

    assert tuple(f"mean_{phase}" for phase in TIMING_PHASES) == PHASES
    assert set(PHASES) <= set(field_names(TrainingMetrics))
