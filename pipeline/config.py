"""Typed experiment configuration, loaded from one YAML file per experiment.

Every stage reads its own small dataclass. Loading is strict: an unknown key or a value of the wrong type is a
`ConfigError` that names the dotted key and the file, because a silently ignored typo in a sweep wastes GPU-hours.

This module is the one to import from; the work is split over three others, each re-exported here:

- `pipeline.config_types`: the sections (`ExperimentConfig`, `TrainConfig`, ...), their defaults and meaning;
- `pipeline.config_schema`: YAML to those dataclasses (`build`, `ConfigError`, `--set` overrides);
- `pipeline.config_checks`: values that type-check but cannot work (ranges, model inputs, sbatch strings).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from pipeline.config_checks import check_config, check_slurm, input_shape, slurm_time_seconds
from pipeline.config_schema import ConfigError, apply_override, build
from pipeline.config_types import (
    DaskSlurmConfig,
    DataConfig,
    ExperimentConfig,
    PlanConfig,
    PreprocessConfig,
    ReportConfig,
    SlurmConfig,
    SplitConfig,
    TrainConfig,
)
from pipeline.io import atomic_write_text
from pipeline.layout import RunLayout

__all__ = [
    "ConfigError", "DaskSlurmConfig", "DataConfig", "ExperimentConfig", "PlanConfig", "PreprocessConfig",
    "ReportConfig",
    "SlurmConfig", "SplitConfig", "TrainConfig", "build", "check_config", "check_slurm", "input_shape",
    "config_text", "load_config", "load_experiment", "save_config", "slurm_time_seconds", "to_dict",
]


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
        apply_override(raw, item, path)
    config = build(ExperimentConfig, raw, source=str(path))
    check_config(config, str(path))
    return config


def load_experiment(target: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """A config file, or a run folder: the config.yaml it keeps, with run_dir set to where the folder is now.

    Commands take either, so a run folder that was moved or copied (scratch to project space, to a colleague)
    trains, resumes, evaluates and reports where it is, without editing its config.
    """
    target = Path(target)
    if not target.is_dir():
        return load_config(target, overrides)
    saved = RunLayout(target).config
    if not saved.is_file():
        raise ConfigError(f"{target}: a folder without config.yaml: give an experiment YAML or a run folder")
    return dataclasses.replace(load_config(saved, overrides), run_dir=str(target))


def to_dict(config: Any) -> dict:
    """Plain-data view of a config, for writing next to the outputs it produced."""
    return dataclasses.asdict(config)


def config_text(config: ExperimentConfig) -> str:
    """The YAML `save_config` writes."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save_config(config: ExperimentConfig, path: Path) -> None:
    atomic_write_text(path, config_text(config))
