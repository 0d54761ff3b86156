"""Every path of a run folder, in one place: the stages, the launcher, SLURM and the report ask these objects, never
spell a file name themselves.

```
<run_dir>/
  config.yaml                the resolved config the run was made with (overrides applied)
  manifest.csv               one row per source file (data stage)
  features/                  preprocessing: shards, index.csv, labels.json, stats.json, summary.json,
                             rejects.csv, fingerprint.json
  images/, gallery/          spectrogram images (optional)
  configs/<run>/             one training run: metrics.json, steps.csv, model.pt, checkpoints/last.pt,
                             fingerprint.json, train.log, tensorboard/, confusion_test.*, ...
  slurm/                     submitted jobs: scripts/*.sbatch, logs/, jobs.json
  report.md, report.html, scaling.csv, scaling.json, scaling_repeats.csv, figures
```
Paths inside the folder are what a run folder records about itself (relative to the folder), so it can move.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FINGERPRINT = "fingerprint.json"
"""Name of the fingerprint file of the features and of each training run (see `pipeline.fingerprint`)."""


@dataclass(frozen=True)
class FeaturePaths:
    """The preprocessing outputs of one run folder."""

    folder: Path

    @property
    def index(self) -> Path:
        """One row per chunk: split, label, shard and row, image paths."""
        return self.folder / "index.csv"

    @property
    def labels(self) -> Path:
        return self.folder / "labels.json"

    @property
    def stats(self) -> Path:
        """Per-bin mean and std of the training split, per feature."""
        return self.folder / "stats.json"

    @property
    def summary(self) -> Path:
        return self.folder / "summary.json"

    @property
    def rejects(self) -> Path:
        return self.folder / "rejects.csv"

    @property
    def fingerprint(self) -> Path:
        return self.folder / FINGERPRINT

    @property
    def chunks_csv(self) -> Path:
        return self.folder / "chunks.csv"

    def shard(self, name: str) -> Path:
        return self.folder / name


@dataclass(frozen=True)
class TrainingPaths:
    """The outputs of one training run (`configs/<name>`): what the worker writes and the report reads."""

    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.json"

    @property
    def steps(self) -> Path:
        """Per-step timings (rank 0)."""
        return self.folder / "steps.csv"

    @property
    def model(self) -> Path:
        """Final weights for `pipeline evaluate` and `pipeline predict`."""
        return self.folder / "model.pt"

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def checkpoint(self) -> Path:
        """The checkpoint a resume starts from."""
        return self.checkpoints / "last.pt"

    @property
    def fingerprint(self) -> Path:
        return self.folder / FINGERPRINT

    @property
    def interrupted(self) -> Path:
        """Written when a signal stopped the run after checkpointing."""
        return self.folder / "interrupted.json"

    @property
    def skipped(self) -> Path:
        """Written instead of metrics when the launcher did not run the configuration, with the reason."""
        return self.folder / "skipped.json"

    @property
    def log(self) -> Path:
        return self.folder / "train.log"

    @property
    def tensorboard(self) -> Path:
        return self.folder / "tensorboard"

    @property
    def confusion_test(self) -> Path:
        """Stem of confusion_test.csv / .png."""
        return self.folder / "confusion_test"

    @property
    def evaluation_test(self) -> Path:
        return self.folder / "evaluation_test.json"


@dataclass(frozen=True)
class SlurmPaths:
    """What `pipeline submit` writes: the scripts, their logs, and the record of the submitted jobs."""

    folder: Path

    @property
    def scripts(self) -> Path:
        return self.folder / "scripts"

    def script(self, name: str) -> Path:
        return self.scripts / f"{name}.sbatch"

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    def log(self, name: str) -> Path:
        """Output file of job `name`, with `%j` for the job id."""
        return self.logs / f"{name}-%j.out"

    @property
    def jobs(self) -> Path:
        return self.folder / "jobs.json"


@dataclass(frozen=True)
class RunLayout:
    """The run folder of one experiment (config `run_dir`)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        """The resolved config; training ranks and SLURM jobs read this copy."""
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv"

    @property
    def features(self) -> FeaturePaths:
        return FeaturePaths(self.root / "features")

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def gallery(self) -> Path:
        return self.root / "gallery"

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    def training(self, name: str) -> TrainingPaths:
        return TrainingPaths(self.configs / name)

    def trainings(self) -> list[TrainingPaths]:
        """Every training folder there is, by name."""
        return [TrainingPaths(folder) for folder in sorted(self.configs.glob("*/"))]

    @property
    def slurm(self) -> SlurmPaths:
        return SlurmPaths(self.root / "slurm")

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"
