"""The scaling report of one run: configs/*/metrics.json -> report.md, report.html, scaling.csv/json and figures."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ReportConfig
from pipeline.io import atomic_write_text
from pipeline.layout import RunLayout
from pipeline.report import plots, sections
from pipeline.report.aggregate import aggregate, one_per_configuration
from pipeline.report.document import Block, Bullets, Figure, Heading, Paragraph, Table, to_html, to_markdown
from pipeline.report.projection import report_config
from pipeline.report.table import COLUMNS, add_derived, add_derived_repeats, cell, collect, write_scaling
from pipeline.slurm.jobs import unfinished_configurations

METHOD = [
    "samples/s: training samples of all ranks per second of epoch wall time, averaged over every epoch after the "
    "first (the first pays one-off warm-up costs). The batch per rank is fixed, so the global batch grows with the "
    "ranks (weak scaling of the batch, as in data-parallel GPU training).",
    "speedup: samples/s over that of the configuration with the fewest ranks on the same device and batch; "
    "efficiency: speedup divided by the ratio of ranks. Each device is its own baseline: a GPU configuration is "
    "never divided by a CPU one.",
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
    "Column meanings are also in scaling.json; scaling.csv has one row per configuration, scaling_repeats.csv one "
    "row per repeat.",
]


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    runs, skipped = collect(run_dir)
    failed = unfinished_configurations(run_dir)
    if not runs:
        names = "; ".join(f"{f['name']}: {f['reason']}" for f in failed)
        raise FileNotFoundError(f"{run_dir}: no configs/*/metrics.json to report on; run `pipeline train` first"
                                + (f". Submitted configurations without results: {names}" if failed else ""))
    rows = aggregate(runs)
    skipped = one_per_configuration(skipped)
    add_derived(rows)
    add_derived_repeats(runs, rows)
    write_scaling(run_dir, rows, runs)
    report = report_config(run_dir)
    plots.write_figures(plots.FigureData(rows, report, run_dir))
    blocks = build(run_dir, rows, skipped, failed, report, provenance_notes(runs))
    layout = RunLayout(run_dir)
    atomic_write_text(layout.report, to_markdown(blocks))
    atomic_write_text(layout.report_html, to_html(blocks, run_dir, f"Scaling report: {run_dir.name}"))
    return layout.report


def build(run_dir: Path, rows: list[dict], skipped: list[dict], failed: list[dict],
          report: ReportConfig, provenance: list[str] | None = None) -> list[Block]:
    first = rows[0]
    gpu = next((r["gpu_model"] for r in rows if r["device"] == "cuda" and r.get("gpu_model")), None)
    hardware = (f"Measured {first['measured_at']} on `{first['hostname']}`: {first['cpu_model']}, "
                f"{first['cpu_cores_available']} CPU cores available"
                + (f", GPU {gpu}" if gpu else "") + ". Versions: "
                + ", ".join(f"{k} {v}" for k, v in first["versions"].items())
                + f". Launcher: {first['launcher']}. " + _code_sentence(first) + _repeats_sentence(rows))
    blocks: list[Block] = [Heading(f"Scaling report: {run_dir.name}", 1), Paragraph(hardware)]
    if failed:
        blocks += [Heading("Configurations without results"),
                   Bullets([f"{f['name']}: {f['reason']}" for f in failed])]
    shown = [(key, header) for key, header, _ in COLUMNS if not key.endswith("_ci95")]  # `cell` shows them as ±
    blocks += [Heading("Configurations"),
               Table([header for _, header in shown], [[cell(row, key) for key, _ in shown] for row in rows])]
    blocks += plots.figure_blocks(run_dir)
    blocks += sections.gpu_vs_cpu_section(rows, run_dir) + sections.batch_accuracy_section(rows, run_dir)
    blocks += sections.projection_section(rows, report)
    blocks += [Heading("Test confusion matrices"), *_confusion_figures(run_dir, rows)]
    blocks += [Heading("How this was measured"), Bullets(METHOD)]
    blocks += [Heading("Read this before quoting the numbers"),
               Bullets((provenance or []) + sections.mixed_device_notes(rows) + honesty_notes(rows, skipped)
                       + sections.gpu_sharing_notes(rows))]
    blocks += sections.preprocess_section(run_dir)
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


BUSY_MARGIN = 0.75
"""Load average above a configuration's own threads that counts as a busy machine."""


def honesty_notes(rows: list[dict], skipped: list[dict]) -> list[str]:
    notes = []
    cpu = [r for r in rows if r["device"] == "cpu"]
    if cpu:
        notes.append(
            f"The ranks here are CPU processes, not GPUs: {cpu[0]['cpu_cores_available']} cores in all, "
            f"{cpu[0]['threads_per_rank']} thread(s) per rank. The ranks share the memory bandwidth and caches "
            "of one socket and all-reduce through shared memory with gloo, so this curve shows the overhead of the "
            "DDP machinery on this host, not what GPUs with their own memory would reach.")
    for row in rows:
        if row.get("oversubscribed"):
            notes.append(f"{row['name']} oversubscribes the CPU: {row['world_size']} ranks x "
                         f"{row['threads_per_rank']} threads on {row['cpu_cores_available']} cores; its speedup "
                         "is bounded by the cores, not by the method.")
    notes += sections.explain_efficiency(rows)
    for row in rows:
        own = row["world_size"] * row["threads_per_rank"]
        load = row.get("load_average_1m")
        if row["device"] == "cpu" and load is not None and load > own + BUSY_MARGIN:
            notes.append(f"{row['name']} shared the machine: the load average was {load:.1f} at the end of its "
                         f"training, against {own} thread(s) of its own, so its throughput is lower than on a "
                         "quiet machine.")
    for skip in skipped:
        notes.append(f"{skip['name']} was not run: {skip['reason']}.")
    return notes


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
