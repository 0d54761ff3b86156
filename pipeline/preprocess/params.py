"""What a features folder was made with, so a rerun never mixes shards of two settings, manifests or code versions.

A rerun skips complete shards; that is only right if they were made the way the config now asks, from the same
manifest (task k is the k-th n files of it in `run.make_tasks`' fixed order), by the same code.
features/fingerprint.json records the settings that shape the outputs (`image_layout` among them), a digest of
manifest.csv and the code version (see pipeline.fingerprint) on the first run; every later run compares. Settings
that only decide where or how fast the work runs (workers, cluster, device) are left out, so resuming on other
hardware is fine; the manifest names files relative to the data root, so moving the data is fine too.
"""

from __future__ import annotations

from pipeline.config import ExperimentConfig, to_dict
from pipeline.fingerprint import check_or_record as check_fingerprint
from pipeline.fingerprint import code_version, file_digest
from pipeline.layout import RunLayout

EXECUTION_ONLY = {"workers", "scheduler_file", "cluster", "slurm_cluster", "interface", "device"}
"""PreprocessConfig keys that do not change what is written."""


def output_settings(config: ExperimentConfig) -> dict:
    settings = {k: v for k, v in to_dict(config.preprocess).items() if k not in EXECUTION_ONLY}
    return {"sample_rate": config.data.sample_rate, **settings}


def features_fingerprint(config: ExperimentConfig) -> dict:
    manifest = RunLayout(config.run_dir).manifest
    return {"settings": output_settings(config), "manifest_sha256": file_digest(manifest), "code": code_version()}


def check_or_record(config: ExperimentConfig) -> None:
    """Record the fingerprint of a new features folder; refuse to continue one made otherwise."""
    features = RunLayout(config.run_dir).features
    check_fingerprint(features.fingerprint, features_fingerprint(config), "features",
                      f"delete {features.folder} (or choose a new run_dir) to preprocess again with these")
