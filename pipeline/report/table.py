"""One row per configuration: the measured metrics plus what is derived from them (speedup, efficiency, cost), each
with its 95% confidence interval when the configuration was repeated (see `pipeline.report.aggregate`)."""

from __future__ import annotations

import math
from pathlib import Path

from pipeline import records
from pipeline.io import atomic_write_csv, atomic_write_json
from pipeline.layout import RunLayout
from pipeline.records import Skipped, TrainingMetrics
from pipeline.sweep import BACKENDS

PHASES = tuple(f"mean_{phase}" for phase in records.PHASES)
"""The TrainingMetrics fields of the step's phases (`records.PHASES`); each becomes a `_ms` column."""

# (key, short header, meaning): the columns of scaling.csv / scaling.json and of the report's table.
COLUMNS = [
    ("scaling", "scaling", "weak (batch per rank fixed) or strong (global batch fixed): the study the row's speedup "
     "and efficiency belong to; a configuration on a curve of each study has a row in each"),
    ("curve", "curve", "the scaling curve: study, device and the batch it keeps (and the backend, in a report of "
     "several)"),
    ("name", "configuration", "ws<ranks>-<device>-bs<batch per rank>, with -horovod for a Horovod run"),
    ("model", "model", "classifier architecture"),
    ("input", "input", "features (feature shards) or images (PNG/JPEG, in tar shards or files)"),
    ("init", "init", "pretrained from a local file, or from scratch"),
    ("nodes", "nodes", "machines the ranks ran on"),
    ("world_size", "ranks", "ranks: GPUs, or CPU processes"),
    ("device", "device", "cpu or cuda"),
    ("backend", "backend", "what averaged the gradients: ddp (torch DistributedDataParallel) or horovod; each "
     "backend has its own curves and baselines"),
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
    ("forward_backward_ms", "fwd+bwd ms", "mean forward + backward, incl. DDP's wait for the last all-reduce"),
    ("optimizer_ms", "optimizer ms", "mean optimizer step (with Horovod, incl. its wait for the all-reduce)"),
    ("allreduce_ms", "all-reduce ms", "mean gradient all-reduce time per step, launch to completion, summed over "
     "DDP's buckets; Horovod: from the first gradient's launch to synchronize() (both overlap backward)"),
    ("allreduce_share", "all-reduce share", "all-reduce ms / step ms (it overlaps backward: not all of it is lost)"),
    ("data_share", "data share", "data ms / step ms: the step's wait for its batch"),
    ("step_samples_per_second", "step samples/s", "global batch / step ms: the training steps' throughput, without "
     "the validation that samples/s (per epoch) includes"),
    ("synthetic_samples_per_second", "synthetic samples/s",
     "samples/s of the same steps on data made on the device (train.synthetic_steps; none when off)"),
    ("real_over_synthetic", "real/synthetic", "step samples/s with real data over synthetic data: what the input "
     "pipeline leaves of the steps' throughput"),
    ("peak_memory_mb", "peak MB", "peak RSS per rank on CPU, peak reserved by the CUDA allocator on GPU; max of ranks"),
    ("epoch_time_s", "epoch s", "mean epoch wall time, epochs after the first"),
    ("epoch_time_s_ci95", "epoch s ±", "half-width of the 95% confidence interval of epoch s"),
    ("baseline", "baseline", "the curve's fewest-rank configuration, which speedup and efficiency divide by"),
    ("speedup", "speedup", "samples/s over that of the curve's baseline"),
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
    ("flags", "flags", "what to know before quoting the row (the report's legend says what each means)"),
]


def collect(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(measured runs sorted by device, batch per rank, world size and backend (DDP first), skipped runs), one dict
    per training folder: `name` (the folder) and the fields of its TrainingMetrics or Skipped record. A metrics.json
    that the record does not accept is an error naming the file: a report never averages a half-understood file."""
    measured, skipped = [], []
    for paths in RunLayout(run_dir).trainings():
        if paths.metrics.exists():
            measured.append({"name": paths.name, **TrainingMetrics.read(paths.metrics).to_dict()})
        elif paths.skipped.exists():
            skipped.append({"name": paths.name, **Skipped.read(paths.skipped).to_dict()})
    measured.sort(key=lambda m: (m["device"], m["batch_size_per_rank"], m["world_size"], backend_order(backend_of(m))))
    return measured, skipped


def add_units(row: dict) -> None:
    """The columns of one configuration (or repeat) that need no baseline: phases in ms, memory in MB, the cost in
    device-hours, the all-reduce's share of the step and the real-over-synthetic ratio; intervals scale along."""
    for phase in PHASES:
        _scaled(row, phase, phase.removeprefix("mean_").removesuffix("_s") + "_ms", 1000)
    _scaled(row, "peak_memory_bytes", "peak_memory_mb", 1 / 2**20)
    _scaled(row, "train_wall_s", "device_hours", row["world_size"] / 3600)
    row["allreduce_share"] = row["allreduce_ms"] / row["step_ms"] if row["step_ms"] else None
    row["data_share"] = row["data_ms"] / row["step_ms"] if row["step_ms"] else None
    # Steps against steps: samples/s divides by the epoch's wall time, validation included; the synthetic phase
    # times optimizer steps only.
    batch = row.get("global_batch_size")
    row["step_samples_per_second"] = batch / row["mean_step_s"] if batch and row["mean_step_s"] else None
    synthetic = row.get("synthetic_step_s")
    row["real_over_synthetic"] = synthetic / row["mean_step_s"] if synthetic and row["mean_step_s"] else None


def derive(point: dict, base: dict) -> None:
    """Speedup and efficiency of `point` against its curve's baseline `base`, with intervals.

    Speedup is a ratio of two means, S / B, so its interval comes from first-order error propagation: the relative
    half-width is sqrt((ci_S / S)^2 + (ci_B / B)^2), the two means being independent runs. Efficiency divides by a
    constant, so it keeps the relative half-width. A mean of one repeat has an unknown spread, so a ratio involving
    it has no interval (None) rather than one that counts that spread as zero; the baseline's own speedup is 1 by
    definition, with no interval either.
    """
    point["speedup"] = point["samples_per_second"] / base["samples_per_second"]
    ratio = point["world_size"] / base["world_size"]
    point["efficiency"] = point["speedup"] / ratio
    point["baseline"] = base["name"]
    relative = None if point["name"] == base["name"] else relative_ci(point, base, "samples_per_second")
    point["speedup_ci95"] = None if relative is None else point["speedup"] * relative
    point["efficiency_ci95"] = None if relative is None else point["speedup_ci95"] / ratio


def add_derived(rows: list[dict]) -> None:
    """`add_units`, and speedup and efficiency along the weak-scaling curves (same device, batch per rank and
    backend), in place: what a comparison of two runs shows. The report itself derives per curve (`curves.curves`)."""
    for _, group in scaling_groups(rows):
        for row in group:
            add_units(row)
            derive(row, group[0])


def scaling_groups(rows: list[dict]) -> list[tuple[tuple[str, int, str], list[dict]]]:
    """Configurations per (device, batch per rank, backend), each group sorted by ranks: the weak-scaling curves,
    whose first member is the baseline of speedup and efficiency. DDP and Horovod are separate groups (DDP first):
    one backend's point is never divided by the other's baseline."""
    keys = sorted({_group_key(r) for r in rows}, key=lambda k: (k[0], k[1], backend_order(k[2])))
    return [(key, sorted((r for r in rows if _group_key(r) == key), key=lambda r: r["world_size"]))
            for key in keys]


def _group_key(row: dict) -> tuple[str, int, str]:
    return row["device"], row["batch_size_per_rank"], backend_of(row)


def backend_of(row: dict) -> str:
    """The row's backend; rows of runs made before Horovod existed have none and were DDP."""
    return row.get("backend") or "ddp"


def several_backends(rows: list[dict]) -> bool:
    """Whether the rows hold more than one backend: the report then names the backend in every curve's label and
    table, and compares the backends in a section of its own."""
    return len({backend_of(r) for r in rows}) > 1


def backend_name(backend: str) -> str:
    """How prose names a backend: `DDP`, `Horovod` (another one as recorded)."""
    return {"ddp": "DDP", "horovod": "Horovod"}.get(backend, backend)


def backend_order(backend: str) -> tuple[int, str]:
    """Sort key of a backend: DDP before Horovod (`sweep.BACKENDS`), any other backend after, by name."""
    return (BACKENDS.index(backend) if backend in BACKENDS else len(BACKENDS), backend)


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


def table_rows(rows: list[dict]) -> list[dict]:
    """Each configuration reduced to the documented columns, floats rounded: the rows of scaling.csv/.json."""
    return [{key: _round(row.get(key)) for key, _, _ in COLUMNS} for row in rows]


def write_scaling(out: Path, points: list[dict], repeats: list[dict]) -> None:
    """scaling.csv (one row per configuration and curve it is on), scaling.json (the column meanings, then the same
    rows), and scaling_repeats.csv (the same columns, one row per repeat and curve, so every mean can be checked
    against its samples)."""
    table = table_rows(points)
    keys = [key for key, _, _ in COLUMNS]
    atomic_write_csv(out / "scaling.csv", table, keys)
    atomic_write_csv(out / "scaling_repeats.csv", table_rows(repeats), keys)
    atomic_write_json(out / "scaling.json",
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
