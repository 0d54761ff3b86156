"""Report sections beyond the configurations table: GPU vs CPU, batch size vs accuracy, the projection model,
preprocessing, and the notes that say why a configuration's numbers are what they are.

Each section is a list of document blocks and is empty when the run has nothing for it (one device only, one batch
size, no preprocessing summary). Means are written `mean ± half-width of the 95% CI` wherever the rows carry
`<key>_ci95` (configurations repeated with `train.repeats`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.layout import RunLayout
from pipeline.records import PreprocessRun, PreprocessSummary
from pipeline.report.document import Block, Bullets, Figure, Heading, Paragraph, Table
from pipeline.report.table import backend_of, backend_order, cell, several_backends

GPU_VS_CPU_FIGURE = "gpu_vs_cpu"
BATCH_ACCURACY_FIGURE = "batch_accuracy"
PREPROCESS_FIGURE = "preprocess_scaling"
SECTION_FIGURES = {GPU_VS_CPU_FIGURE, BATCH_ACCURACY_FIGURE, PREPROCESS_FIGURE}
"""Figures (plots.FIGURES names) shown inside their section rather than with the scaling figures."""

EXPLAIN_BELOW = 0.95
"""Efficiency under which a configuration's loss is explained from its step split."""

SPLIT = [("forward_backward_ms", "forward+backward"), ("data_ms", "data wait"), ("optimizer_ms", "optimizer")]
SCALING_BENCHMARK = "benchmarks/preprocess_scaling.py"
SPANS = {"ddp": "launch to completion", "horovod": "from the first gradient's launch to synchronize()"}
"""What each backend's all-reduce ms spans (`backends.SPLIT_MEANING` says more)."""


def _ranks(n: int, device: str) -> str:
    unit = "GPU" if device == "cuda" else "CPU rank"
    return f"{n} {unit}{'s' * (n != 1)}"


def _figure(run_dir: Path, name: str, caption: str) -> list[Block]:
    """The figure's block when plots.write_figures drew it (a section may have a table but no figure file yet)."""
    return [Figure(f"{name}.png", caption)] if (Path(run_dir) / f"{name}.png").is_file() else []


def _repeats_phrase(rows: list[dict]) -> str:
    repeats = sorted({r.get("repeats", 1) for r in rows})
    if repeats == [1]:
        return "One run per configuration, so no confidence intervals."
    return (f"Mean ± half-width of the 95% confidence interval over {'/'.join(map(str, repeats))} repeats per "
            "configuration.")


def gpu_vs_cpu_section(rows: list[dict], run_dir: Path) -> list[Block]:
    """Seed 000's Table 1 layout: a row per device (and configuration) with its step and epoch time; only when both
    devices were measured."""
    if not {"cpu", "cuda"} <= {r["device"] for r in rows}:
        return []
    ordered = sorted(rows, key=lambda r: (r["world_size"], r["batch_size_per_rank"], backend_order(backend_of(r)),
                                          r["device"]))
    named = several_backends(rows)
    table = Table(["device", "ranks", "batch/rank", *["backend"] * named, "step ms", "epoch s", "samples/s"],
                  [[r["device"], str(r["world_size"]), str(r["batch_size_per_rank"]), *[backend_of(r)] * named,
                    cell(r, "step_ms"), cell(r, "epoch_time_s"), cell(r, "samples_per_second")] for r in ordered])
    pairs = []
    for row in ordered:
        if row["device"] != "cuda":
            continue
        cpu = next((r for r in rows if r["device"] == "cpu" and r["world_size"] == row["world_size"]
                    and r["batch_size_per_rank"] == row["batch_size_per_rank"]
                    and backend_of(r) == backend_of(row)), None)
        if cpu:
            n = row["world_size"]
            pairs.append(f"{n} rank{'s' * (n != 1)}, batch {row['batch_size_per_rank']}/rank"
                         + (f", {backend_of(row)}" if named else "") + ": an epoch takes "
                         f"{row['epoch_time_s']:.2f} s on the GPU against {cpu['epoch_time_s']:.2f} s on the CPU "
                         f"({cpu['epoch_time_s'] / row['epoch_time_s']:.1f}x), a step {row['step_ms']:.1f} against "
                         f"{cpu['step_ms']:.1f} ms.")
    blocks: list[Block] = [Heading("GPU vs CPU"), Paragraph(
        "The same model and batch per rank on each device. " + _repeats_phrase(rows)), table]
    if pairs:
        blocks.append(Bullets(pairs))
    return blocks + _figure(run_dir, GPU_VS_CPU_FIGURE, "Step and epoch time on GPU and CPU")


def batch_accuracy_section(rows: list[dict], run_dir: Path) -> list[Block]:
    """Seed 000's Table 2 layout: batch size -> validation accuracy; only with two batch sizes or more."""
    if len({r["batch_size_per_rank"] for r in rows}) < 2:
        return []
    ordered = sorted(rows, key=lambda r: (r["device"], r["world_size"], backend_order(backend_of(r)),
                                          r["batch_size_per_rank"]))
    has_test = any(r.get("test_accuracy") is not None for r in rows)
    named = several_backends(rows)
    headers = (["batch/rank", "global batch", "device", "ranks", *["backend"] * named, "val acc"]
               + ["test acc"] * has_test)
    table_rows = []
    for r in ordered:
        cells = [str(r["batch_size_per_rank"]), str(r["global_batch_size"]), r["device"], str(r["world_size"]),
                 *[backend_of(r)] * named, cell(r, "final_val_accuracy")]
        if has_test:
            cells.append(cell(r, "test_accuracy"))
        table_rows.append(cells)
    return [Heading("Batch size vs accuracy"),
            Paragraph("Validation accuracy after the last epoch for each batch size per rank; the learning rate is "
                      "the same for all of them unless the config scales it. " + _repeats_phrase(rows)),
            Table(headers, table_rows),
            *_figure(run_dir, BATCH_ACCURACY_FIGURE, "Batch size vs validation accuracy")]


@dataclass(frozen=True)
class ScalingPoint:
    """Preprocessing throughput at one Dask worker count."""

    workers: int
    chunks_per_second: float
    low: float | None = None
    """Slowest of the repeats (None when the source records no spread)."""
    high: float | None = None
    repeats: int = 1


def preprocess_summary(run_dir: Path) -> PreprocessSummary | None:
    """features/summary.json of the run folder, None without one (training on features made elsewhere)."""
    path = RunLayout(run_dir).features.summary
    return PreprocessSummary.read(path) if path.is_file() else None


def preprocess_curve(run_dir: Path) -> list[ScalingPoint] | None:
    """The Dask scaling curve of RUN_DIR/preprocess_scaling.json, None without one."""
    benchmark = preprocess_benchmark(run_dir)
    return None if benchmark is None else curve_points(benchmark)


def curve_points(result: dict) -> list[ScalingPoint]:
    """The points of a result as benchmarks/preprocess_scaling.py writes it (`--out`): one row per worker count
    whose chunks_per_second is a spread (mean, min, max, n) or a plain number."""
    points = []
    for row in sorted(result["rows"], key=lambda r: r["workers"]):
        rate = row["chunks_per_second"]
        if isinstance(rate, dict):
            points.append(ScalingPoint(row["workers"], rate["mean"], rate.get("min"), rate.get("max"),
                                       rate.get("n", 1)))
        else:
            points.append(ScalingPoint(row["workers"], float(rate)))
    return points


def preprocess_benchmark(run_dir: Path) -> dict | None:
    path = RunLayout(run_dir).preprocess_scaling
    return json.loads(path.read_text()) if path.is_file() else None


def worked_runs(summary: PreprocessSummary) -> list[PreprocessRun]:
    """The preprocessing runs of a features folder that did tasks (a rerun that found every shard complete did
    none, and its time is no throughput)."""
    return [r for r in summary.runs if r.tasks]


def run_rate(run: PreprocessRun) -> float:
    """Chunks/s of one preprocessing run of `worked_runs`."""
    return run.chunks / max(run.seconds, 1e-9)


def work_done(summary: PreprocessSummary | dict) -> str:
    """Which runs did the work, how fast each was, and what is not accounted for.

    Also takes the summary as a dict (summary.json's content), read through the record, which refuses one it does
    not know.
    """
    if isinstance(summary, dict):
        summary = PreprocessSummary.from_dict(summary, "preprocessing summary")
    runs, worked = summary.runs, worked_runs(summary)
    parts = [f"run {k} of {len(runs)}: {r.tasks} tasks, {r.chunks} chunks in {r.seconds:.1f} s "
             f"({run_rate(r):.1f} chunks/s, {r.workers} Dask workers)"
             for k, r in enumerate(runs, start=1) if r.tasks]
    text = ("Preprocessing throughput, per run that did tasks: " + "; ".join(parts) + "."
            if worked else "No preprocessing run of this folder has a record of the tasks it did, so no throughput "
            "is given.")
    idle = len(runs) - len(worked)
    if idle:
        text += f" {idle} later run(s) found every shard complete and did no work (their time is not a throughput)."
    if summary.tasks_without_record:
        text += (f" {summary.tasks_without_record} tasks were done by runs that stopped before writing a summary; "
                 "their time is not counted.")
    return text


def preprocess_section(run_dir: Path) -> list[Block]:
    """What preprocessing did and how fast (features/summary.json), and how it scales with Dask workers: the
    benchmark's curve when the run folder holds one, else how to measure it."""
    summary = preprocess_summary(run_dir)
    if summary is None:
        return []
    blocks: list[Block] = [Heading("Preprocessing"), Paragraph(_preprocess_text(summary))]
    benchmark = preprocess_benchmark(run_dir)
    curve = curve_points(benchmark) if benchmark else None
    if benchmark and curve:
        blocks += _scaling_blocks(benchmark, curve)
        caption = "Preprocessing throughput against Dask workers; dashed: linear scaling"
    else:
        caption = (f"Preprocessing throughput: the one measured point. For the curve over worker counts run "
                   f"`.venv/bin/python {SCALING_BENCHMARK} --workers 1 2 4 8 "
                   f"--out {RunLayout(run_dir).preprocess_scaling}` and report again.")
    return blocks + _figure(run_dir, PREPROCESS_FIGURE, caption)


def _preprocess_text(summary: PreprocessSummary) -> str:
    """Files in, chunks out per split, rejects, the runs that did the work, and where the tasks ran."""
    split = summary.chunks_per_split
    text = (f"{summary.files} source files -> {summary.chunks} chunks (train/val/test {split.get('train', '?')}/"
            f"{split.get('val', '?')}/{split.get('test', '?')}) in {summary.tasks} tasks; {summary.rejected_files} "
            f"files rejected (listed in features/rejects.csv). {work_done(summary)}")
    nodes = summary.tasks_per_node
    if len(nodes) > 1:
        text += " Tasks per node: " + ", ".join(f"{node} {count}" for node, count in nodes.items()) + "."
    elif nodes:
        text += f" All tasks ran on {next(iter(nodes))}."
    return text + _storage_text(summary)


def _storage_text(summary: PreprocessSummary) -> str:
    """What a cluster file system holds: files per 1,000 chunks and shard sizes (nothing for older summaries)."""
    if summary.files_written is None or summary.feature_shard_bytes is None:
        return ""
    images = summary.image_shard_bytes
    tars = f", image tars {_megabytes(images)}" if images else ""
    return (f" On disk: {summary.files_written} files ({summary.files_per_1000_chunks} per 1,000 chunks, images as "
            f"{summary.image_layout}); feature shards {_megabytes(summary.feature_shard_bytes)}{tars}.")


def _megabytes(sizes: dict[str, int]) -> str:
    return f"{sizes['mean'] / 1e6:.2f} MB mean / {sizes['max'] / 1e6:.2f} MB max"


def _scaling_blocks(benchmark: dict, curve: list[ScalingPoint]) -> list[Block]:
    """The benchmark's Dask scaling curve as a table, with what it measured."""
    params = benchmark.get("parameters", {})
    base = curve[0]
    return [Paragraph(
        f"Scaling with Dask workers, measured by {SCALING_BENCHMARK} ({benchmark.get('measured_at', '?')}, "
        f"{params.get('files', '?')} files, {params.get('chunks', '?')} chunks, its own preprocessing settings; "
        "cluster start-up excluded). Efficiency = chunks/s / (workers ratio x chunks/s at the fewest workers)."),
        Table(["workers", "chunks/s", "min-max", "repeats", "efficiency"], [
            [str(p.workers), f"{p.chunks_per_second:.1f}",
             f"{p.low:.1f}-{p.high:.1f}" if p.low is not None and p.high is not None else "",
             str(p.repeats), f"{p.chunks_per_second / (base.chunks_per_second * p.workers / base.workers):.0%}"]
            for p in curve])]


def _ranks_per_node(row: dict) -> int:
    return math.ceil(row["world_size"] / row.get("nodes", 1))


def shares_gpu(row: dict) -> bool:
    """More ranks on a node than GPUs visible to them (`gpu_count`, recorded on cuda since it was added)."""
    gpus = row.get("gpu_count")
    if row["device"] != "cuda" or not gpus:
        return False
    return _ranks_per_node(row) > gpus


def gpu_sharing_notes(rows: list[dict]) -> list[str]:
    """One note per cuda configuration whose ranks had to share GPUs."""
    notes = []
    for row in rows:
        if shares_gpu(row):
            notes.append(f"{row['name']} shares GPUs: {_ranks_per_node(row)} ranks per node on {row['gpu_count']} "
                         "visible GPU(s), so ranks take turns on a GPU; its speedup is bounded by the GPUs, not by "
                         "the method.")
    return notes


def mixed_device_notes(rows: list[dict]) -> list[str]:
    """When one report holds configurations on different devices (e.g. `train.device: auto` on a machine with
    fewer GPUs than the largest world size): which device each got and why (`device_reason`, as recorded), and
    that each device is its own speedup baseline."""
    devices: dict[str, list[dict]] = {}
    for row in rows:
        devices.setdefault(row["device"], []).append(row)
    if len(devices) < 2:
        return []
    parts = []
    for device, group in devices.items():
        reasons = list(dict.fromkeys(r["device_reason"] for r in group if r.get("device_reason")))
        parts.append(f"{', '.join(r['name'] for r in group)} on {device}"
                     + (f" ({'; '.join(reasons)})" if reasons else ""))
    return [f"These configurations did not all run on the same device: {'; '.join(parts)}. Each device is its own "
            "speedup baseline: speedup and efficiency compare configurations on the same device only, so a curve "
            "that changes device part-way is two curves, and a CPU rank is not a GPU."]


def explain_efficiency(points: list[dict]) -> list[str]:
    """For each curve point under 95% efficiency, where the loss goes: the all-reduce's share of the step, which
    phase of the step grew against the curve's baseline, and what is lost outside the steps. Each note names its
    curve (a configuration can be on a weak and a strong one); a strong-scaling step is expected to shrink with the
    ranks, so there only what the step times predict is compared."""
    notes = []
    for row in points:
        base = next(r for r in points if r["name"] == row["baseline"])
        if row["world_size"] <= base["world_size"] or row["efficiency"] >= EXPLAIN_BELOW:
            continue
        ci = row.get("efficiency_ci95")
        strong = row.get("scaling") == "strong"
        text = (f"{row['name']} ({row['curve']}) reaches {row['efficiency']:.0%}"
                + (f" ± {ci:.0%}" if ci is not None else "")
                + f" efficiency. The all-reduce is {row['allreduce_ms'] / row['step_ms']:.0%} of the step at "
                f"{_ranks(row['world_size'], row['device'])} ({row['allreduce_ms']:.1f} of {row['step_ms']:.1f} ms, "
                f"{SPANS.get(backend_of(row), SPANS['ddp'])}; it overlaps backward, so not all of it is lost).")
        growth = {label: row[key] - base[key] for key, label in SPLIT}
        if not strong and row["step_ms"] > base["step_ms"]:
            phase = max(growth, key=growth.get)
            text += (f" The step grew from {base['step_ms']:.1f} ms at {_ranks(base['world_size'], base['device'])} "
                     f"to {row['step_ms']:.1f} ms, mostly in {phase} (+{growth[phase]:.1f} ms).")
        # samples/s = global batch / step, so the steps alone predict this efficiency
        ratio = row["world_size"] / base["world_size"]
        from_steps = row["global_batch_size"] / base["global_batch_size"] * base["step_ms"] / row["step_ms"] / ratio
        if row["efficiency"] < from_steps - 0.05:
            text += (f" The step times alone would give {from_steps:.0%}; the rest is lost outside the timed steps "
                     "(between steps and at the start and end of each epoch).")
        notes.append(text)
    return notes
