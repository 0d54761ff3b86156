"""The report's scaling studies: a compact table and a figure per study (weak, strong), the efficiency threshold,
and the summary a reader looks for first ("what scale is worth asking for").

A compact table has 12 columns at most, so that it reads in Markdown; every other figure is in the detail tables
(`details.py`) and in scaling.csv / scaling.json.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ReportConfig
from pipeline.report.curves import Curve, Scaling
from pipeline.report.document import Block, Bullets, Figure, Heading, Paragraph, Table
from pipeline.report.flags import legend
from pipeline.report.table import backend_name, cell, format_value

TITLES = {"weak": "Weak scaling: the batch per rank is fixed", "strong": "Strong scaling: the global batch is fixed"}
EXPLAINED = {
    "weak": "Each rank trains on the same batch at every scale, so the global batch (and the samples per optimizer "
            "step) grows with the ranks, as data-parallel GPU training usually runs. Speedup: samples/s over the "
            "curve's fewest-rank configuration; efficiency: speedup / ratio of ranks.",
    "strong": "The global batch of the fewest-rank configuration is divided among the ranks, so the optimisation is "
              "the same at every scale and each rank does less work as the ranks grow; communication per step does "
              "not shrink, so strong scaling loses efficiency sooner than weak. Speedup and efficiency as for weak "
              "scaling, against the curve's fewest-rank configuration.",
}
COMPACT = [("name", "configuration"), ("world_size", "ranks"), ("device", "device"), ("batch", "batch"),
           ("samples_per_second", "samples/s"), ("speedup", "speedup"), ("efficiency", "efficiency"),
           ("step_ms", "step ms"), ("allreduce_share", "all-reduce"), ("test_accuracy", "test acc"),
           ("device_hours", "device-h"), ("flags", "flags")]
"""The compact table's 12 columns (key of a curve point, header)."""


def figure_name(study: Scaling) -> str:
    return f"speedup_{study}"


def compact_cell(point: dict, key: str) -> str:
    if key == "batch":
        return f"{point['batch_size_per_rank']}/rank, {point['global_batch_size']} global"
    if key == "allreduce_share":
        share = point.get("allreduce_share")
        return "n/a" if share is None else f"{share:.0%}"
    if key == "device_hours":
        return cell(point, key) + (" GPU-h" if point["device"] == "cuda" else " rank-h")
    if key == "flags":
        return point.get("flags") or ""
    return cell(point, key)


def compact_table(found: list[Curve]) -> Table:
    points = [p for curve in found for p in curve.points]
    return Table([header for _, header in COMPACT], [[compact_cell(p, key) for key, _ in COMPACT] for p in points])


def worth_asking_for(curve: Curve, report: ReportConfig) -> dict | None:
    """The largest measured scale of the curve whose efficiency is at or above `report.min_efficiency` (the
    baseline always is), None when even that is missing."""
    above = [p for p in curve.points if p["efficiency"] >= report.min_efficiency]
    return max(above, key=lambda p: p["world_size"]) if above else None


def threshold_lines(found: list[Curve], report: ReportConfig) -> list[str]:
    """Per curve, the scale worth asking for and the configurations under the threshold, with their intervals."""
    lines = []
    for curve in found:
        best = worth_asking_for(curve, report)
        below = [p for p in curve.points if p["efficiency"] < report.min_efficiency]
        text = f"{curve.label}: "
        if len(curve.points) == 1:
            text += f"one scale measured ({curve.baseline['name']}), no curve yet."
        else:
            if best is None or best is curve.baseline:
                text += f"no scale beyond {_scale(curve.baseline)} stays at or above the threshold"
            else:
                text += f"worth asking for up to {_scale(best)} ({best['name']}, efficiency {cell(best, 'efficiency')})"
            if below:
                text += "; under it: " + ", ".join(f"{p['name']} ({cell(p, 'efficiency')})" for p in below)
            text += "." + _straddles(curve, report)
        lines.append(text)
    return lines


def _straddles(curve: Curve, report: ReportConfig) -> str:
    """Points whose 95% interval reaches across the threshold: the verdict on them is not settled by the data."""
    unsure = [p["name"] for p in curve.points if p.get("efficiency_ci95") is not None
              and abs(p["efficiency"] - report.min_efficiency) < p["efficiency_ci95"]]
    return (f" The interval of {', '.join(unsure)} reaches across {report.min_efficiency:.0%}: more repeats would "
            "settle which side it is on.") if unsure else ""


def _scale(point: dict) -> str:
    unit = "GPU" if point["device"] == "cuda" else "CPU rank"
    n = point["world_size"]
    return f"{n} {unit}{'s' * (n != 1)}"


def study_section(study: Scaling, found: list[Curve], report: ReportConfig, out: Path) -> list[Block]:
    """One study: what it keeps fixed, its compact table with the flags' legend, the threshold verdict per curve and
    its speedup figure; nothing when the run has no curve of it."""
    if not found:
        return []
    blocks: list[Block] = [Heading(TITLES[study]), Paragraph(EXPLAINED[study]), compact_table(found),
                           Paragraph(legend(report) + " all-reduce: its share of the step (it overlaps backward); "
                                     "device-h: wall time x ranks (GPU-hours on GPUs, rank-hours on CPU ranks)."),
                           Paragraph(f"Efficiency threshold `report.min_efficiency` {report.min_efficiency:.0%}:"),
                           Bullets(threshold_lines(found, report))]
    if (Path(out) / f"{figure_name(study)}.png").is_file():
        others = sorted({c.backend for c in found} - {"ddp"})
        backends = "".join(f"; dotted with triangles: {backend_name(b)}, against its own baseline" for b in others)
        blocks.append(Figure(f"{figure_name(study)}.png",
                             f"{TITLES[study]}: speedup and efficiency against the ideal; dashed and hollow: the "
                             f"projection model{' (DDP curves only)' if others else ''}{backends}"))
    return blocks


def summary_blocks(found: list[Curve], report: ReportConfig, projections: list) -> list[Block]:
    """First in the report: per curve, the largest measured scale above the threshold, and how far the projection
    model says it stays above it."""
    lines = []
    for curve in found:
        best = worth_asking_for(curve, report)
        if len(curve.points) < 2 or best is None:
            continue
        if best is curve.baseline:
            line = f"{curve.label}: no measured scale beyond {_scale(best)} stays at or above the threshold"
        else:
            line = (f"{curve.label}: up to {_scale(best)} measured at {cell(best, 'efficiency')} efficiency "
                    f"({format_value(best['samples_per_second'])} samples/s)")
        model = next((p for p in projections if p.curve == curve.label), None)
        above = [m for m in (model.projected if model else []) if m.efficiency >= report.min_efficiency]
        if above:
            line += (f"; the projection model keeps it above {report.min_efficiency:.0%} up to "
                     f"{max(m.world_size for m in above)} ranks (a model, not a measurement)")
        lines.append(line + ".")
    if not lines:
        return []
    return [Heading("Worth asking for"),
            Paragraph(f"The largest scale of each curve whose parallel efficiency stays at or above "
                      f"{report.min_efficiency:.0%} (`report.min_efficiency`):"), Bullets(lines)]
