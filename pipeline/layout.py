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
  allreduce.json             measured all-reduce latency and bus bandwidth (train stage, pipeline bench --allreduce)
  report.md, report.html, scaling.csv, scaling.json, scaling_repeats.csv, figures
```
Paths inside the folder are what a run folder records about itself (relative to the folder), so it can move.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FINGERPRINT = "fingerprint.json"
"""Name of the fingerprint file of the features and of each training run (see `pipeline.fingerprint`)."""


class _Entry:
    """A file or folder at a fixed place inside the folder of the object it is read from."""

    def __init__(self, relative: str, doc: str = "") -> None:
        self.relative = relative
        self.__doc__ = doc or relative

    def __get__(self, owner: _Folder | None, cls: type) -> Path:
        if owner is None:
            return self  # type: ignore[return-value]  # the class attribute, e.g. for help()
        return owner.folder / self.relative


@dataclass(frozen=True)
class _Folder:
    folder: Path


class FeaturePaths(_Folder):
    """The preprocessing outputs of one run folder."""

    index = _Entry("index.csv", "One row per chunk: split, label, shard and row, image paths.")
    labels = _Entry("labels.json")
    stats = _Entry("stats.json", "Per-bin mean and std of the training split, per feature.")
    summary = _Entry("summary.json")
    rejects = _Entry("rejects.csv")
    fingerprint = _Entry(FINGERPRINT)
    chunks_csv = _Entry("chunks.csv")

    def shard(self, name: str) -> Path:
        return self.folder / name


class TrainingPaths(_Folder):
    """The outputs of one training run (`configs/<name>`): what the worker writes and the report reads."""

    metrics = _Entry("metrics.json")
    steps = _Entry("steps.csv", "Per-step timings (rank 0).")
    model = _Entry("model.pt", "Final weights for `pipeline evaluate` and `pipeline predict`.")
    checkpoints = _Entry("checkpoints")
    checkpoint = _Entry("checkpoints/last.pt", "The checkpoint a resume starts from.")
    fingerprint = _Entry(FINGERPRINT)
    interrupted = _Entry("interrupted.json", "Written when a signal stopped the run after checkpointing.")
    skipped = _Entry("skipped.json", "Written instead of metrics when the launcher did not run the configuration.")
    log = _Entry("train.log")
    tensorboard = _Entry("tensorboard")
    confusion_test = _Entry("confusion_test", "Stem of confusion_test.csv / .png.")
    evaluation_test = _Entry("evaluation_test.json")

    @property
    def name(self) -> str:
        return self.folder.name


class SlurmPaths(_Folder):
    """What `pipeline submit` writes: the scripts, their logs, and the record of the submitted jobs."""

    scripts = _Entry("scripts")
    logs = _Entry("logs")
    jobs = _Entry("jobs.json")
    submitit = _Entry("submitit", "What submitit writes per job (`Experiment.submit(executor=\"submitit\")`).")

    def script(self, name: str) -> Path:
        return self.scripts / f"{name}.sbatch"

    def log(self, name: str) -> Path:
        """Output file of job `name`, with `%j` for the job id."""
        return self.logs / f"{name}-%j.out"


class RunLayout(_Folder):
    """The run folder of one experiment (config `run_dir`)."""

    config = _Entry("config.yaml", "The resolved config; training ranks and SLURM jobs read this copy.")
    manifest = _Entry("manifest.csv")
    images = _Entry("images")
    gallery = _Entry("gallery")
    configs = _Entry("configs")
    report = _Entry("report.md")
    report_html = _Entry("report.html")
    preprocess_scaling = _Entry("preprocess_scaling.json", "Dask workers -> chunks/s, written by "
                                "benchmarks/preprocess_scaling.py --out and drawn by the report.")
    allreduce = _Entry("allreduce.json", "All-reduce latency and bus bandwidth per world size, written by the train "
                       "stage after its sweep or `pipeline bench --allreduce --out`; the report's projection uses it.")

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "folder", Path(root))

    @property
    def root(self) -> Path:
        return self.folder

    @property
    def features(self) -> FeaturePaths:
        return FeaturePaths(self.folder / "features")

    @property
    def slurm(self) -> SlurmPaths:
        return SlurmPaths(self.folder / "slurm")

    def training(self, name: str) -> TrainingPaths:
        return TrainingPaths(self.configs / name)

    def trainings(self) -> list[TrainingPaths]:
        """Every training folder there is, by name."""
        return [TrainingPaths(folder) for folder in sorted(self.configs.glob("*/"))]
