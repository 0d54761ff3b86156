"""Recorded metrics for report tests: a configuration's metrics.json (and skipped.json) as training writes it.

`metrics` gives every field of `TrainingMetrics` but `gradient_bytes`, so that a row built from it stands for a run
of a version before the projection model (tests pass `gradient_bytes=` to get one); `record` writes it through the
record, which needs every field, so a written run gets the gradient of its `parameters` in fp32 unless given.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.layout import RunLayout
from pipeline.records import Skipped, TrainingMetrics

TRAIN_SAMPLES = 1000
LABELS = ["a", "b"]


def epoch(epoch: int, train_loss: float, val_accuracy: float) -> dict:
    """One entry of metrics.json's history: what the tests vary, the rest of an ordinary epoch around it."""
    return {"epoch": epoch, "train_loss": train_loss, "train_accuracy": val_accuracy, "val_loss": train_loss,
            "val_accuracy": val_accuracy, "val_balanced_accuracy": val_accuracy, "val_macro_f1": val_accuracy,
            "val_eer": round(1 - val_accuracy, 6), "epoch_time_s": 10.0, "samples": TRAIN_SAMPLES,
            "resumed_mid_epoch": False}


def metrics(world_size: int, samples_per_second: float, step_s: float, allreduce_s: float = 0.01,
            device: str = "cpu", batch: int = 32, **extra) -> dict:
    return {
        "world_size": world_size, "device": device, "model": "cnn", "feature": "logmel", "input": "features",
        "init": "from scratch (no pretrained_weights)", "batch_size_per_rank": batch,
        "global_batch_size": batch * world_size, "epochs": 2, "samples_per_second": samples_per_second,
        "mean_step_s": step_s, "mean_data_s": 0.001, "mean_forward_backward_s": step_s - 0.011,
        "mean_optimizer_s": 0.01, "mean_allreduce_s": allreduce_s, "peak_memory_bytes": 300 * 2**20, "nodes": 1,
        "precision": "fp32", "train_wall_s": 360.0,
        "history": [epoch(1, 1.0, 0.5), epoch(2, 0.5, 0.9)],
        "epoch_time_s": 1000 / samples_per_second, "final_val_accuracy": 0.9, "test_accuracy": 0.88,
        "hostname": "host", "cpu_model": "Test CPU", "cpu_cores_available": 2, "threads_per_rank": 1,
        "launcher": "torchrun", "oversubscribed": world_size > 2, "measured_at": "2026-11-22T00:00:00+00:00",
        "versions": {"python": "3.11.7", "torch": "2.11.0"},
        # The fields no test varies, as an ordinary run of two classes records them.
        "grad_accumulation": 1, "epochs_run": 2, "stopped_early": False, "lr": 0.001, "lr_effective": 0.001,
        "warmup_steps": 0, "train_samples": TRAIN_SAMPLES, "steps_per_epoch": TRAIN_SAMPLES // (batch * world_size),
        "repeat": 0, "seed": 0, "parameters": 250_000,
        "samples_per_second_per_rank": samples_per_second / world_size, "final_val_loss": 0.3,
        "test_balanced_accuracy": 0.88, "test_macro_f1": 0.88, "test_eer": 0.12, "test_loss": 0.35,
        "test_confusion": [[44, 6], [6, 44]],
        "test_per_class": [{"label": label, "precision": 0.88, "recall": 0.88, "f1": 0.88, "support": 50}
                           for label in LABELS],
        "resumed_from": None, "rank_max_param_difference": 0.0, "restarts": 0, "labels": LABELS,
        "load_average_1m": float(world_size), **extra,
    }


def skipped(world_size: int, reason: str, device: str = "cpu", batch: int = 32) -> dict:
    """skipped.json of a configuration the launcher did not run."""
    return {"world_size": world_size, "device": device, "batch_size_per_rank": batch, "reason": reason}


def record(run: Path, name: str, data: dict, kind: str = "metrics") -> None:
    """Write configs/<name>/<kind>.json (`metrics` or `skipped`) into a run folder, through its record."""
    paths = RunLayout(run).training(name)
    paths.folder.mkdir(parents=True, exist_ok=True)
    if kind == "metrics":
        full = {"gradient_bytes": 4 * data["parameters"], **data}
        TrainingMetrics.from_dict(full, str(paths.metrics)).write(paths.metrics)
    else:
        Skipped.from_dict(data, str(paths.skipped)).write(paths.skipped)
