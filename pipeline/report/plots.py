"""The report's figures, each written as PNG (for Markdown and HTML) and SVG (for print).

A figure is drawn from `FigureData` (the configurations, the run's report settings and its folder) and may have
nothing to show (one device only, one batch size, ...): it then returns None and no file is written, and the files an
earlier report wrote under that name are removed, so the run folder holds exactly the figures of its latest report.
Means come with their 95% confidence intervals as error bars wherever the rows carry `<key>_ci95`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from pipeline.config import ReportConfig
from pipeline.io import atomic_write
from pipeline.report import document, sections
from pipeline.report.curves import Curve, Scaling
from pipeline.report.studies import figure_name
from pipeline.report.table import backend_of, backend_order, several_backends

FORMATS = ("png", "svg")
FLAG_LABEL = "oversubscribed cores or shared GPU"


@dataclass(frozen=True)
class FigureData:
    rows: list[dict]
    """One per configuration, repeats aggregated."""
    curves: list[Curve]
    """The scaling curves, each point with its speedup and efficiency."""
    projections: list
    """`projection.Projection` per curve that has one."""
    report: ReportConfig
    out: Path
    """Folder the figures are written into."""
    run_dir: Path | None = None
    """The run folder whose preprocessing is drawn (None: a combined report, which has none)."""


def _measured_fmt(curve: Curve, by_scaling: bool = False) -> str:
    """A measured curve's marker and line: DDP solid circles, another backend (Horovod) dotted triangles, so that
    the two backends' curves of one study read apart on one plot even in grey; `by_scaling` (the throughput figure,
    which holds both studies) gives DDP's strong curves squares and dash-dots, and Horovod's downward triangles."""
    strong = by_scaling and curve.scaling == "strong"
    if curve.backend == "ddp":
        return "s-." if strong else "o-"
    return "v:" if strong else "^:"


def _curve_label(curve: Curve) -> str:
    repeats = min(p.get("repeats", 1) for p in curve.points)
    return curve.label + (f", mean of {repeats} repeats" if repeats > 1 else "")


def errorbar(ax: Axes, xs: list, ys: list, cis: list[float | None], **style) -> None:
    """A line with 95% CI bars; without any CI (one repeat) the same line with no bars."""
    yerr = None if all(ci is None for ci in cis) else [ci or 0.0 for ci in cis]
    ax.errorbar(xs, ys, yerr=yerr, capsize=3, **style)


def _ci(row: dict, key: str) -> float | None:
    return row.get(f"{key}_ci95")


def _mark_flagged(ax: Axes, group: list[dict], values: list[float]) -> None:
    """Ring the points whose configuration oversubscribed the cores or shared a GPU (one legend entry per axes)."""
    flagged = [(r["world_size"], v) for r, v in zip(group, values, strict=True)
               if r.get("oversubscribed") or sections.shares_gpu(r)]
    if not flagged:
        return
    labelled = FLAG_LABEL in ax.get_legend_handles_labels()[1]
    ax.plot([x for x, _ in flagged], [y for _, y in flagged], "o", markersize=14, markerfacecolor="none",
            markeredgecolor="red", label=None if labelled else FLAG_LABEL)


def _plain(value: float, _position: int) -> str:
    return f"{value:g}"


def _log2_axis(ax: Axes, ticks: list[int]) -> None:
    """Ranks double from one point to the next: a log2 axis spaces them evenly; ticks read as plain numbers."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))


def _value_axis(ax: Axes, values: list[float]) -> None:
    """A log value axis when the values span more than a decade (GPU and CPU in one figure), else a linear one from
    zero, so that neither hides the smaller device's bars or points."""
    values = [v for v in values if v > 0 and not math.isnan(v)]
    if values and max(values) > 10 * min(values):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        ax.set_ylabel(f"{ax.get_ylabel()}, log scale")
    else:
        ax.set_ylim(0, None)


def _finish(*axes: Axes) -> None:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def speedup(data: FigureData, study: Scaling) -> Figure | None:
    """Speedup and efficiency of one study's curves against the ideal line, every backend's curves on the same
    axes (each against its own baseline; Horovod dotted, `_measured_fmt`); beside them, dashed, the projection
    model (projection.py, DDP curves only) from the measured world sizes to `report.projection_world_sizes`."""
    found = [c for c in data.curves if c.scaling == study]
    if not found:
        return None
    fig = Figure(figsize=(11, 4.4))
    ax_speed, ax_eff = fig.subplots(1, 2)
    projections = {p.curve: p for p in data.projections}
    sizes = {p["world_size"] for c in found for p in c.points}
    for i, curve in enumerate(found):
        group = curve.points
        ranks = [r["world_size"] for r in group]
        style = {"fmt": _measured_fmt(curve), "color": f"C{i}", "label": f"measured ({_curve_label(curve)})"}
        errorbar(ax_speed, ranks, [r["speedup"] for r in group], [_ci(r, "speedup") for r in group], **style)
        errorbar(ax_eff, ranks, [r["efficiency"] for r in group], [_ci(r, "efficiency") for r in group], **style)
        _mark_flagged(ax_speed, group, [r["speedup"] for r in group])
        _mark_flagged(ax_eff, group, [r["efficiency"] for r in group])
        model = projections.get(curve.label)
        if model is not None:
            points = sorted({p.world_size: p for p in model.at_measured + model.projected}.values(),
                            key=lambda p: p.world_size)
            sizes |= {p.world_size for p in points}
            xs, base = [p.world_size for p in points], curve.baseline["world_size"]
            label = f"model ({curve.label})"
            ax_speed.plot(xs, [p.efficiency * p.world_size / base for p in points], "s--", color=f"C{i}",
                          markerfacecolor="none", label=label)
            ax_eff.plot(xs, [p.efficiency for p in points], "s--", color=f"C{i}", markerfacecolor="none",
                        label=label)
    ticks = sorted(sizes)
    ax_speed.plot(ticks, [s / ticks[0] for s in ticks], "k--", label="ideal (linear)")
    ax_eff.axhline(1.0, color="k", linestyle="--", label="ideal")
    ax_eff.axhline(data.report.min_efficiency, color="red", linestyle=":",
                   label=f"report.min_efficiency {data.report.min_efficiency:.0%}")
    top = max(p["efficiency"] + (_ci(p, "efficiency") or 0.0) for c in found for p in c.points)
    ax_speed.set(xlabel="ranks (GPUs or CPU processes)", ylabel="speedup (samples/s vs fewest ranks)",
                 title=f"Speedup, {study} scaling")
    ax_eff.set(xlabel="ranks (GPUs or CPU processes)", ylabel="efficiency (speedup / ranks)",
               title=f"Efficiency, {study} scaling", ylim=(0, max(1.2, top + 0.1)))
    _log2_axis(ax_speed, ticks)
    ax_speed.set_yscale("log", base=2)  # the ideal line is then a straight diagonal
    ax_speed.yaxis.set_major_formatter(FuncFormatter(_plain))
    _log2_axis(ax_eff, ticks)
    _finish(ax_speed, ax_eff)
    return fig


def throughput(data: FigureData) -> Figure:
    """Training samples per second of all ranks together against the ranks."""
    fig = Figure(figsize=(6, 4.4))
    ax = fig.subplots()
    for i, curve in enumerate(data.curves):
        group = curve.points
        values = [r["samples_per_second"] for r in group]
        errorbar(ax, [r["world_size"] for r in group], values, [_ci(r, "samples_per_second") for r in group],
                 fmt=_measured_fmt(curve, by_scaling=True), color=f"C{i}", label=_curve_label(curve))
        _mark_flagged(ax, group, values)
    ax.set(xlabel="ranks (GPUs or CPU processes)", ylabel="samples/s (all ranks)", title="Training throughput")
    _value_axis(ax, [r["samples_per_second"] for r in data.rows])
    _log2_axis(ax, sorted({r["world_size"] for r in data.rows}))
    _finish(ax)
    return fig


def step_split(data: FigureData) -> Figure:
    """Stacked bars of the mean step per configuration; the overlapped all-reduce as a separate bar beside them."""
    rows = data.rows
    fig = Figure(figsize=(max(5, 1.6 * len(rows) + 2), 4.4))
    ax = fig.subplots()
    positions = list(range(len(rows)))
    bottom = [0.0] * len(rows)
    for key, label in [("data_ms", "data wait"), ("forward_backward_ms", "forward + backward"),
                       ("optimizer_ms", "optimizer step")]:
        values = [r[key] for r in rows]
        ax.bar([p - 0.18 for p in positions], values, 0.36, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    if any(_ci(r, "step_ms") for r in rows):
        ax.errorbar([p - 0.18 for p in positions], bottom, yerr=[_ci(r, "step_ms") or 0.0 for r in rows], fmt="none",
                    ecolor="k", capsize=3, label="95% CI of the step")
    ax.bar([p + 0.18 for p in positions], [r["allreduce_ms"] for r in rows], 0.36, color="grey", hatch="//",
           label="gradient all-reduce (overlaps backward)")
    ax.set(xticks=positions, ylabel="ms per step (mean)", title="Where a training step goes")
    ax.set_xticklabels([r["name"] for r in rows], rotation=20 if len(rows) > 4 else 0, ha="right" if len(rows) > 4
                       else "center")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return fig


def gpu_vs_cpu(data: FigureData) -> Figure | None:
    """Step and epoch time of each configuration on GPU and on CPU, side by side (only when both were measured)."""
    if not {"cpu", "cuda"} <= {r["device"] for r in data.rows}:
        return None
    keys = sorted({_setting(r) for r in data.rows}, key=lambda k: (k[0], k[1], backend_order(k[2])))
    named = several_backends(data.rows)
    fig = Figure(figsize=(max(8, 2.2 * len(keys) + 4), 4.4))
    panels = fig.subplots(1, 2)
    for ax, key, unit in zip(panels, ("step_ms", "epoch_time_s"), ("ms per step", "s per epoch"), strict=True):
        for offset, device in ((-0.2, "cpu"), (0.2, "cuda")):
            found = [next((r for r in data.rows if r["device"] == device and _setting(r) == k), None) for k in keys]
            values = [r[key] if r else math.nan for r in found]
            cis = [_ci(r, key) if r else None for r in found]
            ax.bar([i + offset for i in range(len(keys))], values, 0.4, label=device,
                   yerr=None if all(c is None for c in cis) else [c or 0.0 for c in cis], capsize=3)
        ax.set(ylabel=f"{unit} (mean)", xticks=range(len(keys)), title="Step time" if key == "step_ms" else
               "Epoch time")
        _value_axis(ax, [r[key] for r in data.rows])
        ax.set_xticklabels([f"{n} rank{'s' * (n > 1)}\nbatch {b}/rank" + (f"\n{backend}" if named else "")
                            for n, b, backend in keys])
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def _setting(row: dict) -> tuple[int, int, str]:
    """What a GPU and a CPU configuration must share to stand side by side: ranks, batch per rank, backend."""
    return row["world_size"], row["batch_size_per_rank"], backend_of(row)


def batch_accuracy(data: FigureData) -> Figure | None:
    """Final validation accuracy against the batch size per rank (only with two batch sizes or more)."""
    batches = sorted({r["batch_size_per_rank"] for r in data.rows})
    if len(batches) < 2:
        return None
    fig = Figure(figsize=(6, 4.4))
    ax = fig.subplots()
    named = several_backends(data.rows)
    keys = sorted({(r["device"], r["world_size"], backend_of(r)) for r in data.rows},
                  key=lambda k: (k[0], k[1], backend_order(k[2])))
    for i, key in enumerate(keys):
        group = sorted((r for r in data.rows if (r["device"], r["world_size"], backend_of(r)) == key),
                       key=lambda r: r["batch_size_per_rank"])
        errorbar(ax, [r["batch_size_per_rank"] for r in group], [r["final_val_accuracy"] for r in group],
                  [_ci(r, "final_val_accuracy") for r in group], fmt="o-" if key[2] == "ddp" else "^:",
                  color=f"C{i}", label=f"{key[0]}, {key[1]} rank{'s' * (key[1] > 1)}" + (f", {key[2]}" * named))
    ax.set(xlabel="batch size per rank", ylabel="validation accuracy after the last epoch",
           title="Batch size vs accuracy")
    _log2_axis(ax, batches)
    _finish(ax)
    return fig


def curves(data: FigureData) -> Figure:
    """Training loss and validation accuracy per epoch, one line per configuration, with a 95% CI band when the
    history carries `<key>_ci95`."""
    fig = Figure(figsize=(11, 4.4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, row in enumerate(data.rows):
        epochs = [h["epoch"] for h in row["history"]]
        for ax, key in ((ax_loss, "train_loss"), (ax_acc, "val_accuracy")):
            values = [h[key] for h in row["history"]]
            ax.plot(epochs, values, "o-", color=f"C{i}", label=row["name"])
            cis = [h.get(f"{key}_ci95") for h in row["history"]]
            if any(ci is not None for ci in cis):
                cis = [ci or 0.0 for ci in cis]
                ax.fill_between(epochs, [v - c for v, c in zip(values, cis, strict=True)],
                                [v + c for v, c in zip(values, cis, strict=True)], color=f"C{i}", alpha=0.2)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy", ylim=(0, 1.02))
    epochs = sorted({h["epoch"] for row in data.rows for h in row["history"]})
    for ax in (ax_loss, ax_acc):
        ax.set_xticks(epochs)
    _finish(ax_loss, ax_acc)
    return fig


def preprocess_scaling(data: FigureData) -> Figure | None:
    """Chunks/s of preprocessing against Dask workers: the benchmark's curve with the ideal line from its smallest
    worker count and this run's own measurement, or that measurement alone (the Preprocessing section says how to
    get the curve)."""
    if data.run_dir is None:
        return None
    curve = sections.preprocess_curve(data.run_dir)
    summary = sections.preprocess_summary(data.run_dir)
    if curve is None and summary is None:
        return None
    fig = Figure(figsize=(6, 4.4))
    ax = fig.subplots()
    ticks = set()
    if curve:
        workers = [p.workers for p in curve]
        ticks |= set(workers)
        rates = [p.chunks_per_second for p in curve]
        spread = [[p.chunks_per_second - (p.low if p.low is not None else p.chunks_per_second) for p in curve],
                  [(p.high if p.high is not None else p.chunks_per_second) - p.chunks_per_second for p in curve]]
        repeats = max(p.repeats for p in curve)
        ax.errorbar(workers, rates, yerr=spread if repeats > 1 else None, fmt="o-", capsize=3, color="C0",
                    label="benchmarks/preprocess_scaling.py" + (f" (min-max of {repeats} repeats)" if repeats > 1
                                                                else ""))
        base = curve[0]
        ax.plot(workers, [base.chunks_per_second * w / base.workers for w in workers], "k--",
                label=f"ideal (linear from {base.workers} worker{'s' * (base.workers > 1)})")
    worked = sections.worked_runs(summary) if summary else []
    for k, run in enumerate(worked):
        ticks.add(run.workers)
        ax.plot([run.workers], [sections.run_rate(run)], "D", color="C1", markersize=8,
                label="this run folder's preprocessing (features/summary.json)" if k == 0 else None)
    if not curve and not worked:
        return None
    if not curve:
        ax.text(0.5, 0.35, f"One measurement. For the curve over worker counts:\n{sections.SCALING_BENCHMARK} "
                "--out RUN_DIR/preprocess_scaling.json", transform=ax.transAxes, ha="center", fontsize=8)
    ax.set(xlabel="Dask workers", ylabel="chunks/s", title="Preprocessing throughput", xticks=sorted(ticks),
           xlim=(0, max(ticks) + 1), ylim=(0, None))
    _finish(ax)
    return fig


Draw = Callable[[FigureData], Figure | None]

FIGURES: dict[str, tuple[Draw, str]] = {
    figure_name("weak"): (lambda data: speedup(data, "weak"), "Weak scaling: speedup and efficiency"),
    figure_name("strong"): (lambda data: speedup(data, "strong"), "Strong scaling: speedup and efficiency"),
    "throughput": (throughput, "Training throughput against the ranks"),
    "step_split": (step_split, "Where a training step goes"),
    "curves": (curves, "Training loss and validation accuracy per epoch"),
    sections.GPU_VS_CPU_FIGURE: (gpu_vs_cpu, "Step and epoch time on GPU and CPU"),
    sections.BATCH_ACCURACY_FIGURE: (batch_accuracy, "Batch size vs validation accuracy"),
    sections.PREPROCESS_FIGURE: (preprocess_scaling, "Preprocessing throughput against Dask workers"),
}
"""name -> (draw, caption). Those named in `PLACED` are placed by their section, beside their table."""

RETIRED = ("speedup",)
"""Figures of earlier versions (one speedup figure for every curve), removed so a run folder holds only this
report's figures."""

PLACED = sections.SECTION_FIGURES | {figure_name("weak"), figure_name("strong")}


def write_figures(data: FigureData) -> list[str]:
    """Draw every figure that has something to show as PNG and SVG into the run folder; remove the files of those
    that have not (left by an earlier report). Returns the names drawn."""
    for name in RETIRED:
        for fmt in FORMATS:
            (data.out / f"{name}.{fmt}").unlink(missing_ok=True)
    drawn = []
    for name, (draw, _) in FIGURES.items():
        fig = draw(data)
        for fmt in FORMATS:
            path = data.out / f"{name}.{fmt}"
            if fig is None:
                path.unlink(missing_ok=True)
            else:
                fig.tight_layout()
                atomic_write(path, lambda tmp, fig=fig, fmt=fmt: fig.savefig(tmp, format=fmt, dpi=110))
        if fig is not None:
            drawn.append(name)
    return drawn


def figure_blocks(run_dir: Path) -> list[document.Figure]:
    """The report's figure blocks for the figures in the run folder, except those their section places."""
    return [document.Figure(f"{name}.png", caption) for name, (_, caption) in FIGURES.items()
            if name not in PLACED and (Path(run_dir) / f"{name}.png").is_file()]
