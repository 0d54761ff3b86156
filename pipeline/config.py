"""Typed experiment configuration, loaded from one YAML file per experiment.

Every stage reads its own small dataclass. Loading is strict: an unknown key or a value of the wrong type is a
`ConfigError` that names the dotted key and the file, because a silently ignored typo in a sweep wastes GPU-hours.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.io import atomic_write_text


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


@dataclass
class SplitConfig:
    val: float = 0.15
    """Fraction of source files (not chunks) in the validation split."""
    test: float = 0.15
    """Fraction of source files in the test split."""
    seed: int = 0
    """Seed of the per-label shuffle that assigns files to splits."""
    by: Literal["file", "speaker"] = "file"
    """`file` splits source files; `speaker` keeps every speaker in one split, so test voices are unseen."""


@dataclass
class DataConfig:
    source: Literal["demo", "spoof", "folder", "csv", "asvspoof"] = "folder"
    """`demo` builds the Fish Fillets speaker dataset into `root` if it is missing, `spoof` the natural vs
    synthesized speech dataset; `folder` reads `root` as one sub-folder per class; `csv` reads `manifest`;
    `asvspoof` reads the ASVspoof 2019-style `protocol` and the audio in `root`."""
    root: str = "data/demo"
    """Dataset folder: one sub-folder per class (`folder`, `demo`), where `spoof` builds its files, or the folder
    of `<FILE>.flac` (or `.wav`) files a protocol names (`asvspoof`)."""
    manifest: str | None = None
    """With `csv`: a CSV with columns path, label and optionally speaker and split (relative paths are
    relative to the CSV's folder)."""
    protocol: str | None = None
    """With `asvspoof`: the protocol file, one `SPEAKER FILE - SYSTEM KEY` line per utterance (KEY bonafide or
    spoof is the label, SPEAKER the speaker for `split.by: speaker`), as the challenge ships it."""
    sample_rate: int = 16000
    """Every file is resampled to this rate, so a model cannot learn the recording rate instead of the class."""
    split: SplitConfig = field(default_factory=SplitConfig)
    """How source files are split into train / val / test."""


@dataclass
class DaskSlurmConfig:
    """The SLURM jobs of `preprocess.cluster: slurm` (dask-jobqueue's SLURMCluster): each job runs Dask workers
    that connect back to the scheduler in the `pipeline preprocess` process. Every value lands in an sbatch script,
    so the strings are checked like those of `slurm:`."""

    jobs: int = 2
    """SLURM jobs to keep running; each one is resubmitted when its workers retire before the walltime."""
    cores: int = 4
    """CPU cores per job (`--cpus-per-task`), shared by its worker processes, one thread per core."""
    processes: int = 4
    """Dask worker processes per job; processes rather than threads because feature work holds the GIL."""
    memory: str = "8GB"
    """Memory per job (e.g. `8GB`, `16GiB`), split evenly between its worker processes."""
    walltime: str = "01:00:00"
    """Time limit of each job ([D-]HH:MM:SS); workers retire a little before it, so it never kills a task."""
    partition: str | None = None
    """Partition of the worker jobs; none: the cluster's default."""
    account: str | None = None
    """Account charged for the worker jobs; none: the user's default."""
    extra_options: list[str] = field(default_factory=list)
    """More sbatch options for the worker jobs, e.g. `--qos=high`."""


@dataclass
class PreprocessConfig:
    chunk_seconds: float = 3.0
    """Length of each chunk; the seed method used 1, 3, 5 and 10 s."""
    hop_seconds: float | None = None
    """Step from one chunk's start to the next; shorter than `chunk_seconds` makes chunks overlap. None: no overlap."""
    last_chunk: Literal["drop", "pad"] = "drop"
    """What to do with a final chunk shorter than `chunk_seconds`: drop it or zero-pad it."""
    min_last_chunk: float = 0.5
    """With `pad`, the shortest remainder (as a fraction of a chunk) still worth padding."""
    silence_threshold_db: float | None = None
    """Drop chunks whose RMS level is below this many dB relative to full scale (e.g. -50); None keeps all."""
    export_chunks: bool = False
    """Also write every chunk as a 16-bit wav under chunks/<split>/<label>/ (as seed 001 did); by default chunks
    are rows pointing into their source file (`path`, `start_s`, `end_s`)."""
    n_mfcc: int = 13
    """MFCC coefficients per frame (13 as in seed 001)."""
    n_mels: int = 64
    """Mel bands of the log-mel spectrogram (and of the MFCC filterbank)."""
    n_fft: int = 400
    """FFT size in samples."""
    hop_length: int = 160
    """Hop between frames in samples."""
    f_min: float = 0.0
    """Lowest frequency of the mel filterbank in Hz."""
    f_max: float | None = None
    """Highest frequency of the mel filterbank in Hz; None: half the sample rate."""
    top_db: float = 80.0
    """Dynamic range kept by the dB conversion, below the loudest bin of each chunk (the dB floor)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where features are computed: `auto` uses a GPU when the worker sees one."""
    images: bool = True
    """Write spectrogram images per chunk under images/<feature>/<split>/<label>/."""
    image_features: list[Literal["logmel", "mfcc"]] = field(default_factory=lambda: ["logmel"])
    """Which features get images (seed 000 drew mel spectrograms, seed 001 MFCCs)."""
    image_size: int = 128
    """Height and width of each square image in pixels (seed 000: 288, ImageNet models: 224)."""
    image_format: Literal["png", "jpeg"] = "png"
    """PNG (lossless) or JPEG (quality 90, smaller; seed 001 saved JPEGs)."""
    colormap: str = "magma"
    """Matplotlib colormap name used as a lookup table."""
    workers: int = 2
    """Dask workers of the LocalCluster (one thread each); with `scheduler_file`, how many to wait for."""
    scheduler_file: str | None = None
    """Attach to a running Dask cluster through its scheduler file instead of starting a LocalCluster (this is how
    slurm/preprocess.sbatch spreads the work over the nodes of its allocation)."""
    files_per_task: int = 64
    """Source files per Dask task (one feature shard each); large enough that scheduling overhead stays small."""
    cluster: Literal["local", "slurm", "mpi"] = "local"
    """Where the Dask workers come from: `local`, a LocalCluster of `workers` processes here; `slurm`, SLURM jobs
    submitted by dask-jobqueue as `slurm_cluster` says; `mpi`, the ranks of an MPI launch (dask-mpi: rank 0 the
    scheduler, rank 1 this pipeline, the others workers; see slurm/preprocess-mpi.sbatch). `scheduler_file` wins."""
    slurm_cluster: DaskSlurmConfig = field(default_factory=DaskSlurmConfig)
    """The worker jobs of `cluster: slurm`."""
    interface: str | None = None
    """Network interface the scheduler and workers of `cluster: slurm` or `mpi` listen on (e.g. `ib0`, `lo` on one
    host); none: Dask's default, which may be one the compute nodes cannot reach."""


@dataclass
class TrainConfig:
    model: Literal["cnn", "resnet50", "densenet121", "lstm"] = "cnn"
    """`cnn`: seed 000's small CNN; `resnet50` (seed 001) and `densenet121` (seed 004): torchvision backbones with
    a 512-dropout-512-dropout head; `lstm`: a recurrent classifier over the frames of a feature."""
    input: Literal["features", "images"] = "features"
    """`features` reads the feature shards (the fast path); `images` reads the spectrogram PNGs (the seeds' path)."""
    feature: Literal["logmel", "mfcc"] = "logmel"
    """Which feature the model reads when `input` is `features`."""
    pretrained_weights: str | None = None
    """Local file with a torchvision state_dict for the `resnet50`/`densenet121` backbone; none trains from scratch
    (compute nodes usually have no network, so weights are never downloaded)."""
    freeze: Literal["none", "backbone", "first_k"] = "none"
    """Backbone layers to freeze: `none`; `backbone` (only the head trains); `first_k` (the first `trainable_blocks`
    blocks and the head train, the rest is frozen, as seed 001 did)."""
    trainable_blocks: int = 2
    """With `freeze: first_k`, how many of the backbone's blocks (counted from the input) stay trainable."""
    dropout: float = 0.25
    """Dropout rate of the classifier head."""
    epochs: int = 3
    """Passes over the training split."""
    batch_size: int = 32
    """Batch size per rank; the global batch is this times the world size times `grad_accumulation`."""
    lr: float = 1e-3
    """Adam learning rate for one rank (before `lr_scaling`)."""
    lr_scaling: Literal["none", "linear"] = "none"
    """`linear` multiplies `lr` by the world size times `grad_accumulation` (the linear scaling rule)."""
    warmup_epochs: float = 0.0
    """Epochs over which the learning rate ramps up linearly from near zero (use with `lr_scaling: linear`)."""
    grad_accumulation: int = 1
    """Micro-batches whose gradients are summed before one optimizer step (and one all-reduce)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """`bf16` runs forward and loss under bfloat16 autocast on GPU; CPU ranks always run fp32."""
    channels_last: bool = True
    """Use the channels-last memory format for convolutional models (faster convolutions on GPUs)."""
    loader_workers: int = 0
    """DataLoader worker processes per rank (persistent); 0 loads in the training process."""
    checkpoint_every_steps: int = 0
    """Also checkpoint every N optimizer steps (0: only at the end of each epoch)."""
    early_stopping_patience: int = 0
    """Stop after this many epochs without improvement of `early_stopping_metric` (0: never stop early)."""
    early_stopping_metric: Literal["val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1"] = \
        "val_accuracy"
    """Validation metric watched by early stopping."""
    backend: Literal["ddp", "horovod"] = "ddp"
    """`ddp` (torch DistributedDataParallel, the tested path) or `horovod` where it is importable."""
    world_sizes: list[int] = field(default_factory=lambda: [1, 2])
    """Each entry is one configuration: the number of DDP ranks."""
    batch_sizes: list[int] = field(default_factory=list)
    """Batch sizes per rank to sweep, each crossed with every world size; empty: just `batch_size`."""
    repeats: int = 1
    """Times each configuration is trained; repeat k uses seed `seed + k - 1`, so the spread covers both the
    machine's noise and the model's initialisation. The report gives the mean and a 95% confidence interval over
    the repeats. Above 1, each repeat has its own folder `<configuration>-r<k>`."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` uses one GPU per rank when there are enough, else CPU ranks with gloo."""
    threads_per_rank: int = 1
    """CPU threads per rank, so that a CPU rank stands for one fixed unit of compute like a GPU."""
    skip_oversubscribed: bool = True
    """Skip CPU configurations needing more cores than the machine has (they are named in the report)."""
    max_restarts: int = 0
    """Restarts of a configuration whose rank died; each restart resumes from the last checkpoint."""
    requeue: bool = True
    """Inside a SLURM job, on SIGUSR1 save a checkpoint and `scontrol requeue` the job."""
    seed: int = 0
    """Seed of model init and data order."""


@dataclass
class SlurmConfig:
    """How `pipeline submit` asks SLURM for resources. Every value lands in a generated sbatch script, so the
    strings are checked (`check_slurm`) and quoted; none can add a line or a command to the script."""

    partition: str | None = None
    """Partition of every job (`--partition`); none: the cluster's default."""
    account: str | None = None
    """Account charged (`--account`); none: the user's default."""
    gpus_per_node: int = 0
    """GPUs per node. A configuration of N ranks takes ceil(N / gpus_per_node) nodes with `--gres=gpu:K` (K ranks
    per node, one task per GPU); 0: CPU ranks without GPUs."""
    cpu_ranks_per_node: int = 4
    """With `gpus_per_node: 0`, how many CPU ranks share a node."""
    preprocess_nodes: int = 1
    """Nodes of the preprocessing job; each runs one Dask worker process per CPU it gets."""
    preprocess_cpus_per_node: int = 4
    """CPUs (and Dask workers) per node of the preprocessing job."""
    memory: str | None = None
    """Memory per node (`--mem`, e.g. `32G`); none: the partition's default."""
    time_preprocess: str = "02:00:00"
    """Time limit of the preprocessing job ([D-]HH:MM:SS)."""
    time_train: str = "04:00:00"
    """Time limit of each training job; 90 s before it, SIGUSR1 makes training checkpoint and requeue."""
    time_report: str = "00:20:00"
    """Time limit of the report job."""
    signal_seconds: int = 90
    """How long before the time limit SLURM sends SIGUSR1 to the training ranks (`--signal=USR1@N`)."""
    python: str | None = None
    """Python with the pipeline installed, as the compute nodes see it; none: the one running `pipeline submit`
    (right when the virtual environment is on a shared file system)."""
    extra_options: list[str] = field(default_factory=list)
    """More sbatch options for every job, e.g. `--qos=high` or `--constraint=a100`."""


@dataclass
class ReportConfig:
    """What `pipeline report` adds to the measured figures."""

    interconnect_gbit_s: float = 100.0
    """Link bandwidth per GPU of the projection model (Gbit/s; 100 is one InfiniBand EDR port, 200 HDR)."""
    projection_world_sizes: list[int] = field(default_factory=lambda: [8, 16, 32])
    """World sizes the projection model extrapolates to, drawn dashed beside the measured points."""


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    """Short name of the experiment, shown in reports."""
    run_dir: str = "results/experiment"
    """Folder that holds every output of this experiment."""
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """Resources of the jobs `pipeline submit` sends to SLURM."""
    report: ReportConfig = field(default_factory=ReportConfig)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment, apply `key.sub=value` overrides, and validate it into an ExperimentConfig."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for item in overrides or []:
        _apply_override(raw, item, path)
    config = build(ExperimentConfig, raw, source=str(path))
    _check_ranges(config, str(path))
    return config


def load_experiment(target: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """A config file, or a run folder: the config.yaml it keeps, with run_dir set to where the folder is now.

    Commands take either, so a run folder that was moved or copied (scratch to project space, to a colleague)
    trains, resumes, evaluates and reports where it is, without editing its config.
    """
    target = Path(target)
    if not target.is_dir():
        return load_config(target, overrides)
    saved = target / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"{target}: a folder without config.yaml: give an experiment YAML or a run folder")
    return dataclasses.replace(load_config(saved, overrides), run_dir=str(target))


def _check_ranges(config: ExperimentConfig, source: str) -> None:
    """Values that type-check but cannot work, reported before any stage spends time on them."""
    split, pre, train = config.data.split, config.preprocess, config.train
    problems = {
        "data.sample_rate": config.data.sample_rate > 0,
        "data.split.val": 0 <= split.val < 1,
        "data.split.test": 0 <= split.test < 1 and split.val + split.test < 1,
        "preprocess.chunk_seconds": pre.chunk_seconds > 0,
        "preprocess.hop_seconds": pre.hop_seconds is None or pre.hop_seconds > 0,
        "preprocess.f_min": 0 <= pre.f_min < (pre.f_max or config.data.sample_rate / 2),
        "preprocess.f_max": pre.f_max is None or pre.f_max <= config.data.sample_rate / 2,
        "preprocess.image_features": bool(pre.image_features) or not pre.images,
        "preprocess.min_last_chunk": 0 < pre.min_last_chunk <= 1,
        "preprocess.n_mfcc": 0 < pre.n_mfcc <= pre.n_mels,
        "preprocess.hop_length": 0 < pre.hop_length <= pre.n_fft,
        "preprocess.workers": pre.workers >= 1,
        "preprocess.files_per_task": pre.files_per_task >= 1,
        "preprocess.slurm_cluster.jobs": pre.slurm_cluster.jobs >= 1,
        "preprocess.slurm_cluster.cores": pre.slurm_cluster.cores >= 1,
        "preprocess.slurm_cluster.processes": 1 <= pre.slurm_cluster.processes <= pre.slurm_cluster.cores,
        "preprocess.slurm_cluster.walltime": (slurm_time_seconds(pre.slurm_cluster.walltime) or 0) >= 120,
        "preprocess.image_size": pre.image_size >= 8,
        "train.epochs": train.epochs >= 1,
        "train.batch_size": train.batch_size >= 1,
        "train.lr": train.lr > 0,
        "train.world_sizes": bool(train.world_sizes) and all(n >= 1 for n in train.world_sizes),
        "train.batch_sizes": all(n >= 1 for n in train.batch_sizes),
        "train.repeats": train.repeats >= 1,
        "report.interconnect_gbit_s": config.report.interconnect_gbit_s > 0,
        "report.projection_world_sizes": all(n >= 2 for n in config.report.projection_world_sizes),
        "train.threads_per_rank": train.threads_per_rank >= 1,
        "train.trainable_blocks": train.trainable_blocks >= 0,
        "train.dropout": 0 <= train.dropout < 1,
        "train.warmup_epochs": train.warmup_epochs >= 0,
        "train.grad_accumulation": train.grad_accumulation >= 1,
        "train.loader_workers": train.loader_workers >= 0,
        "train.checkpoint_every_steps": train.checkpoint_every_steps >= 0,
        "train.early_stopping_patience": train.early_stopping_patience >= 0,
        "train.max_restarts": train.max_restarts >= 0,
        "slurm.gpus_per_node": config.slurm.gpus_per_node >= 0,
        "slurm.cpu_ranks_per_node": config.slurm.cpu_ranks_per_node >= 1,
        "slurm.preprocess_nodes": config.slurm.preprocess_nodes >= 1,
        "slurm.preprocess_cpus_per_node": config.slurm.preprocess_cpus_per_node >= 1,
        "slurm.signal_seconds": config.slurm.signal_seconds >= 0,
    }
    for key, ok in problems.items():
        if not ok:
            value = config
            for part in key.split("."):
                value = getattr(value, part)
            raise ConfigError(f"{source}: '{key}' has an impossible value {value!r}")
    if train.input == "images" and (not pre.images or train.feature not in pre.image_features):
        raise ConfigError(f"{source}: 'train.input: images' with 'train.feature: {train.feature}' needs "
                          f"'preprocess.images: true' and {train.feature!r} in 'preprocess.image_features' "
                          f"(now {pre.image_features})")
    _check_input_shape(config, source)
    check_slurm(config.slurm, source)
    _check_dask_slurm(pre, source)


def input_shape(config: ExperimentConfig) -> tuple[int, int]:
    """(height, width) of one model input as preprocessing makes it: the square image of `preprocess.image_size`,
    or the bins x frames of `train.feature`, whose centred STFT gives 1 + chunk samples // hop_length frames."""
    pre = config.preprocess
    if config.train.input == "images":
        return pre.image_size, pre.image_size
    bins = pre.n_mels if config.train.feature == "logmel" else pre.n_mfcc
    return bins, 1 + round(pre.chunk_seconds * config.data.sample_rate) // pre.hop_length


def _deepest_map(model: str, n: int) -> int:
    """Length that an input axis of length `n` has at the model's deepest BatchNorm (pipeline/train/models.py): the
    cnn halves it (while >= 2) before its last three blocks; ResNet-50's five stride-2 layers round up; DenseNet-121's
    stem rounds up twice, then its three transitions halve it while >= 2."""
    def halve(k: int) -> int:
        return k // 2 if k >= 2 else k

    def round_up(k: int) -> int:
        return (k + 1) // 2

    for step in {"cnn": [halve] * 3, "resnet50": [round_up] * 5, "densenet121": [round_up] * 2 + [halve] * 3}[model]:
        n = step(n)
    return n


def _check_input_shape(config: ExperimentConfig, source: str) -> None:
    """Model inputs that cannot train, refused before preprocessing spends hours making them. Every model takes
    any input of at least 1 x 1 (13 MFCCs, 1 s chunks, small images) at a batch size of 2 or more; at batch size 1
    a BatchNorm in training needs its deepest map to hold more than one value."""
    pre, train, rate = config.preprocess, config.train, config.data.sample_rate
    samples = round(pre.chunk_seconds * rate)
    if samples <= pre.n_fft // 2:  # torch.stft's centred reflect padding needs more samples than it pads
        raise ConfigError(f"{source}: 'preprocess.chunk_seconds' {pre.chunk_seconds} is {samples} samples at "
                          f"'data.sample_rate' {rate}; 'preprocess.n_fft' {pre.n_fft} needs chunks of more than "
                          f"{pre.n_fft // 2} samples")
    if train.model == "lstm" and train.input == "images":
        raise ConfigError(f"{source}: 'train.model: lstm' reads the frames of a feature; 'train.input: images' needs "
                          f"cnn, resnet50 or densenet121")
    if train.model == "lstm" or min(train.batch_sizes or [train.batch_size]) > 1:
        return
    height, width = input_shape(config)
    if _deepest_map(train.model, height) * _deepest_map(train.model, width) >= 2:
        return
    smallest = min(n for n in range(1, 1025) if _deepest_map(train.model, n) >= 2)
    given = ("'preprocess.image_size'" if train.input == "images" else
             f"the 'preprocess.{'n_mels' if train.feature == 'logmel' else 'n_mfcc'}' bins of 'train.feature: "
             f"{train.feature}', 'preprocess.chunk_seconds', 'preprocess.hop_length' and 'data.sample_rate'")
    raise ConfigError(f"{source}: 'train.model: {train.model}' at batch size 1 ('train.batch_size'/"
                      f"'train.batch_sizes') takes inputs of at least {smallest} bins or frames on one axis (smallest "
                      f"input {smallest} x 1 or 1 x {smallest}): a BatchNorm in training needs more than one value per "
                      f"channel, and its deepest map would be 1 x 1. The config gives {height} x {width} (from "
                      f"{given}); use a batch size of 2 or more or a larger input")


_SLURM_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
_SLURM_TIME = re.compile(r"(\d+-)?\d{1,2}:\d{2}:\d{2}|\d+")
_SLURM_MEMORY = re.compile(r"\d+[KMGT]?")
_SLURM_OPTION = re.compile(r"--[a-z][a-z-]*(=[A-Za-z0-9_.,:@%/+=-]+)?")


def slurm_time_seconds(text: str) -> int | None:
    """Seconds of a SLURM time limit ([D-]HH:MM:SS, or minutes alone); None if it is not one."""
    if not _SLURM_TIME.fullmatch(text):
        return None
    if text.isdigit():
        return int(text) * 60
    days, _, clock = text.rpartition("-")
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def _check_dask_slurm(pre: PreprocessConfig, source: str) -> None:
    """dask-jobqueue writes these into #SBATCH lines and the worker command of its job script: plain tokens only."""
    jobs = pre.slurm_cluster
    checks = [("slurm_cluster.partition", jobs.partition, _SLURM_NAME),
              ("slurm_cluster.account", jobs.account, _SLURM_NAME),
              ("slurm_cluster.memory", jobs.memory, re.compile(r"\d+(\.\d+)?[KMGT]i?B")),
              ("interface", pre.interface, _SLURM_NAME)]
    checks += [(f"slurm_cluster.extra_options[{i}]", option, _SLURM_OPTION)
               for i, option in enumerate(jobs.extra_options)]
    _check_tokens(checks, source, "preprocess.", "value")


def _check_tokens(checks: list[tuple[str, str | None, re.Pattern]], source: str, prefix: str, kind: str) -> None:
    """Each (key, value, pattern): a set value must match its pattern whole."""
    for key, value, pattern in checks:
        if value is not None and not pattern.fullmatch(value):
            raise ConfigError(f"{source}: '{prefix}{key}' is not a valid {kind}: {value!r}")


def check_slurm(slurm: SlurmConfig, source: str) -> None:
    """Each value must be a plain token of its kind: anything else could break out of its #SBATCH line."""
    checks = [("partition", slurm.partition, _SLURM_NAME), ("account", slurm.account, _SLURM_NAME),
              ("memory", slurm.memory, _SLURM_MEMORY), ("time_preprocess", slurm.time_preprocess, _SLURM_TIME),
              ("time_train", slurm.time_train, _SLURM_TIME), ("time_report", slurm.time_report, _SLURM_TIME)]
    checks += [(f"extra_options[{i}]", option, _SLURM_OPTION) for i, option in enumerate(slurm.extra_options)]
    _check_tokens(checks, source, "slurm.", "sbatch value")
    if slurm.python is not None and any(c in slurm.python for c in "\n\r\0"):
        raise ConfigError(f"{source}: 'slurm.python' must be one path, got {slurm.python!r}")


def _apply_override(raw: dict, item: str, source: Path) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.batch_size=64")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: --set {key}: '{part}' is not a section")
    node[leaf] = yaml.safe_load(text)


def build(cls: type, raw: Any, source: str, prefix: str = "") -> Any:
    """Turn a parsed mapping into dataclass `cls`, checking every key and type on the way."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}' (known keys in {where}: {', '.join(sorted(known))})"
        )
    values = {name: _coerce(hints[name], value, source, f"{prefix}{name}") for name, value in raw.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source, prefix=f"{key}.")
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(c) for c in typing.get_args(hint))
            raise ConfigError(f"{source}: '{key}' must be one of {choices}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner[0], value, source, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        (item_hint,) = typing.get_args(hint)
        return [_coerce(item_hint, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{source}: '{key}' must be {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


def to_dict(config: Any) -> dict:
    """Plain-data view of a config, for writing next to the outputs it produced."""
    return dataclasses.asdict(config)


def save_config(config: ExperimentConfig, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
