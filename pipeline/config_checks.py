"""Values that type-check but cannot work, refused before any stage spends time on them (`check_config`).

`pipeline.config.load_config` runs `check_config` on every config it loads; the messages name the file and the dotted
key, like those of `pipeline.config_schema`. Three kinds of check:

- ranges, one function per section (`_data_ranges`, `_preprocess_ranges`, ...): a key and whether its value is
  possible;
- model inputs that cannot train (`_check_input_shape`), with the input shape preprocessing makes (`input_shape`);
- strings that land in sbatch scripts (`check_slurm`, `_check_dask_slurm`): plain tokens only.
"""

from __future__ import annotations

import math
import re

from pipeline.config_schema import ConfigError
from pipeline.config_types import (
    DataConfig,
    ExperimentConfig,
    PreprocessConfig,
    ReportConfig,
    SlurmConfig,
    TrainConfig,
)
from pipeline.sweep import batch_sizes, configurations, strong_batch


def check_config(config: ExperimentConfig, source: str) -> None:
    """Every check of this module, in order; the first problem is a ConfigError naming `source`."""
    _check_ranges(config, source)
    _check_strong_scaling(config.train, source)
    _check_image_input(config.train, config.preprocess, source)
    _check_input_shape(config, source)
    check_slurm(config.slurm, source)
    _check_dask_slurm(config.preprocess, source)


def _check_ranges(config: ExperimentConfig, source: str) -> None:
    """The first key whose value is out of its range, named with that value."""
    checks = {**_data_ranges(config.data), **_preprocess_ranges(config.preprocess, config.data.sample_rate),
              **_train_ranges(config.train), **_report_ranges(config.report), **_slurm_ranges(config.slurm)}
    for key, ok in checks.items():
        if not ok:
            value = config
            for part in key.split("."):
                value = getattr(value, part)
            raise ConfigError(f"{source}: '{key}' has an impossible value {value!r}")


def _data_ranges(data: DataConfig) -> dict[str, bool]:
    split = data.split
    return {
        "data.sample_rate": data.sample_rate > 0,
        "data.split.val": 0 <= split.val < 1,
        "data.split.test": 0 <= split.test < 1 and split.val + split.test < 1,
    }


def _preprocess_ranges(pre: PreprocessConfig, sample_rate: int) -> dict[str, bool]:
    jobs = pre.slurm_cluster
    return {
        "preprocess.chunk_seconds": pre.chunk_seconds > 0,
        "preprocess.hop_seconds": pre.hop_seconds is None or pre.hop_seconds > 0,
        "preprocess.f_min": 0 <= pre.f_min < (pre.f_max or sample_rate / 2),
        "preprocess.f_max": pre.f_max is None or pre.f_max <= sample_rate / 2,
        "preprocess.image_features": bool(pre.image_features) or not pre.images,
        "preprocess.min_last_chunk": 0 < pre.min_last_chunk <= 1,
        "preprocess.n_mfcc": 0 < pre.n_mfcc <= pre.n_mels,
        "preprocess.hop_length": 0 < pre.hop_length <= pre.n_fft,
        "preprocess.workers": pre.workers >= 1,
        "preprocess.files_per_task": pre.files_per_task >= 1,
        "preprocess.task_megabytes": pre.task_megabytes > 0,
        "preprocess.worker_memory_mb": pre.worker_memory_mb is None or pre.worker_memory_mb > 0,
        "preprocess.slurm_cluster.jobs": jobs.jobs >= 1,
        "preprocess.slurm_cluster.cores": jobs.cores >= 1,
        "preprocess.slurm_cluster.processes": 1 <= jobs.processes <= jobs.cores,
        # one worker per GPU and at least one CPU worker to decode for them
        "preprocess.slurm_cluster.gpus_per_job": jobs.gpus_per_job == 0 or 0 < jobs.gpus_per_job < jobs.processes,
        "preprocess.slurm_cluster.walltime": (slurm_time_seconds(jobs.walltime) or 0) >= 120,
        "preprocess.image_size": pre.image_size >= 8,
    }


def _train_ranges(train: TrainConfig) -> dict[str, bool]:
    return {
        "train.epochs": train.epochs >= 1,
        "train.batch_size": train.batch_size >= 1,
        "train.lr": train.lr > 0,
        "train.world_sizes": bool(train.world_sizes) and all(n >= 1 for n in train.world_sizes),
        "train.batch_sizes": all(n >= 1 for n in train.batch_sizes),
        "train.backends": len(set(train.backends)) == len(train.backends),
        "train.repeats": train.repeats >= 1,
        "train.threads_per_rank": train.threads_per_rank >= 1,
        "train.trainable_blocks": train.trainable_blocks >= 0,
        "train.dropout": 0 <= train.dropout < 1,
        "train.warmup_epochs": train.warmup_epochs >= 0,
        "train.grad_accumulation": train.grad_accumulation >= 1,
        "train.loader_workers": train.loader_workers >= 0,
        "train.shuffle_window": train.shuffle_window >= 1,
        "train.checkpoint_every_steps": train.checkpoint_every_steps >= 0,
        "train.stop_check_every_steps": train.stop_check_every_steps is None or train.stop_check_every_steps >= 1,
        "train.log_every_steps": train.log_every_steps is None or train.log_every_steps >= 1,
        "train.synthetic_steps": train.synthetic_steps >= 0,
        "train.early_stopping_patience": train.early_stopping_patience >= 0,
        "train.max_restarts": train.max_restarts >= 0,
        "train.collective_timeout_s": train.collective_timeout_s >= 10,
    }


def _report_ranges(report: ReportConfig) -> dict[str, bool]:
    return {
        "report.interconnect_gbit_s": report.interconnect_gbit_s > 0,
        "report.projection_world_sizes": all(n >= 2 for n in report.projection_world_sizes),
        "report.min_efficiency": 0 < report.min_efficiency <= 1,
        "report.plan.epochs": report.plan.epochs is None or report.plan.epochs >= 1,
        "report.plan.train_samples": report.plan.train_samples is None or report.plan.train_samples >= 1,
        "report.plan.gpus_per_node": report.plan.gpus_per_node is None or report.plan.gpus_per_node >= 1,
    }


def _slurm_ranges(slurm: SlurmConfig) -> dict[str, bool]:
    return {
        "slurm.gpus_per_node": slurm.gpus_per_node >= 0,
        "slurm.cpu_ranks_per_node": slurm.cpu_ranks_per_node >= 1,
        "slurm.preprocess_nodes": slurm.preprocess_nodes >= 1,
        "slurm.preprocess_cpus_per_node": slurm.preprocess_cpus_per_node >= 1,
        # one feature worker per GPU and at least one worker to decode for them
        "slurm.preprocess_gpus_per_node": 0 <= slurm.preprocess_gpus_per_node < slurm.preprocess_cpus_per_node,
        "slurm.signal_seconds": slurm.signal_seconds >= 0,
        "slurm.cpus_per_gpu_rank": slurm.cpus_per_gpu_rank >= 0,
    }


def _check_strong_scaling(train: TrainConfig, source: str) -> None:
    """Strong scaling divides the global batch of the fewest-rank configuration among the ranks: it must divide."""
    if train.scaling == "weak":
        return
    fewest = min(train.world_sizes)
    for batch in batch_sizes(train):
        for n in train.world_sizes:
            if strong_batch(batch, fewest, n) is None:
                raise ConfigError(
                    f"{source}: 'train.scaling: {train.scaling}' keeps the global batch {batch * fewest} (batch "
                    f"{batch} of 'train.batch_size'/'train.batch_sizes' x {fewest} ranks) and divides it among the "
                    f"ranks, but {n} of 'train.world_sizes' does not divide it; choose batch sizes that are a "
                    f"multiple of {n // math.gcd(n, fewest)}")


def _check_image_input(train: TrainConfig, pre: PreprocessConfig, source: str) -> None:
    """Training on images needs preprocessing to draw them, for the feature trained on."""
    if train.input == "images" and (not pre.images or train.feature not in pre.image_features):
        raise ConfigError(f"{source}: 'train.input: images' with 'train.feature: {train.feature}' needs "
                          f"'preprocess.images: true' and {train.feature!r} in 'preprocess.image_features' "
                          f"(now {pre.image_features})")


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
    if train.model == "lstm" or min(b for _, b in configurations(train)) > 1:
        return
    height, width = input_shape(config)
    if _deepest_map(train.model, height) * _deepest_map(train.model, width) >= 2:
        return
    smallest = min(n for n in range(1, 1025) if _deepest_map(train.model, n) >= 2)
    given = ("'preprocess.image_size'" if train.input == "images" else
             f"the 'preprocess.{'n_mels' if train.feature == 'logmel' else 'n_mfcc'}' bins of 'train.feature: "
             f"{train.feature}', 'preprocess.chunk_seconds', 'preprocess.hop_length' and 'data.sample_rate'")
    raise ConfigError(f"{source}: 'train.model: {train.model}' at batch size 1 per rank ('train.batch_size'/"
                      f"'train.batch_sizes', divided among the ranks with 'train.scaling: strong') takes "
                      f"inputs of at least "
                      f"{smallest} bins or frames on one axis (smallest "
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
    for i, line in enumerate(slurm.setup):
        if any(c in line for c in "\n\r\0") or line.lstrip().startswith("#SBATCH"):
            raise ConfigError(f"{source}: 'slurm.setup[{i}]' must be one shell line (no newline, carriage return, "
                              f"NUL or #SBATCH; they go verbatim into every job script), got {line!r}")
