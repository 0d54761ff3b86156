"""The scaling report of one run: configs/*/metrics.json -> report.md, report.html, scaling.csv/json and figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import ReportConfig
from pipeline.io import atomic_write_text
from pipeline.layout import RunLayout
from pipeline.report import details, plots, sections, studies
from pipeline.report.aggregate import aggregate, one_per_configuration
from pipeline.report.backends import backends_section
from pipeline.report.curves import STUDIES, Curve, curves, repeat_points, scaling_of
from pipeline.report.document import Block, Bullets, Figure, Heading, Paragraph, to_html, to_markdown
from pipeline.report.flags import busy, flags_of, input_bound, slower_than_synthetic
from pipeline.report.interconnect import load_link
from pipeline.report.plan import plan_section
from pipeline.report.projection import Projection, project, report_config
from pipeline.report.projection_section import projection_blocks
from pipeline.report.table import add_units, backend_name, backend_of, backend_order, collect, write_scaling
from pipeline.slurm.jobs import unfinished_configurations

METHOD = [
    "samples/s: training samples of all ranks per second of epoch wall time, averaged over every epoch after the "
    "first (the first pays one-off warm-up costs). Weak scaling keeps the batch per rank, so the global batch grows "
    "with the ranks; strong scaling keeps the global batch of the fewest-rank configuration and divides it "
    "(train.scaling). Every table, figure and note names the study a curve belongs to.",
    "speedup: samples/s over that of the curve's configuration with the fewest ranks (same device, and the same "
    "batch per rank for weak or global batch for strong scaling); efficiency: speedup divided by the ratio of ranks. "
    "Each device is its own baseline: a GPU configuration is never divided by a CPU one.",
    "step ms: mean wall time of one training step on rank 0 over the same epochs, split into data ms (waiting for "
    "the batch), fwd+bwd ms (forward and backward, including the wait for the last gradient all-reduce) and "
    "optimizer ms. all-reduce ms: time from launching each gradient bucket's all-reduce to its completion, summed "
    "over buckets; it runs while backward computes, so only part of it adds to the step. Raw per-step timings: "
    "configs/<name>/steps.csv.",
    "peak MB: peak resident memory of a rank's process on CPU; on a GPU the peak memory the CUDA caching allocator "
    "reserved (torch.cuda.max_memory_reserved: the tensors and the allocator's cache, which is what the process "
    "holds, less the CUDA context of a few hundred MB); the largest over the ranks. The two are not comparable "
    "across devices.",
    "val/test acc: accuracy on chunks of held-out source files. wall s: the whole training job; device-hours: wall "
    "time x ranks.",
    "repeats: each configuration is trained train.repeats times, repeat k with seed seed + k - 1 in its own folder "
    "configs/<name>-r<k>, so the spread covers the machine's noise and the model's initialisation and data order. "
    "Each figure is the mean over the repeats; ± is the half-width of the two-sided 95% Student-t confidence "
    "interval of that mean, t(0.975, n-1) x sample std / sqrt(n), which is wide for few repeats. The intervals of "
    "speedup and efficiency combine the relative intervals of the two means to first order; a baseline's own "
    "speedup, and any figure of a single run, has none.",
    "Column meanings are also in scaling.json; scaling.csv has one row per configuration and curve it is on, "
    "scaling_repeats.csv one row per repeat and curve.",
]


@dataclass
class ReportInput:
    """Everything a scaling report is made from, so that one run folder's report and a report combining several
    (`combine.py`) are rendered by the same code."""

    out: Path
    """Folder the report, its tables and figures are written into."""
    runs: list[dict]
    """One row per training run (`table.collect`); repeats are folded by `aggregate`."""
    report: ReportConfig
    scaling: str = "weak"
    """train.scaling: which studies (`curves.STUDIES`) the report shows."""
    skipped: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Said first under "Read this before quoting the numbers" (e.g. which run each configuration came from)."""
    run_dir: Path | None = None
    """The run folder whose confusion matrices and preprocessing the report shows; None for a combined report."""
    allreduce_dir: Path | None = None
    """Folder whose allreduce.json (`pipeline bench --allreduce`) feeds the projection; None: the assumed link."""
    title: str = ""


def write_report(run_dir: Path) -> Path:
    """The report of one run folder, written into it; returns report.md."""
    run_dir = Path(run_dir)
    runs, skipped = collect(run_dir)
    failed = unfinished_configurations(run_dir)
    if not runs:
        names = "; ".join(f"{f['name']}: {f['reason']}" for f in failed)
        raise FileNotFoundError(f"{run_dir}: no configs/*/metrics.json to report on; run `pipeline train` first"
                                + (f". Submitted configurations without results: {names}" if failed else ""))
    return render(ReportInput(run_dir, runs, report_config(run_dir), scaling_of(run_dir),
                              one_per_configuration(skipped), failed, provenance_notes(runs), run_dir, run_dir,
                              f"Scaling report: {run_dir.name}"))


def render(given: ReportInput) -> Path:
    """Fold the repeats, build the curves and projections, write the tables, figures, report.md and report.html."""
    rows = aggregate(given.runs)
    for row in rows + given.runs:
        add_units(row)
    found = curves(rows, STUDIES[given.scaling])
    projections, missing = projections_for(found, given)
    points = [p for curve in found for p in curve.points]
    for point in points:
        point["flags"] = ", ".join(flags_of(point, given.report))
    write_scaling(given.out, points, repeat_points(given.runs, found))
    plots.write_figures(plots.FigureData(rows, found, projections, given.report, given.out, given.run_dir))
    blocks = build(given, rows, found, projections, missing)
    atomic_write_text(given.out / "report.md", to_markdown(blocks))
    atomic_write_text(given.out / "report.html", to_html(blocks, given.out, given.title or "Scaling report"))
    return given.out / "report.md"


def projections_for(found: list[Curve], given: ReportInput) -> tuple[list[Projection], list[str]]:
    """The projection of every curve, each device with its own link: measured by `pipeline bench --allreduce` on
    that device when the run has allreduce.json, else the assumed `report.interconnect_gbit_s`."""
    projections, missing = [], []
    for device in sorted({c.device for c in found}):
        link = load_link(given.allreduce_dir, given.report, device)
        made, lacking = project([c for c in found if c.device == device], given.report, link)
        projections += made
        missing += lacking
    return projections, missing


def build(given: ReportInput, rows: list[dict], found: list[Curve], projections: list[Projection],
          missing: list[str]) -> list[Block]:
    first = rows[0]
    gpu = next((r["gpu_model"] for r in rows if r["device"] == "cuda" and r.get("gpu_model")), None)
    hardware = (f"Measured {first['measured_at']} on `{first['hostname']}`: {first['cpu_model']}, "
                f"{first['cpu_cores_available']} CPU cores available"
                + (f", GPU {gpu}" if gpu else "") + ". Versions: "
                + ", ".join(f"{k} {v}" for k, v in first["versions"].items())
                + f". Launcher: {first['launcher']}. " + _code_sentence(first) + _repeats_sentence(rows))
    blocks: list[Block] = [Heading(given.title or "Scaling report", 1), Paragraph(hardware)]
    if given.failed:
        blocks += [Heading("Configurations without results"),
                   Bullets([f"{f['name']}: {f['reason']}" for f in given.failed])]
    blocks += studies.summary_blocks(found, given.report, projections)
    for study in STUDIES[given.scaling]:
        blocks += studies.study_section(study, [c for c in found if c.scaling == study], given.report,
                                        given.out)
    blocks += plots.figure_blocks(given.out)
    blocks += backends_section(rows, found)
    blocks += details.detail_sections(rows)
    blocks += sections.gpu_vs_cpu_section(rows, given.out) + sections.batch_accuracy_section(rows, given.out)
    blocks += projection_blocks(projections, missing)
    blocks += plan_section(found, projections, given.report)
    if given.run_dir is not None:
        blocks += [Heading("Test confusion matrices"), *_confusion_figures(given.run_dir, rows)]
    blocks += [Heading("How this was measured"), Bullets(METHOD)]
    blocks += [Heading("Read this before quoting the numbers"),
               Bullets(given.notes + sections.mixed_device_notes(rows) + honesty_notes(rows, found, given.skipped)
                       + sections.gpu_sharing_notes(rows))]
    if given.run_dir is not None:
        blocks += sections.preprocess_section(given.run_dir)
    return blocks


def _confusion_figures(run_dir: Path, rows: list[dict]) -> list[Block]:
    """The test confusion matrix of each configuration's first repeat (of the run itself when not repeated)."""
    layout = RunLayout(run_dir)
    figures: list[Block] = []
    for row in rows:
        name = row.get("repeat_names", [row["name"]])[0]
        png = layout.training(name).confusion_test.with_suffix(".png")
        if png.exists():
            figures.append(Figure(png.relative_to(layout.root).as_posix(), f"{name}: rows are the true class"))
    return figures


PROVENANCE = {"hostname": "machine", "cpu_model": "CPU", "gpu_model": "GPU", "versions": "library versions",
              "code": "code version"}
"""Facts that every configuration of one report should share; where they differ the report says so."""


def _code_sentence(row: dict) -> str:
    code = row.get("code")
    if not code:
        return "Code version: not recorded (trained by an older version of the pipeline). "
    commit = f", commit {code['commit']}" if code.get("commit") else ""
    return f"Code: audio-ddp-pipeline {code['package']}, source digest {code['source_sha256']}{commit}. "


def provenance_notes(runs: list[dict]) -> list[str]:
    """One note per fact that differs between the runs of this report, naming which runs have which value: a table
    that mixes machines or code versions must say so next to its numbers."""
    notes = []
    for key, what in PROVENANCE.items():
        values: dict[str, list[str]] = {}
        for run in runs:
            values.setdefault(repr(run.get(key)), []).append(run["name"])
        if len(values) > 1:
            parts = "; ".join(f"{', '.join(names)}: {value}" for value, names in values.items())
            notes.append(f"These configurations were not all measured with the same {what}: {parts}.")
    return notes


def honesty_notes(rows: list[dict], found: list[Curve], skipped: list[dict]) -> list[str]:
    """What the hardware and the machine's state make of the figures, one note each."""
    notes = []
    cpu = [r for r in rows if r["device"] == "cpu"]
    if cpu:
        notes.append(
            f"The ranks here are CPU processes, not GPUs: {cpu[0]['cpu_cores_available']} cores in all, "
            f"{cpu[0]['threads_per_rank']} thread(s) per rank. The ranks share the memory bandwidth and caches "
            "of one socket and all-reduce through shared memory with gloo, so this curve shows the overhead of the "
            f"{_machinery(rows)} machinery on this host, not what GPUs with their own memory would reach.")
    for row in rows:
        if row.get("oversubscribed"):
            notes.append(f"{row['name']} oversubscribes the CPU: {row['world_size']} ranks x "
                         f"{row['threads_per_rank']} threads on {row['cpu_cores_available']} cores; its speedup "
                         "is bounded by the cores, not by the method.")
    points = [p for curve in found for p in curve.points]
    notes += sections.explain_efficiency(points) + [_above_ideal(p) for p in points if p["efficiency"] > 1.02]
    for row in rows:
        if busy(row):
            notes.append(f"{row['name']} shared the machine: the load average was {row['load_average_1m']:.1f} at "
                         f"the end of its training, against {row['world_size'] * row['threads_per_rank']} "
                         "thread(s) of its own, so its throughput is lower than on a quiet machine.")
        notes += _input_note(row)
    for skip in skipped:
        notes.append(f"{skip['name']} was not run: {skip['reason']}.")
    return notes


def _machinery(rows: list[dict]) -> str:
    """The backends of the rows in prose: `DDP`, or `DDP and Horovod`."""
    return " and ".join(backend_name(b) for b in sorted({backend_of(r) for r in rows}, key=backend_order))


def _above_ideal(point: dict) -> str:
    """An efficiency above 1: noise when its interval reaches 1, else a baseline slower per sample than the ranks."""
    ci = point.get("efficiency_ci95")
    text = f"{point['name']} ({point['curve']}) shows {point['efficiency']:.0%}" + (f" ± {ci:.0%}" if ci else "")
    if ci is not None and point["efficiency"] - ci <= 1:
        return text + " efficiency: above 100% but within its 95% interval of it, so noise, not superlinear scaling."
    noise = "beyond its noise" if ci is not None else "from single runs (train.repeats would tell noise from it)"
    return (text + f" efficiency, above 100% {noise}: each rank's steps ran faster per sample than those of "
            f"{point['baseline']} (more cache per rank, or a machine that was slower while the baseline ran); "
            "compare their step ms and measured-at times in the detail tables.")


def _input_note(row: dict) -> list[str]:
    """Input- or compute-bound, from the synthetic-data phase (`train.synthetic_steps`) and the measured data wait."""
    if not slower_than_synthetic(row):
        return []
    steps = (f"its training steps reach {row['step_samples_per_second']:.1f} samples/s with real data against "
             f"{row['synthetic_samples_per_second']:.1f} on data made on the device ({row['real_over_synthetic']:.0%})"
             f", and {row['data_share']:.0%} of a step waits for the batch")
    if input_bound(row):
        return [f"{row['name']} is input-bound: {steps}. The loader, not the model or the all-reduce, limits it "
                "(more train.loader_workers, or faster storage)."]
    return [f"{row['name']}: {steps}, so the gap is not the loader's wait: fresh batches cost memory traffic and cache "
            "misses that one synthetic batch reused every step does not."]


def _repeats_sentence(rows: list[dict]) -> str:
    """How many runs each figure is the mean of, and what ± means."""
    counts = sorted({row.get("repeats", 1) for row in rows})
    if counts == [1]:
        return ("Each figure is one training run per configuration (train.repeats 1, no confidence intervals), so "
                "differences of a few percent are within the noise of a shared machine.")
    many = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]} (column repeats)"
    return (f"Each figure is the mean of {many} training runs per configuration (train.repeats, each with its own "
            "seed); ± is the half-width of the 95% confidence interval of that mean (Student t), and a figure "
            "without ± comes from a single run.")
