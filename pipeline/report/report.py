"""The scaling report of one run: configs/*/metrics.json -> report.md, report.html, scaling.csv/json and figures."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.io import atomic_write, atomic_write_text
from pipeline.report import plots
from pipeline.report.document import Block, Bullets, Figure, Heading, Paragraph, Table, to_html, to_markdown
from pipeline.report.table import COLUMNS, add_derived, baseline_of, collect, write_scaling
from pipeline.slurm.jobs import unfinished_configurations

METHOD = [
    "samples/s: training samples of all ranks per second of epoch wall time, averaged over every epoch after the "
    "first (the first pays one-off warm-up costs). The batch per rank is fixed, so the global batch grows with the "
    "ranks (weak scaling of the batch, as in data-parallel GPU training).",
    "speedup: samples/s over that of the configuration with the fewest ranks on the same device and batch; "
    "efficiency: speedup divided by the ratio of ranks.",
    "step ms: mean wall time of one training step on rank 0 over the same epochs, split into data ms (waiting for "
    "the batch), fwd+bwd ms (forward and backward, including the wait for the last gradient all-reduce) and "
    "optimizer ms. all-reduce ms: time from launching each gradient bucket's all-reduce to its completion, summed "
    "over buckets; it runs while backward computes, so only part of it adds to the step. Raw per-step timings: "
    "configs/<name>/steps.csv.",
    "peak MB: peak resident memory of a rank's process on CPU (peak allocated tensor memory on a GPU), the largest "
    "over the ranks.",
    "val/test acc: accuracy on chunks of held-out source files. wall s: the whole training job; device-hours: wall "
    "time x ranks.",
    "Column meanings are also in scaling.json; scaling.csv has one row per configuration.",
]


def write_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    rows, skipped = collect(run_dir)
    failed = unfinished_configurations(run_dir)
    if not rows:
        names = "; ".join(f"{f['name']}: {f['reason']}" for f in failed)
        raise FileNotFoundError(f"{run_dir}: no configs/*/metrics.json to report on; run `pipeline train` first"
                                + (f". Submitted configurations without results: {names}" if failed else ""))
    add_derived(rows)
    write_scaling(run_dir, rows)
    for name, (draw, _) in plots.FIGURES.items():
        for fmt in ("png", "svg"):
            atomic_write(run_dir / f"{name}.{fmt}", lambda tmp, draw=draw, fmt=fmt: draw(rows, tmp, fmt))
    blocks = build(run_dir, rows, skipped, failed)
    atomic_write_text(run_dir / "report.md", to_markdown(blocks))
    atomic_write_text(run_dir / "report.html", to_html(blocks, run_dir, f"Scaling report: {run_dir.name}"))
    return run_dir / "report.md"


def build(run_dir: Path, rows: list[dict], skipped: list[dict], failed: list[dict] | None = None) -> list[Block]:
    first = rows[0]
    hardware = (f"Measured {first['measured_at']} on `{first['hostname']}`: {first['cpu_model']}, "
                f"{first['cpu_cores_available']} CPU cores available"
                + (f", GPU {first['gpu_model']}" if "gpu_model" in first else "") + ". Versions: "
                + ", ".join(f"{k} {v}" for k, v in first["versions"].items())
                + f". Launcher: {first['launcher']}. Each figure is one training run per configuration (no repeats "
                "yet), so differences of a few percent are within the noise of a shared machine.")
    blocks: list[Block] = [Heading(f"Scaling report: {run_dir.name}", 1), Paragraph(hardware)]
    if failed:
        blocks += [Heading("Configurations without results"),
                   Bullets([f"{f['name']}: {f['reason']}" for f in failed])]
    blocks += [Heading("Configurations"),
                           Table([header for _, header, _ in COLUMNS],
                                 [[_cell(row.get(key)) for key, _, _ in COLUMNS] for row in rows])]
    blocks += [Figure(f"{name}.png", caption) for name, (_, caption) in plots.FIGURES.items()]
    blocks += [Heading("Test confusion matrices")]
    blocks += [Figure(f"configs/{row['name']}/confusion_test.png", f"{row['name']}: rows are the true class")
               for row in rows if (run_dir / "configs" / row["name"] / "confusion_test.png").exists()]
    blocks += [Heading("How this was measured"), Bullets(METHOD)]
    blocks += [Heading("Read this before quoting the numbers"), Bullets(honesty_notes(rows, skipped))]
    blocks += _preprocess_section(run_dir)
    return blocks


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
    for row in rows:
        if row["world_size"] > 1 and row["efficiency"] < 0.95:
            base = baseline_of(rows, row)
            parts = ", ".join(f"{label} {row[key]:.1f} vs {base[key]:.1f} ms" for key, label in
                              [("forward_backward_ms", "forward+backward"), ("data_ms", "data wait"),
                               ("optimizer_ms", "optimizer")])
            notes.append(
                f"{row['name']} reaches {row['efficiency']:.0%} efficiency. Its step takes {row['step_ms']:.1f} ms "
                f"against {base['step_ms']:.1f} ms for {base['name']}: {parts}. The gradient all-reduce takes "
                f"{row['allreduce_ms']:.1f} ms ({row['allreduce_ms'] / row['step_ms']:.0%} of the step, partly "
                "hidden behind backward).")
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


def _preprocess_section(run_dir: Path) -> list[Block]:
    path = run_dir / "features" / "summary.json"
    if not path.exists():
        return []
    s = json.loads(path.read_text())
    split = s["chunks_per_split"]
    return [Heading("Preprocessing"), Paragraph(
        f"{s['files']} source files -> {s['chunks']} chunks (train/val/test {split['train']}/{split['val']}/"
        f"{split['test']}, split by source file) in {s['seconds']:.1f} s ({s['chunks_per_second']:.1f} chunks/s, "
        f"{s.get('workers', '?')} Dask workers); {s['rejected_files']} files rejected (listed in "
        "features/rejects.csv).")]


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
