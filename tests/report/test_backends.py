"""DDP and Horovod in one report: curves per backend with their own baselines, labels that name the backend only when
there are two, the "DDP and Horovod" section and its sentences derived from the rows, and the projection and the
allocation estimate kept to DDP's curves."""

import csv

import pytest
from matplotlib.container import ErrorbarContainer

from pipeline.config import ReportConfig
from pipeline.report import plots
from pipeline.report.backends import HEADING, backends_section, compare
from pipeline.report.curves import curves
from pipeline.report.document import to_markdown
from pipeline.report.interconnect import assumed
from pipeline.report.plan import plan_section
from pipeline.report.projection import project
from pipeline.report.report import write_report
from pipeline.report.sections import gpu_vs_cpu_section
from pipeline.report.table import add_units, scaling_groups
from tests.report.fixtures import metrics, record


def row(name: str, *args, ci: float | None = None, **extra) -> dict:
    """A configuration row as the report makes it (aggregated, with its units); `ci`: samples/s's interval."""
    made = {"name": name, **metrics(*args, **extra), "samples_per_second_ci95": ci}
    add_units(made)
    return made


def horovod(n: int, speed: float, step_s: float, optimizer_s: float = 0.034, **extra) -> dict:
    """metrics.json of a Horovod run whose wait sits in the optimizer step: the extra optimizer time comes out of
    forward+backward's share of the step."""
    return metrics(n, speed, step_s, 0.03, backend="horovod", mean_optimizer_s=optimizer_s,
                   mean_forward_backward_s=step_s - 0.001 - optimizer_s, **extra)


def two_backends() -> list[dict]:
    return [row("ws1-cpu-bs32", 1, 100.0, 0.32), row("ws2-cpu-bs32", 2, 180.0, 0.36, 0.05),
            row("ws1-cpu-bs32-horovod", 1, 95.0, 0.33, backend="horovod"),
            {"name": "ws2-cpu-bs32-horovod", **horovod(2, 160.0, 0.38)}]


def _units(rows: list[dict]) -> list[dict]:
    for r in rows:
        add_units(r)
    return rows


def test_curves_split_by_backend_each_against_its_own_baseline():
    found = curves(_units(two_backends()), ["weak"])
    assert [c.label for c in found] == ["weak, cpu, 32/rank, ddp", "weak, cpu, 32/rank, horovod"]
    assert [c.backend for c in found] == ["ddp", "horovod"]
    assert [[p["name"] for p in c.points] for c in found] == [["ws1-cpu-bs32", "ws2-cpu-bs32"],
                                                              ["ws1-cpu-bs32-horovod", "ws2-cpu-bs32-horovod"]]
    assert found[1].points[1]["baseline"] == "ws1-cpu-bs32-horovod"
    assert found[1].points[1]["speedup"] == pytest.approx(160.0 / 95.0)
    assert found[1].points[1]["curve"] == "weak, cpu, 32/rank, horovod"


def test_one_backend_keeps_the_labels_it_always_had():
    # ws1 has no backend key (a run of a version before backends: DDP), ws2 says ddp
    rows = [row("ws1-cpu-bs32", 1, 100.0, 0.32), row("ws2-cpu-bs32", 2, 180.0, 0.36, backend="ddp")]
    assert [c.label for c in curves(rows, ["weak", "strong"])] == ["weak, cpu, 32/rank"]
    only = [row("ws1-cpu-bs32-horovod", 1, 95.0, 0.33, backend="horovod"),
            row("ws2-cpu-bs32-horovod", 2, 160.0, 0.38, backend="horovod")]
    assert [c.label for c in curves(only, ["weak"])] == ["weak, cpu, 32/rank"]


def test_a_strong_curve_starts_at_the_fewest_ranks_of_its_own_backend():
    """DDP measured 1, 2 and 4 ranks, Horovod only 2 and 4: Horovod's strong curve starts at its 2 ranks, not
    dropped for missing DDP's 1."""
    rows = [row("ws1-cpu-bs32", 1, 100.0, 0.32), row("ws2-cpu-bs16", 2, 150.0, 0.21, batch=16),
            row("ws4-cpu-bs8", 4, 160.0, 0.2, batch=8),
            row("ws2-cpu-bs16-horovod", 2, 140.0, 0.22, batch=16, backend="horovod"),
            row("ws4-cpu-bs8-horovod", 4, 210.0, 0.2, batch=8, backend="horovod")]
    strong = curves(rows, ["strong"])
    assert [(c.label, c.baseline["name"]) for c in strong] == [
        ("strong, cpu, global batch 32, ddp", "ws1-cpu-bs32"),
        ("strong, cpu, global batch 32, horovod", "ws2-cpu-bs16-horovod")]
    assert strong[1].points[1]["speedup"] == pytest.approx(1.5)
    assert strong[1].points[1]["efficiency"] == pytest.approx(0.75)


def test_comparison_groups_never_mix_the_backends():
    groups = scaling_groups(_units(two_backends()))
    assert [(key, [r["name"] for r in group]) for key, group in groups] == [
        (("cpu", 32, "ddp"), ["ws1-cpu-bs32", "ws2-cpu-bs32"]),
        (("cpu", 32, "horovod"), ["ws1-cpu-bs32-horovod", "ws2-cpu-bs32-horovod"])]


def test_the_sentence_is_derived_from_the_rows():
    ddp = row("ws2-cpu-bs32", 2, 180.0, 0.36, 0.05)
    hvd = {"name": "ws2-cpu-bs32-horovod", **horovod(2, 160.0, 0.38)}
    add_units(hvd)
    text = compare(ddp, hvd)
    assert text.startswith(
        "At 2 CPU ranks, 32/rank, Horovod (ws2-cpu-bs32-horovod) runs 11% fewer samples/s than DDP (160.0 against "
        "180.0 samples/s; single runs, no intervals: a few percent is within a shared machine's noise); its step is "
        "20.0 ms longer (380.0 against 360.0 ms): optimizer +24.0 ms (where Horovod waits for its all-reduce), "
        "forward+backward -4.0 ms (where DDP waits for its buckets).")
    assert "Its all-reduce spans 30.0 ms against DDP's 50.0 ms" in text
    # A longer synchronize: the optimizer's change and the step's follow it.
    slower = {"name": "ws2-cpu-bs32-horovod", **horovod(2, 150.0, 0.39, optimizer_s=0.044)}
    add_units(slower)
    assert ("17% fewer samples/s than DDP (150.0 against 180.0 samples/s; single runs" in compare(ddp, slower))
    assert ("its step is 30.0 ms longer (390.0 against 360.0 ms): optimizer +34.0 ms (where Horovod waits for its "
            "all-reduce), forward+backward -4.0 ms") in compare(ddp, slower)


def test_the_sentence_says_whether_the_intervals_overlap():
    ddp = row("ws2-cpu-bs32", 2, 180.0, 0.36, 0.05, ci=5.0)
    close = {"name": "ws2-cpu-bs32-horovod", **horovod(2, 172.0, 0.38), "samples_per_second_ci95": 4.0}
    far = {"name": "ws2-cpu-bs32-horovod", **horovod(2, 160.0, 0.38), "samples_per_second_ci95": 4.0}
    for r in (close, far):
        add_units(r)
    assert "(172.0 ± 4.0 against 180.0 ± 5.0 samples/s; 95% intervals overlap, so the repeats do not settle" in \
        compare(ddp, close)
    assert "(160.0 ± 4.0 against 180.0 ± 5.0 samples/s; 95% intervals do not overlap)" in compare(ddp, far)


def test_only_matching_configurations_are_compared():
    rows = _units(two_backends() + [{"name": "ws4-cpu-bs32-horovod", **horovod(4, 250.0, 0.5)},
                                    row("ws2-cpu-bs16", 2, 150.0, 0.21, batch=16)])
    text = to_markdown(backends_section(rows, curves(rows, ["weak"])))
    assert text.count("\n- At ") == 2  # 1 and 2 ranks at 32/rank; not Horovod's 4 ranks, nor DDP's 16/rank
    assert "- At 1 CPU rank, 32/rank, Horovod (ws1-cpu-bs32-horovod) runs 5% fewer samples/s than DDP" in text
    assert "Not compared (no configuration of the other backend on the same device with the same ranks and batch " \
        "per rank): ws2-cpu-bs16, ws4-cpu-bs32-horovod." in text
    assert "| ws2-cpu-bs32-horovod | horovod | cpu | 2 | 32 | 160.0 | 0.842 | 1.000 | 345.0 | 34.0 | 30.0 | 380.0 |" \
        in text
    assert "Efficiency 0.842 against DDP's 0.900 (ws1-cpu-bs32-horovod and ws1-cpu-bs32 as baselines)." in text


def test_the_report_has_the_section_only_with_two_backends(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for run in (one, two):
        record(run, "ws1-cpu-bs32", metrics(1, 100.0, 0.32, 0.0))
        record(run, "ws2-cpu-bs32", metrics(2, 180.0, 0.36, 0.05))
    record(two, "ws1-cpu-bs32-horovod", metrics(1, 95.0, 0.33, 0.0, backend="horovod"))
    record(two, "ws2-cpu-bs32-horovod", horovod(2, 160.0, 0.38))
    alone = write_report(one).read_text()
    assert f"## {HEADING}" not in alone and "horovod" not in alone.lower()
    assert "weak, cpu, 32/rank:" in alone and "weak, cpu, 32/rank, ddp" not in alone
    report = write_report(two).read_text()
    section = report[report.index(f"## {HEADING}"):]
    assert "Horovod's DistributedOptimizer launches each gradient's all-reduce from a backward hook" in section
    assert ("- At 2 CPU ranks, 32/rank, Horovod (ws2-cpu-bs32-horovod) runs 11% fewer samples/s than DDP (160.0 "
            "against 180.0 samples/s;") in section
    assert "- weak, cpu, 32/rank, horovod: " in report and "- weak, cpu, 32/rank, ddp: " in report
    assert "overhead of the DDP and Horovod machinery" in report
    assert ("Not projected: weak, cpu, 32/rank, horovod: the model follows DDP's gradient buckets and their overlap "
            "with backward, which Horovod does not use") in report
    assert "dotted with triangles: Horovod, against its own baseline" in report
    with open(two / "scaling.csv", newline="") as f:
        table = {(r["name"], r["backend"]): (r["baseline"], float(r["speedup"])) for r in csv.DictReader(f)}
    assert table[("ws2-cpu-bs32-horovod", "horovod")] == ("ws1-cpu-bs32-horovod", pytest.approx(160 / 95))
    assert table[("ws2-cpu-bs32", "ddp")] == ("ws1-cpu-bs32", 1.8)


def test_projection_and_allocation_estimate_keep_to_ddp_curves():
    rows = _units([{**r, "gradient_bytes": 1_000_000} for r in two_backends()])
    found = curves(rows, ["weak"])
    report = ReportConfig()
    projections, missing = project(found, report, assumed(report))
    assert [p.curve for p in projections] == ["weak, cpu, 32/rank, ddp"]
    assert missing[0].startswith("weak, cpu, 32/rank, horovod: the model follows DDP's gradient buckets")
    text = to_markdown(plan_section(found, projections, report))
    assert "### Allocation estimate: weak, cpu, 32/rank, horovod" in text
    assert "so weak, cpu, 32/rank, horovod is priced at the measured scales only, with no projected rows" in text
    assert "The gradients are averaged with Horovod, as measured; larger scales are not estimated" in text
    horovod_table = text[text.index("### Allocation estimate: weak, cpu, 32/rank, horovod"):]
    assert "| model |" not in horovod_table and "| model |" in text


def test_both_backends_share_the_speedup_figure_and_read_apart(tmp_path):
    rows = _units(two_backends())
    found = curves(rows, ["weak"])
    fig = plots.speedup(plots.FigureData(rows, found, [], ReportConfig(), tmp_path), "weak")
    for ax in fig.axes:
        measured = {c.get_label(): c.lines[0] for c in ax.containers if isinstance(c, ErrorbarContainer)}
        ddp, hvd = measured["measured (weak, cpu, 32/rank, ddp)"], measured["measured (weak, cpu, 32/rank, horovod)"]
        assert (ddp.get_linestyle(), ddp.get_marker()) == ("-", "o")
        assert (hvd.get_linestyle(), hvd.get_marker()) == (":", "^")
        assert list(hvd.get_ydata())[1] == pytest.approx(160 / 95 if ax is fig.axes[0] else 160 / 95 / 2)


def test_gpu_and_cpu_are_paired_within_one_backend(tmp_path):
    rows = [row("ws2-cpu-bs32", 2, 180.0, 0.36), row("ws2-cuda-bs32", 2, 1800.0, 0.036, device="cuda"),
            row("ws2-cpu-bs32-horovod", 2, 160.0, 0.4, backend="horovod"),
            row("ws2-cuda-bs32-horovod", 2, 1700.0, 0.04, device="cuda", backend="horovod")]
    text = to_markdown(gpu_vs_cpu_section(rows, tmp_path))
    assert "| device | ranks | batch/rank | backend | step ms |" in text
    assert "- 2 ranks, batch 32/rank, ddp: an epoch takes 0.56 s on the GPU against 5.56 s on the CPU" in text
    assert "- 2 ranks, batch 32/rank, horovod: an epoch takes 0.59 s on the GPU against 6.25 s on the CPU" in text
