"""The report's figures drawn from configuration rows made the way the report makes them (metrics -> aggregate ->
add_derived): which figures exist for which runs, and that they show what the rows hold."""

import json
from pathlib import Path

import pytest
from matplotlib.container import ErrorbarContainer

from pipeline.config import ReportConfig
from pipeline.layout import RunLayout
from pipeline.records import PreprocessRun, PreprocessSummary
from pipeline.report import plots
from pipeline.report.aggregate import aggregate
from pipeline.report.curves import STUDIES, curves
from pipeline.report.interconnect import assumed
from pipeline.report.projection import project
from pipeline.report.table import add_derived
from tests.report.fixtures import epoch, metrics

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
GRADIENT_BYTES = 4 * 1_000_000  # 1 M fp32 parameters


def runs(device: str = "cpu", batch: int = 32, sizes: tuple[int, ...] = (1, 2), repeats: int = 1,
         speed: float = 100.0, **extra) -> list[dict]:
    """metrics.json of each run: samples/s grows as ranks^0.8 and differs by 2% between repeats; the step grows
    with the ranks, the all-reduce is a fifth of it."""
    out = []
    for n in sizes:
        for k in range(1, repeats + 1):
            name = f"ws{n}-{device}-bs{batch}" + (f"-r{k}" if repeats > 1 else "")
            rate = speed * n**0.8 * (1 + 0.02 * (k - 2))
            step = 0.1 * (1 + 0.1 * (n - 1)) * (1 - 0.01 * (k - 2))
            history = [epoch(1, 1.0 + 0.05 * k, 0.5 + 0.01 * k),
                       epoch(2, 0.5 + 0.05 * k, 0.8 + 0.01 * k + batch / 1000)]
            repeat = {"repeat": k, "seed": k - 1} if repeats > 1 else {}
            out.append({"name": name, **metrics(n, rate, step, step / 5, device=device, batch=batch, history=history,
                                                final_val_accuracy=history[-1]["val_accuracy"], **repeat, **extra)})
    return out


def configurations(*run_lists: list[dict]) -> list[dict]:
    rows = aggregate([run for runs_ in run_lists for run in runs_])
    add_derived(rows)
    return rows


def data(tmp_path: Path, rows: list[dict], report: ReportConfig | None = None,
         scaling: str = "weak") -> plots.FigureData:
    """What the report draws from: the rows, their curves and the projection over the assumed link."""
    report = report or ReportConfig()
    found = curves(rows, STUDIES[scaling])
    return plots.FigureData(rows, found, project(found, report, assumed(report))[0], report, tmp_path, tmp_path)


def write_summary(run_dir: Path, workers: int = 2, chunks_per_second: float = 183.15, idle_reruns: int = 1) -> None:
    """features/summary.json of a folder whose first run did all 42 tasks, followed by `idle_reruns` reruns that
    found every shard complete."""
    features = RunLayout(run_dir).features
    features.folder.mkdir(parents=True, exist_ok=True)
    worked = PreprocessRun(tasks=42, chunks=3135, seconds=3135 / chunks_per_second, workers=workers,
                           finished_at="2026-11-22T00:00:00+00:00")
    idle = PreprocessRun(tasks=0, chunks=0, seconds=1.3, workers=workers, finished_at="2026-11-22T00:01:00+00:00")
    PreprocessSummary(
        tasks=42, tasks_per_node={"node-a": 20, "node-b": 22}, files=2646, chunks=3135,
        chunks_per_split={"train": 2180, "val": 479, "test": 476}, silent_chunks_dropped=0, rejected_files=53,
        labels=["a", "b"], runs=[worked] + [idle] * idle_reruns, tasks_without_record=0).write(features.summary)


def write_scaling_benchmark(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[int, list[float]]:
    """RUN_DIR/preprocess_scaling.json in the format of benchmarks/preprocess_scaling.py, its spreads made by the
    benchmarks' own `spread`."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from benchlib import spread

    rates = {1: [100.0, 104.0, 96.0], 2: [190.0, 186.0, 194.0], 4: [300.0, 330.0, 315.0]}
    (run_dir / "preprocess_scaling.json").write_text(json.dumps({
        "benchmark": "preprocess_scaling", "measured_at": "2026-11-22T00:00:00+00:00",
        "parameters": {"workers": [1, 2, 4], "repeats": 3, "files": 120, "chunks": 700},
        "rows": [{"workers": n, "oversubscribed": n > 2, "chunks_per_second": spread(values)}
                 for n, values in rates.items()]}))
    return rates


def error_containers(ax) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def bar_extents(container: ErrorbarContainer) -> list[tuple[float, float, float]]:
    """(x, bottom, top) of each error bar."""
    (segments,) = container.lines[2]
    return [(s[0][0], s[0][1], s[1][1]) for s in segments.get_segments()]


def test_every_figure_is_written_as_png_and_svg(tmp_path, monkeypatch):
    rows = configurations(runs("cpu", 32, repeats=3, gradient_bytes=GRADIENT_BYTES),
                          runs("cpu", 64, repeats=3, gradient_bytes=GRADIENT_BYTES),
                          runs("cuda", 32, repeats=3, speed=2000.0, gradient_bytes=GRADIENT_BYTES, gpu_count=2),
                          runs("cuda", 64, repeats=3, speed=3000.0, gradient_bytes=GRADIENT_BYTES, gpu_count=2))
    write_summary(tmp_path)
    write_scaling_benchmark(tmp_path, monkeypatch)
    drawn = plots.write_figures(data(tmp_path, rows, scaling="both"))
    assert drawn == list(plots.FIGURES)
    for name in drawn:
        png, svg = (tmp_path / f"{name}.png"), (tmp_path / f"{name}.svg")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
        assert "<svg" in svg.read_text()[:1000] and svg.stat().st_size > 10_000, name
    # The section figures are placed by their sections, the others listed for the report in FIGURES order.
    assert [f.file for f in plots.figure_blocks(tmp_path)] == ["throughput.png", "step_split.png", "curves.png"]


def test_figures_without_data_are_absent_and_their_old_files_removed(tmp_path):
    for stale in ("gpu_vs_cpu.png", "gpu_vs_cpu.svg", "batch_accuracy.png", "preprocess_scaling.svg",
                  "speedup.png", "speedup_strong.svg"):
        (tmp_path / stale).write_text("from an earlier report")
    rows = configurations(runs("cpu", 32, sizes=(1, 2, 4)))
    drawn = ["speedup_weak", "throughput", "step_split", "curves"]
    assert plots.write_figures(data(tmp_path, rows)) == drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{name}.{fmt}" for name in drawn for fmt in ("png", "svg"))
    assert plots.speedup(data(tmp_path, rows), "strong") is None
    assert plots.gpu_vs_cpu(data(tmp_path, rows)) is None
    assert plots.batch_accuracy(data(tmp_path, rows)) is None
    assert plots.preprocess_scaling(data(tmp_path, rows)) is None


def test_error_bars_are_the_confidence_intervals(tmp_path):
    rows = configurations(runs("cpu", 32, repeats=3))
    two = next(r for r in rows if r["world_size"] == 2)
    assert two["efficiency_ci95"] > 0 and two["samples_per_second_ci95"] > 0
    fig = plots.speedup(data(tmp_path, rows), "weak")
    ax_speed, ax_eff = fig.axes
    (measured,) = error_containers(ax_eff)
    assert measured.has_yerr
    x, bottom, top = bar_extents(measured)[1]
    assert (x, bottom, top) == (2, pytest.approx(two["efficiency"] - two["efficiency_ci95"]),
                                pytest.approx(two["efficiency"] + two["efficiency_ci95"]))
    (throughput,) = error_containers(plots.throughput(data(tmp_path, rows)).axes[0])
    assert bar_extents(throughput)[1][2] == pytest.approx(two["samples_per_second"] + two["samples_per_second_ci95"])
    assert "mean of 3 repeats" in measured.get_label()
    # The stacked step split carries the interval of the whole step on top of the stack.
    (step,) = error_containers(plots.step_split(data(tmp_path, rows)).axes[0])
    assert [top - bottom for _, bottom, top in bar_extents(step)] == pytest.approx([2 * r["step_ms_ci95"]
                                                                                   for r in rows])
    # One run per configuration: the same lines, no bars.
    single = configurations(runs("cpu", 32))
    fig = plots.speedup(data(tmp_path, single), "weak")
    assert [c.has_yerr for ax in fig.axes for c in error_containers(ax)] == [False, False]
    assert error_containers(plots.step_split(data(tmp_path, single)).axes[0]) == []


def test_projection_is_drawn_dashed_and_labelled_as_a_model(tmp_path):
    rows = configurations(runs("cpu", 32, gradient_bytes=GRADIENT_BYTES))
    report = ReportConfig(interconnect_gbit_s=25.0, projection_world_sizes=[8, 32])
    drawn = data(tmp_path, rows, report)
    fig = plots.speedup(drawn, "weak")
    for ax in fig.axes:
        (model,) = [line for line in ax.get_lines() if line.get_label().startswith("model")]
        assert model.get_label() == "model (weak, cpu, 32/rank)"
        assert model.get_linestyle() == "--" and model.get_marker() == "s"
        assert list(model.get_xdata()) == [1, 2, 8, 32]
        assert ax.get_xscale() == "log" and ax.get_xlim()[1] >= 32
        assert list(ax.get_xticks()) == [1, 2, 8, 32]
    ax_eff = fig.axes[1]
    (model,) = [line for line in ax_eff.get_lines() if line.get_label().startswith("model")]
    (projection,) = drawn.projections
    assert model.get_ydata()[-1] == pytest.approx(projection.projected[-1].efficiency) and \
        0 < projection.projected[-1].efficiency < 1
    # Without gradient_bytes (older runs) there is no model line, and the axis stops at the measured ranks.
    old = plots.speedup(data(tmp_path, configurations(runs("cpu", 32))), "weak")
    assert not [line for ax in old.axes for line in ax.get_lines() if line.get_label().startswith("model")]
    assert list(old.axes[0].get_xticks()) == [1, 2]


def test_oversubscribed_and_gpu_sharing_points_are_ringed(tmp_path):
    rows = configurations(runs("cpu", 32, sizes=(1, 2, 4)), runs("cuda", 32, sizes=(1, 2, 4), gpu_count=2))
    fig = plots.throughput(data(tmp_path, rows))
    (rings,) = [line for line in fig.axes[0].get_lines() if line.get_label() == plots.FLAG_LABEL]
    cpu_ring, cuda_ring = [line for line in fig.axes[0].get_lines() if line.get_markeredgecolor() == "red"]
    # metrics() marks the CPU's 4 ranks oversubscribed (2 cores); the cuda 4 ranks share 2 GPUs.
    assert list(cpu_ring.get_xdata()) == [4] and list(cuda_ring.get_xdata()) == [4]
    assert rings is cpu_ring


def test_gpu_vs_cpu_bars(tmp_path):
    rows = configurations(runs("cpu", 32, repeats=3), runs("cuda", 32, repeats=3, speed=2000.0, gpu_count=4))
    fig = plots.gpu_vs_cpu(data(tmp_path, rows))
    ax_step, ax_epoch = fig.axes
    by_device = {(r["device"], r["world_size"]): r for r in rows}
    heights = [round(p.get_height(), 6) for p in ax_epoch.patches]
    assert heights == [round(by_device[(d, n)]["epoch_time_s"], 6) for d in ("cpu", "cuda") for n in (1, 2)]
    assert [t.get_text() for t in ax_step.get_xticklabels()] == ["1 rank\nbatch 32/rank", "2 ranks\nbatch 32/rank"]
    assert len(error_containers(ax_step)) == 2 and all(c.has_yerr for c in error_containers(ax_step))
    assert plots.gpu_vs_cpu(data(tmp_path, configurations(runs("cuda", 32, gpu_count=4)))) is None


def test_batch_size_vs_accuracy(tmp_path):
    rows = configurations(runs("cpu", 32, repeats=3), runs("cpu", 128, repeats=3))
    fig = plots.batch_accuracy(data(tmp_path, rows))
    containers = error_containers(fig.axes[0])
    assert [c.get_label() for c in containers] == ["cpu, 1 rank", "cpu, 2 ranks"]
    line = containers[0].lines[0]
    assert list(line.get_xdata()) == [32, 128]
    # runs(): the final accuracy is 0.8 + 0.01 k + batch / 1000, mean over k = 1..3 -> 0.82 + batch / 1000.
    assert list(line.get_ydata()) == pytest.approx([0.852, 0.948])
    assert all(c.has_yerr for c in containers)


def test_curves_have_a_band_when_repeated(tmp_path):
    repeated = configurations(runs("cpu", 32, repeats=3))
    assert repeated[0]["history"][1]["val_accuracy_ci95"] > 0
    ax_loss, ax_acc = plots.curves(data(tmp_path, repeated)).axes
    assert len(ax_acc.collections) == 2 and len(ax_loss.collections) == 2  # one band per configuration
    band = ax_acc.collections[0].get_paths()[0].vertices
    entry = repeated[0]["history"][1]
    assert band[:, 1].max() == pytest.approx(entry["val_accuracy"] + entry["val_accuracy_ci95"])
    assert len(plots.curves(data(tmp_path, configurations(runs("cpu", 32)))).axes[1].collections) == 0


def test_preprocessing_curve_from_the_benchmark(tmp_path, monkeypatch):
    rates = write_scaling_benchmark(tmp_path, monkeypatch)
    write_summary(tmp_path, workers=2, chunks_per_second=183.0)
    rows = configurations(runs("cpu", 32))
    ax = plots.preprocess_scaling(data(tmp_path, rows)).axes[0]
    (curve,) = error_containers(ax)
    assert curve.has_yerr
    means = [sum(v) / 3 for v in rates.values()]
    assert list(curve.lines[0].get_ydata()) == pytest.approx(means)
    assert [(bottom, top) for _, bottom, top in bar_extents(curve)] == [(min(v), max(v)) for v in rates.values()]
    ideal, run = [line for line in ax.get_lines() if line.get_label().startswith(("ideal", "this run"))]
    assert ideal.get_label() == "ideal (linear from 1 worker)"
    assert list(ideal.get_ydata()) == pytest.approx([means[0] * n for n in (1, 2, 4)])
    assert list(run.get_xdata()) == [2] and list(run.get_ydata()) == pytest.approx([183.0])


def test_preprocessing_single_point_without_the_benchmark(tmp_path):
    write_summary(tmp_path, workers=2, chunks_per_second=183.0)
    ax = plots.preprocess_scaling(data(tmp_path, configurations(runs("cpu", 32)))).axes[0]
    assert error_containers(ax) == []
    (point,) = ax.get_lines()
    assert list(point.get_xdata()) == [2] and list(point.get_ydata()) == pytest.approx([183.0])
