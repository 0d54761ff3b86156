"""Whether a training folder's outputs may be reused (skipped, or resumed from): only if they were made with the
settings, features and code asked for now, as its fingerprint records."""

from __future__ import annotations

from pipeline import fingerprint
from pipeline.config import ExperimentConfig, to_dict
from pipeline.layout import RunLayout, TrainingPaths
from pipeline.sweep import SWEEP_ONLY, TrainingRun, repeat_seed


def features_digest(config: ExperimentConfig) -> str:
    """Digest of the features' fingerprint: what identifies the features every run of the sweep reads."""
    features = RunLayout(config.run_dir).features.fingerprint
    if not features.is_file():
        raise FileNotFoundError(f"{features}: the features carry no fingerprint (made by an older version of the "
                                "pipeline); preprocess them again into a new run_dir")
    return fingerprint.file_digest(features)


def run_fingerprint(config: ExperimentConfig, run: TrainingRun, features_sha256: str) -> dict:
    """What one run's outputs depend on: its training settings, the features it reads (`features_digest`), the
    code."""
    settings = {k: v for k, v in to_dict(config.train).items() if k not in SWEEP_ONLY}
    settings.update(world_size=run.world_size, device=run.device, batch_size=run.batch_size, repeat=run.repeat,
                    seed=repeat_seed(config.train.seed, run.repeat), backend=run.backend)
    return {"settings": settings, "features_sha256": features_sha256, "code": fingerprint.code_version()}


def check_reuse(paths: TrainingPaths, wanted: dict) -> None:
    """Refuse to skip or resume a run whose metrics or checkpoint were made otherwise than `wanted` says."""
    made = [path.relative_to(paths.folder).as_posix() for path in (paths.metrics, paths.checkpoint) if path.exists()]
    if not made:
        return
    start_over = "retrain it with --force, or choose a new run_dir"
    if not paths.fingerprint.is_file():
        raise fingerprint.StaleOutputs(f"{paths.folder}: {' and '.join(made)} carry no fingerprint (made by an older "
                                       f"version of the pipeline); {start_over}")
    fingerprint.check_or_record(paths.fingerprint, wanted, f"outputs of {paths.name}", start_over)
