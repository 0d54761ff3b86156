"""One row per configuration: the measured metrics plus what is derived from them (speedup, efficiency, cost)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.io import atomic_write_csv, atomic_write_json
from pipeline.train.timing import PHASES

# (key, short header, meaning): the columns of scaling.csv / scaling.json and of the report's table.
COLUMNS = [
    ("name", "configuration", "ws<ranks>-<device>-bs<batch per rank>"),
    ("model", "model", "classifier architecture"),
    ("input", "input", "features (shards) or images (PNG)"),
    ("init", "init", "pretrained from a local file, or from scratch"),
    ("nodes", "nodes", "machines the ranks ran on"),
    ("world_size", "ranks", "DDP ranks: GPUs, or CPU processes"),
    ("device", "device", "cpu or cuda"),
    ("precision", "precision", "arithmetic precision of training"),
    ("batch_size_per_rank", "batch/rank", "samples per step on each rank"),
    ("global_batch_size", "global batch", "samples per optimizer step over all ranks and accumulated micro-batches"),
    ("threads_per_rank", "threads/rank", "CPU threads each rank may use"),
    ("cpu_cores_available", "cores", "CPU cores the job could run on"),
    ("oversubscribed", "oversubscribed", "ranks x threads exceed the cores"),
    ("samples_per_second", "samples/s", "training samples per second, all ranks, epochs after the first"),
    ("step_ms", "step ms", "mean wall time of one training step (rank 0)"),
    ("data_ms", "data ms", "mean wait for the batch"),
    ("forward_backward_ms", "fwd+bwd ms", "mean forward + backward, incl. the wait for the last all-reduce"),
    ("optimizer_ms", "optimizer ms", "mean optimizer step"),
    ("allreduce_ms", "all-reduce ms", "mean gradient all-reduce time per step, launch to completion (overlaps)"),
    ("peak_memory_mb", "peak MB", "peak RSS per rank on CPU, peak allocated on GPU; max over ranks"),
    ("epoch_time_s", "epoch s", "mean epoch wall time, epochs after the first"),
    ("speedup", "speedup", "samples/s over the fewest-rank configuration on the same device and batch"),
    ("efficiency", "efficiency", "speedup / ratio of ranks"),
    ("final_val_accuracy", "val acc", "validation accuracy after the last epoch"),
    ("test_accuracy", "test acc", "test accuracy at the end"),
    ("test_balanced_accuracy", "test bal. acc", "mean per-class recall on the test split"),
    ("test_macro_f1", "test macro F1", "mean per-class F1 on the test split"),
    ("test_eer", "test EER", "equal error rate on the test split (two classes only; the ASVspoof metric)"),
    ("epochs_run", "epochs", "epochs trained (fewer than configured after early stopping)"),
    ("restarts", "restarts", "times the launcher restarted the configuration after a rank died"),
    ("train_wall_s", "wall s", "wall time of the training job: loading, training, evaluation"),
    ("device_hours", "device-hours", "wall time x ranks: GPU-hours on GPU, rank-hours on CPU"),
]


def collect(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(measured configurations sorted by device and world size, skipped configurations)."""
    measured, skipped = [], []
    for folder in sorted((Path(run_dir) / "configs").glob("*/")):
        if (folder / "metrics.json").exists():
            measured.append({"name": folder.name, **json.loads((folder / "metrics.json").read_text())})
        elif (folder / "skipped.json").exists():
            skipped.append({"name": folder.name, **json.loads((folder / "skipped.json").read_text())})
    measured.sort(key=lambda m: (m["device"], m["batch_size_per_rank"], m["world_size"]))
    return measured, skipped


def add_derived(rows: list[dict]) -> None:
    """Speedup and efficiency against the fewest-rank configuration on the same device and batch; ms and cost."""
    for row in rows:
        peers = [r for r in rows if r["device"] == row["device"]
                 and r["batch_size_per_rank"] == row["batch_size_per_rank"]]
        base = min(peers, key=lambda r: r["world_size"])
        row["speedup"] = row["samples_per_second"] / base["samples_per_second"]
        row["efficiency"] = row["speedup"] / (row["world_size"] / base["world_size"])
        row["baseline"] = base["name"]
        for phase in PHASES:
            row[phase.removesuffix("_s") + "_ms"] = row[f"mean_{phase}"] * 1000
        row["peak_memory_mb"] = row["peak_memory_bytes"] / 2**20
        row["device_hours"] = row["train_wall_s"] * row["world_size"] / 3600


def baseline_of(rows: list[dict], row: dict) -> dict:
    return next(r for r in rows if r["name"] == row["baseline"])


def table_rows(rows: list[dict]) -> list[dict]:
    """Each configuration reduced to the documented columns, floats rounded: the rows of scaling.csv/.json."""
    return [{key: _round(row.get(key)) for key, _, _ in COLUMNS} for row in rows]


def write_scaling(run_dir: Path, rows: list[dict]) -> None:
    """scaling.csv (one row per configuration) and scaling.json (the column meanings, then the same rows)."""
    table = table_rows(rows)
    atomic_write_csv(run_dir / "scaling.csv", table, [key for key, _, _ in COLUMNS])
    atomic_write_json(run_dir / "scaling.json",
                      {"columns": {key: meaning for key, _, meaning in COLUMNS}, "configurations": table})


def _round(value: object) -> object:
    return round(value, 6) if isinstance(value, float) else value
