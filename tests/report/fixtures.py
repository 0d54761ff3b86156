"""Recorded metrics for report tests: a configuration's metrics.json as the training worker writes it."""

from __future__ import annotations

import json
from pathlib import Path


def metrics(world_size: int, samples_per_second: float, step_s: float, allreduce_s: float = 0.01,
            device: str = "cpu", batch: int = 32, **extra) -> dict:
    return {
        "world_size": world_size, "device": device, "model": "cnn", "feature": "logmel", "input": "features",
        "init": "from scratch (no pretrained_weights)", "batch_size_per_rank": batch,
        "global_batch_size": batch * world_size, "epochs": 2, "samples_per_second": samples_per_second,
        "mean_step_s": step_s, "mean_data_s": 0.001, "mean_forward_backward_s": step_s - 0.011,
        "mean_optimizer_s": 0.01, "mean_allreduce_s": allreduce_s, "peak_memory_bytes": 300 * 2**20, "nodes": 1,
        "precision": "fp32", "train_wall_s": 360.0,
        "history": [{"epoch": 1, "train_loss": 1.0, "val_accuracy": 0.5},
                    {"epoch": 2, "train_loss": 0.5, "val_accuracy": 0.9}],
        "epoch_time_s": 1000 / samples_per_second, "final_val_accuracy": 0.9, "test_accuracy": 0.88,
        "hostname": "host", "cpu_model": "Test CPU", "cpu_cores_available": 2, "threads_per_rank": 1,
        "launcher": "torchrun", "oversubscribed": world_size > 2, "measured_at": "2026-11-22T00:00:00+00:00",
        "versions": {"python": "3.11.7", "torch": "2.11.0"}, **extra,
    }


def record(run: Path, name: str, data: dict, kind: str = "metrics") -> None:
    """Write configs/<name>/<kind>.json (`metrics` or `skipped`) into a run folder."""
    (run / "configs" / name).mkdir(parents=True, exist_ok=True)
    (run / "configs" / name / f"{kind}.json").write_text(json.dumps(data))
