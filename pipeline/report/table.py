"""One row per configuration: the measured metrics plus what is derived from them (speedup, efficiency, cost), each
with its 95% confidence interval when the configuration was repeated (see `pipeline.report.aggregate`)."""

from __future__ import annotations

import math
from pathlib import Path

from pipeline import records
from pipeline.io import atomic_write_csv, atomic_write_json
from pipeline.layout import RunLayout
from pipeline.records import Skipped, TrainingMetrics
from pipeline.report.aggregate import configuration_of

PHASES = tuple(f"mean_{phase}" for phase in records.PHASES)
"""The TrainingMetrics fields of the step's phases (`records.PHASES`); each becomes a `_ms` column."""

# (key, short header, meaning): the columns of scaling.csv / scaling.json and of the report's table.
COLUMNS = [
    ("name", "configuration", "ws<ranks>-<device>-bs<batch per rank>"),
    ("model", "model", "classifier architecture"),
    ("input", "input", "features (feature shards) or images (PNG/JPEG, in tar shards or files)"),
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
    ("repeats", "repeats", "training runs (train.repeats, each with its own seed) whose mean this row is"),
    ("samples_per_second", "samples/s", "training samples per second, all ranks, epochs after the first"),
    ("samples_per_second_ci95", "samples/s ±", "half-width of the 95% confidence interval of samples/s"),
    ("step_ms", "step ms", "mean wall time of one training step (rank 0)"),
    ("step_ms_ci95", "step ms ±", "half-width of the 95% confidence interval of step ms"),
    ("data_ms", "data ms", "mean wait for the batch"),
    ("forward_backward_ms", "fwd+bwd ms", "mean forward + backward, incl. the wait for the last all-reduce"),
    ("optimizer_ms", "optimizer ms", "mean optimizer step"),
    ("allreduce_ms", "all-reduce ms", "mean gradient all-reduce time per step, launch to completion (overlaps)"),
    ("peak_memory_mb", "peak MB", "peak RSS per rank on CPU, peak reserved by the CUDA allocator on GPU; max of ranks"),
    ("epoch_time_s", "epoch s", "mean epoch wall time, epochs after the first"),
    ("epoch_time_s_ci95", "epoch s ±", "half-width of the 95% confidence interval of epoch s"),
    ("speedup", "speedup", "samples/s over the fewest-rank configuration on the same device and batch"),
    ("speedup_ci95", "speedup ±", "half-width of the 95% confidence interval of speedup (first-order propagation)"),
    ("efficiency", "efficiency", "speedup / ratio of ranks"),
    ("efficiency_ci95", "efficiency ±", "half-width of the 95% confidence interval of efficiency"),
    ("final_val_accuracy", "val acc", "validation accuracy after the last epoch"),
    ("final_val_accuracy_ci95", "val acc ±", "half-width of the 95% confidence interval of val acc"),
    ("test_accuracy", "test acc", "test accuracy at the end"),
    ("test_accuracy_ci95", "test acc ±", "half-width of the 95% confidence interval of test acc"),
    ("test_balanced_accuracy", "test bal. acc", "mean per-class recall on the test split"),
    ("test_macro_f1", "test macro F1", "mean per-class F1 on the test split"),
    ("test_eer", "test EER", "equal error rate on the test split (two classes only; the ASVspoof metric)"),
    ("epochs_run", "epochs", "epochs trained (fewer than configured after early stopping)"),
    ("restarts", "restarts", "times the launcher restarted the configuration after a rank died"),
    ("train_wall_s", "wall s", "wall time of the training job: loading, training, evaluation"),
    ("device_hours", "device-hours", "wall time x ranks: GPU-hours on GPU, rank-hours on CPU"),
]


def collect(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(measured runs sorted by device, batch per rank and world size, skipped runs), one dict per training folder:
    `name` (the folder) and the fields of its TrainingMetrics or Skipped record. A metrics.json that the record does
    not accept is an error naming the file: a report never averages a half-understood file."""
    measured, skipped = [], []
    for paths in RunLayout(run_dir).trainings():
        if paths.metrics.exists():
            measured.append({"name": paths.name, **TrainingMetrics.read(paths.metrics).to_dict()})
        elif paths.skipped.exists():
            skipped.append({"name": paths.name, **Skipped.read(paths.skipped).to_dict()})
    measured.sort(key=lambda m: (m["device"], m["batch_size_per_rank"], m["world_size"]))
    return measured, skipped


def add_derived(rows: list[dict]) -> None:
    """Speedup and efficiency against the fewest-rank configuration on the same device and batch; ms and cost.

    On aggregated rows each derived column gets its `_ci95` too. Speedup is a ratio of two means, S / B, so its
    interval comes from first-order error propagation: the relative half-width is sqrt((ci_S / S)^2 + (ci_B / B)^2),
    the two means being independent runs. Efficiency divides by a constant, so it keeps the relative half-width. A
    mean of one repeat has an unknown spread, so a ratio involving it has no interval (None) rather than one that
    counts that spread as zero; the baseline's own speedup is 1 by definition, with no interval either.
    """
    for _, group in scaling_groups(rows):
        for row in group:
            _derive(row, group[0])


def scaling_groups(rows: list[dict]) -> list[tuple[tuple[str, int], list[dict]]]:
    """Configurations per (device, batch per rank), each group sorted by ranks: the curves of a scaling study, whose
    first member is the baseline of speedup and efficiency."""
    keys = sorted({(r["device"], r["batch_size_per_rank"]) for r in rows})
    return [(key, sorted((r for r in rows if (r["device"], r["batch_size_per_rank"]) == key),
                         key=lambda r: r["world_size"])) for key in keys]


def add_derived_repeats(repeats: list[dict], configurations: list[dict]) -> None:
    """The derived columns of each single repeat, against the mean of its configuration's baseline (the same scale as
    the aggregated row); `configurations` went through `add_derived`."""
    by_name = {row["name"]: row for row in configurations}
    for row in repeats:
        row["repeats"] = 1
        _derive(row, baseline_of(configurations, by_name[configuration_of(row)]))


def _derive(row: dict, base: dict) -> None:
    row["speedup"] = row["samples_per_second"] / base["samples_per_second"]
    ratio = row["world_size"] / base["world_size"]
    row["efficiency"] = row["speedup"] / ratio
    row["baseline"] = base["name"]
    relative = None if row is base else relative_ci(row, base, "samples_per_second")
    row["speedup_ci95"] = None if relative is None else row["speedup"] * relative
    row["efficiency_ci95"] = None if relative is None else row["speedup_ci95"] / ratio
    for phase in PHASES:
        _scaled(row, phase, phase.removeprefix("mean_").removesuffix("_s") + "_ms", 1000)
    _scaled(row, "peak_memory_bytes", "peak_memory_mb", 1 / 2**20)
    _scaled(row, "train_wall_s", "device_hours", row["world_size"] / 3600)


def relative_ci(row: dict, base: dict, key: str) -> float | None:
    """Relative half-width of row[key] / base[key] to first order, or None when either mean has no interval."""
    spreads = [(r.get(f"{key}_ci95"), r[key]) for r in (row, base)]
    if any(ci is None for ci, _ in spreads):
        return None
    return math.hypot(*(ci / mean for ci, mean in spreads))


def _scaled(row: dict, source: str, target: str, factor: float) -> None:
    """row[target] = row[source] x factor, and its interval likewise."""
    row[target] = row[source] * factor
    ci = row.get(f"{source}_ci95")
    row[f"{target}_ci95"] = None if ci is None else ci * factor


def baseline_of(rows: list[dict], row: dict) -> dict:
    return next(r for r in rows if r["name"] == row["baseline"])


def table_rows(rows: list[dict]) -> list[dict]:
    """Each configuration reduced to the documented columns, floats rounded: the rows of scaling.csv/.json."""
    return [{key: _round(row.get(key)) for key, _, _ in COLUMNS} for row in rows]


def write_scaling(run_dir: Path, rows: list[dict], repeats: list[dict]) -> None:
    """scaling.csv (one row per configuration), scaling.json (the column meanings, then the same rows), and
    scaling_repeats.csv (the same columns, one row per repeat, so every mean can be checked against its samples)."""
    table = table_rows(rows)
    keys = [key for key, _, _ in COLUMNS]
    atomic_write_csv(run_dir / "scaling.csv", table, keys)
    atomic_write_csv(run_dir / "scaling_repeats.csv", table_rows(repeats), keys)
    atomic_write_json(run_dir / "scaling.json",
                      {"columns": {key: meaning for key, _, meaning in COLUMNS}, "configurations": table})


def cell(row: dict, key: str) -> str:
    """A table cell: `mean ± ci` when the value has a confidence interval, both with the mean's decimals."""
    value, ci = row.get(key), row.get(f"{key}_ci95")
    if ci is None or not isinstance(value, float | int) or isinstance(value, bool):
        return format_value(value)
    decimals = _decimals(value)
    return f"{value:.{decimals}f} ± {ci:.{decimals}f}"


def format_value(value: object) -> str:
    """One value as the report prints it: floats with 3 decimals under 10, else 1."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{_decimals(value)}f}"
    return str(value)


def _decimals(value: float) -> int:
    return 3 if abs(value) < 10 else 1


def _round(value: object) -> object:
    return round(value, 6) if isinstance(value, float) else value
