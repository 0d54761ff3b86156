"""The records that pass between stages, typed: the writer builds one, every reader loads the same class.

Each record is a dataclass saved as a flat JSON object (`to_dict`) and read back with `from_dict`, which names the
file and the key when one is missing or unknown, so a report never reads a half-understood metrics file. Adding a
measurement is one field here, written by its stage and read by name everywhere else.

- `TrainingMetrics`: configs/<run>/metrics.json, written by rank 0 of a training run, read by the report.
- `EpochRecord`: one entry of its `history`, also kept in checkpoints.
- `Skipped` / `Interrupted`: why a training folder has no metrics.
- `PreprocessSummary` / `PreprocessRun`: features/summary.json, written by preprocessing, read by the report.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pipeline.io import atomic_write_json
from pipeline.sweep import TrainingRun

R = TypeVar("R", bound="Record")

PHASES = ("data_s", "forward_backward_s", "optimizer_s", "allreduce_s", "step_s")
"""The timed phases of a training step: the columns of steps.csv, and `mean_<phase>` in TrainingMetrics."""


class Record:
    """Base of the records: JSON in and out, strict about keys."""

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset()
    """Fields left out of the JSON when None (facts that exist only on some machines, e.g. the GPU model)."""
    NESTED: ClassVar[dict[str, type[Record]]] = {}
    """Fields holding a list of records of another class."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in self.OMIT_IF_NONE:
                continue
            out[f.name] = [v.to_dict() for v in value] if f.name in self.NESTED else value
        return out

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any], source: str = "") -> R:
        where = f"{source}: " if source else ""
        if not isinstance(data, dict):
            raise ValueError(f"{where}expected a JSON object for {cls.__name__}, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{where}unknown key(s) {', '.join(unknown)} in {cls.__name__} (written by a newer "
                             "version of the pipeline?)")
        missing = [name for name, f in fields.items() if name not in data and _required(f)]
        if missing:
            raise ValueError(f"{where}missing key(s) {', '.join(missing)} in {cls.__name__} (written by an older "
                             "version of the pipeline?)")
        values = {k: ([cls.NESTED[k].from_dict(v, source) for v in value] if k in cls.NESTED else value)
                  for k, value in data.items()}
        return cls(**values)

    @classmethod
    def read(cls: type[R], path: Path) -> R:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, str(path))

    def write(self, path: Path) -> None:
        atomic_write_json(Path(path), self.to_dict())


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@dataclass
class EpochRecord(Record):
    """One epoch of training, as every rank agreed on it."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_balanced_accuracy: float
    val_macro_f1: float
    val_eer: float | None
    """Equal error rate on the validation split (two classes only)."""
    epoch_time_s: float
    """Wall time of the epoch: its training steps and its validation (what samples/s divides by)."""
    samples: int
    """Training samples of all ranks in the epoch."""
    resumed_mid_epoch: bool
    """The epoch started from a checkpoint taken inside it: its time covers only part of it."""


@dataclass
class TrainingMetrics(Record):
    """What one training run measured and on what: configs/<run>/metrics.json."""

    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"gpu_model", "cuda", "gpu_count", "code", "device_reason",
                                                        "synthetic_samples_per_second", "synthetic_step_s"})
    NESTED: ClassVar[dict[str, type[Record]]] = {"history": EpochRecord}

    # What ran
    world_size: int
    nodes: int
    device: str
    """`cpu` or `cuda`."""
    precision: str
    """`fp32` or `bf16`: what the forward pass really ran in."""
    model: str
    input: str
    feature: str
    init: str
    """How the weights started: from scratch, or a named local pretrained file."""
    batch_size_per_rank: int
    grad_accumulation: int
    global_batch_size: int
    """batch per rank x ranks x accumulated micro-batches: samples per optimizer step."""
    epochs: int
    epochs_run: int
    stopped_early: bool
    lr: float
    lr_effective: float
    """train.lr after linear scaling with the global batch (train.lr_scaling)."""
    warmup_steps: int
    train_samples: int
    steps_per_epoch: int
    repeat: int
    """k of train.repeats (0: the only run of its configuration)."""
    seed: int
    parameters: int
    """Trainable parameters."""
    gradient_bytes: int
    """Bytes DDP all-reduces per optimizer step: what the report's projection scales with."""
    # Speed (epochs after the first, and not resumed mid-way)
    samples_per_second: float
    samples_per_second_per_rank: float
    mean_data_s: float
    mean_forward_backward_s: float
    mean_optimizer_s: float
    mean_allreduce_s: float
    mean_step_s: float
    peak_memory_bytes: int
    """Peak RSS per rank on CPU; on GPU what the caching allocator reserved (`max_memory_reserved`: tensors and the
    allocator's cache, without the CUDA context); max over ranks. Runs of older versions recorded allocated tensor
    memory on GPU."""
    epoch_time_s: float
    # Accuracy
    final_val_accuracy: float
    final_val_loss: float
    test_accuracy: float
    test_balanced_accuracy: float
    test_macro_f1: float
    test_eer: float | None
    test_loss: float
    test_confusion: list[list[int]]
    test_per_class: list[dict]
    # How it went
    resumed_from: dict | None
    """Progress of the checkpoint this run resumed from, or None."""
    rank_max_param_difference: float
    """Largest difference of any rank's parameters from rank 0's at the end: DDP promises 0."""
    restarts: int
    """Times the launcher (or SLURM's requeue) started this run again."""
    train_wall_s: float
    labels: list[str]
    history: list[EpochRecord]
    # Where it ran (see pipeline.train.environment)
    hostname: str
    cpu_model: str
    cpu_cores_available: int
    threads_per_rank: int
    launcher: str
    oversubscribed: bool
    measured_at: str
    load_average_1m: float | None
    versions: dict[str, str]
    gpu_model: str | None = None
    cuda: str | None = None
    gpu_count: int | None = None
    """GPUs the rank could see: fewer than ranks per node means ranks shared a GPU."""
    code: dict | None = None
    """pipeline.fingerprint.code_version() of the training code; None for runs of older versions."""
    device_reason: str | None = None
    """Why the run got its device, as the launcher decided it (e.g. `train.device auto and 2 ranks need 2 GPUs,
    this machine has 1`); None for runs of older versions or ranks started without the launcher."""
    synthetic_samples_per_second: float | None = None
    """Samples per second (all ranks) of `train.synthetic_steps` optimizer steps after training on random inputs made
    on the device (no loader, same model, precision, accumulation and batch): the speed with the input pipeline
    taken away. Far above `samples_per_second`, the run was input-bound. None when the phase did not run."""
    synthetic_step_s: float | None = None
    """Mean optimizer step of that phase in seconds (the slowest rank's phase time over its steps); None when it did
    not run."""
    backend: str = "ddp"
    """`ddp` or `horovod`: what averaged the gradients (runs of older versions were all DDP)."""

    @property
    def configuration(self) -> str:
        """The configuration this run is a repeat of (what the report groups on)."""
        return TrainingRun(self.world_size, self.device, self.batch_size_per_rank,
                           backend=self.backend).configuration


@dataclass
class Skipped(Record):
    """configs/<run>/skipped.json: the launcher did not run this configuration here."""

    world_size: int
    device: str
    batch_size_per_rank: int
    reason: str


@dataclass
class Interrupted(Record):
    """configs/<run>/interrupted.json: a signal stopped the run after its checkpoint was written."""

    signal: str
    epoch: int
    batches_done: int
    optimizer_steps: int
    checkpoint: str
    """The checkpoint, relative to the run folder's configs/."""
    requeue: str | None
    """What requeueing the SLURM job said, if it was requeued."""


@dataclass
class PreprocessRun(Record):
    """One run of preprocessing over the same features folder (a rerun resumes and adds one)."""

    tasks: int
    """Tasks this run did (not those an earlier run had done)."""
    chunks: int
    seconds: float
    workers: int
    """Largest number of Dask workers seen during the run."""
    finished_at: str


@dataclass
class PreprocessSummary(Record):
    """features/summary.json: what preprocessing made, over all its runs."""

    NESTED: ClassVar[dict[str, type[Record]]] = {"runs": PreprocessRun}

    tasks: int
    tasks_per_node: dict[str, int]
    files: int
    chunks: int
    chunks_per_split: dict[str, int]
    silent_chunks_dropped: int
    rejected_files: int
    labels: list[str]
    runs: list[PreprocessRun] = field(default_factory=list)
    tasks_without_record: int = 0
    """Tasks done by runs that stopped before writing a summary: their time is unknown."""
    # What a cluster file system holds, measured on disk after the run (None: a summary of an older version)
    files_written: int | None = None
    """Files preprocessing made in the run folder: features (shards, index, ...), images, gallery, chunk wavs."""
    files_per_1000_chunks: float | None = None
    """files_written per 1,000 chunks: about 1,000 more with one image file per chunk than with image shards."""
    feature_shard_bytes: dict[str, int] | None = None
    """{"mean", "max"} bytes of a feature shard folder (shard-NNNNN/)."""
    image_shard_bytes: dict[str, int] | None = None
    """{"mean", "max"} bytes of an image tar (images/<feature>/shard-NNNNN.tar); None without image shards."""
    image_layout: str = "files"
    """`shards` or `files` (preprocess.image_layout), `none` without images; older versions wrote files."""


def field_names(cls: type) -> list[str]:
    """The JSON keys of a record class, in order."""
    return [f.name for f in dataclasses.fields(cls)]

