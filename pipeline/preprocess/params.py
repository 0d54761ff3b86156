"""The preprocessing settings a features folder was made with, so a rerun never mixes shards of two settings.

A rerun skips complete shards; that is only right if they were made the way the config now asks. The settings that
shape the outputs are stored in features/params.json on the first run and compared on every later one. Settings that
only decide where or how fast the work runs (workers, cluster, device) are left out, so resuming on other hardware
is fine.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import ExperimentConfig, to_dict
from pipeline.io import atomic_write_json

EXECUTION_ONLY = {"workers", "scheduler_file", "cluster", "slurm_cluster", "interface", "device"}
"""PreprocessConfig keys that do not change what is written."""


def output_settings(config: ExperimentConfig) -> dict:
    settings = {k: v for k, v in to_dict(config.preprocess).items() if k not in EXECUTION_ONLY}
    return {"sample_rate": config.data.sample_rate, **settings}


def check_or_record(config: ExperimentConfig) -> None:
    """Record the settings of a new features folder; refuse to continue one made with other settings."""
    path = Path(config.run_dir) / "features" / "params.json"
    wanted = output_settings(config)
    if not path.is_file():
        atomic_write_json(path, wanted)
        return
    made_with = json.loads(path.read_text())
    changed = sorted(k for k in wanted.keys() | made_with.keys() if wanted.get(k) != made_with.get(k))
    if changed:
        details = ", ".join(f"{k}: {made_with.get(k)!r} -> {wanted.get(k)!r}" for k in changed)
        raise ValueError(f"{path.parent}: made with other preprocessing settings ({details}); delete that folder "
                         "or choose a new run_dir to preprocess with these")
