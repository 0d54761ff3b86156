"""The pipeline as a Python API: one `Experiment`, one method per stage. The `pipeline` CLI is a thin shell over it.

```python
from pipeline import Experiment

exp = Experiment.load("configs/demo.yaml", overrides={"train.epochs": 2})  # or a run folder
exp.run()                                  # data, preprocess, train, report; the report's path
exp.train(configuration="ws2-cpu-bs32")    # one stage at a time: data(), preprocess(), train(), report()
exp.submit()                               # `pipeline submit`: sbatch scripts, RUN_DIR/slurm/jobs.json
jobs = exp.submit(executor="submitit")     # the same jobs through submitit: handles for a notebook
jobs.report.result()                       # waits; `pipeline status RUN_DIR` lists them too
```
Importing this module imports neither torch nor Dask; each stage imports what it needs when it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.config import ExperimentConfig, load_config, load_experiment
from pipeline.layout import RunLayout

if TYPE_CHECKING:
    from pipeline.records import PreprocessSummary
    from pipeline.slurm.jobs import JobRecord
    from pipeline.slurm.submitit_jobs import SubmittedJobs

Overrides = Mapping[str, Any] | Sequence[str] | None
"""Config overrides: {dotted key: value}, or the CLI's `--set` strings ["train.epochs=2", ...]."""


def override_strings(overrides: Overrides) -> list[str]:
    """The `--set KEY=VALUE` strings of `overrides`; each value is written as YAML, which `--set` parses back."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise TypeError(f"overrides: expected a mapping or a list of KEY=VALUE strings, got the string {overrides!r}")
    if not isinstance(overrides, Mapping):
        return list(overrides)
    return [f"{key}={_yaml_value(value)}" for key, value in overrides.items()]


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"))
    return text.removesuffix("\n").removesuffix("\n...").strip()


@dataclasses.dataclass
class Experiment:
    """One experiment: its validated config and its run folder."""

    config: ExperimentConfig

    @classmethod
    def load(cls, target: str | Path, overrides: Overrides = None) -> Experiment:
        """An experiment YAML, or a run folder (its config.yaml, with run_dir where the folder is now)."""
        return cls(load_experiment(target, override_strings(overrides)))

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.config.run_dir)

    def save_config(self) -> Path:
        """Write RUN_DIR/config.yaml, the copy that training ranks and SLURM jobs read (`pipeline.run_config`:
        refused with other settings while another process holds a lock of the folder)."""
        from pipeline.run_config import save_run_config

        return save_run_config(self.config)

    def data(self) -> Path:
        """Build the dataset if the pipeline makes it, and write the manifest; its path."""
        from pipeline import stages

        self.save_config()
        return stages.data_stage(self.config)

    def preprocess(self) -> PreprocessSummary:
        """Chunk and compute features with Dask (needs the manifest: `data()` first)."""
        from pipeline import stages

        self.save_config()
        return stages.preprocess_stage(self.config)

    def train(self, force: bool = False, configuration: str | None = None, launcher: str = "torchrun") -> list[Path]:
        """Train every run of the sweep without metrics (or just `configuration`); their folders."""
        from pipeline import stages

        self.save_config()
        return stages.train_stage(self.config, force=force, configuration=configuration, launcher=launcher)

    def report(self) -> Path:
        """The scaling report of the run folder: report.md's path."""
        return report(self.layout.root)

    def run(self, force: bool = False) -> Path:
        """Every stage in order; the report's path."""
        from pipeline import stages

        return stages.run_all(self.config, force=force)

    def submit(self, dry_run: bool = False, local: bool = False, executor: str = "sbatch",
               cluster: str | None = None) -> list[JobRecord] | SubmittedJobs:
        """`pipeline submit`: the jobs as sbatch scripts (`executor="sbatch"`, run here with `local` or without
        SLURM; the job records), or through submitit (`executor="submitit"`; the job handles)."""
        if executor == "submitit":
            if dry_run:
                raise ValueError("dry_run: submitit writes its scripts as it submits; use the sbatch executor")
            return self.submit_with_submitit(cluster or ("local" if local else "slurm"))
        if executor != "sbatch":
            raise ValueError(f"executor {executor!r}: expected sbatch or submitit")
        from pipeline.slurm.submit import submit

        return submit(self.config, dry_run=dry_run, local=local)

    def submit_with_submitit(self, cluster: str = "slurm") -> SubmittedJobs:
        """The jobs of `submit` through submitit's `cluster` executor: `slurm`, or `local`/`debug` on this machine."""
        from pipeline.slurm import submitit_jobs

        return submitit_jobs.submit(self.config, cluster)

    def trained(self) -> Experiment:
        """The experiment as it was trained (RUN_DIR/config.yaml, run_dir where the folder is now), if it was."""
        if not self.layout.config.is_file():
            return self
        return Experiment(dataclasses.replace(load_config(self.layout.config), run_dir=self.config.run_dir))


def report(run_dir: str | Path, other: str | Path | Sequence[str | Path] | None = None,
           out: str | Path | None = None, combine: bool = False) -> Path:
    """The scaling report of a run folder; with `other`, the comparison of the two (written to `out`); with
    `combine`, one report of `run_dir` and every folder of `other` (one or a list), measured separately."""
    from pipeline import stages

    if combine:
        others = [other] if isinstance(other, (str, Path)) else list(other or [])
        return stages.report_stage(Path(run_dir), [Path(o) for o in others], Path(out) if out else None, combine=True)
    return stages.report_stage(Path(run_dir), Path(other) if other else None, Path(out) if out else None)
