"""sbatch scripts for the stages of one experiment, made from the hand-submittable templates in scripts/.

A generated script is its template with the #SBATCH lines the config asks for and the settings filled in, so what
`pipeline submit` sends is what a person would submit by hand. Values reach a script in two places: #SBATCH lines,
which sbatch parses itself (the values are checked tokens, see `config.check_slurm`, and paths are refused if they
hold a quote, a newline or a `%` pattern), and shell assignments, which are quoted with `shlex.quote`.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ExperimentConfig
from pipeline.train.launch import TrainingRun, plan

TEMPLATES = Path(__file__).parent / "scripts"
SETTINGS_MARK = "# pipeline: settings"
BODY_MARK = "# pipeline: body"


@dataclass(frozen=True)
class JobScript:
    stage: str
    """`preprocess`, `train` or `report`."""
    name: str
    """File stem of the script and its log, e.g. `train-ws2-cuda-bs32`."""
    configuration: str | None
    """The training configuration a train job runs."""
    text: str
    """The whole sbatch script."""
    log: str
    """Its output file, with `%j` standing for the job id."""


def slurm_device(requested: str, slurm_gpus_per_node: int) -> str:
    """Where ranks run under SLURM. Decided at submission, so the name of a configuration does not depend on the
    login node: `auto` means GPUs when the config asks SLURM for GPUs."""
    if requested != "auto":
        return requested
    return "cuda" if slurm_gpus_per_node > 0 else "cpu"


def experiment_scripts(config: ExperimentConfig, config_path: Path, python: str) -> list[JobScript]:
    """The preprocess job, one train job per run of the sweep (each repeat of a configuration is its own job, named
    `train-<configuration>-r<k>`, so repeats queue and fail independently), and the report job."""
    check_run_dir(config.run_dir)
    logs = Path(config.run_dir) / "slurm" / "logs"
    settings = {"CONFIG": str(config_path), "PYTHON": python}
    slurm = config.slurm
    jobs = [preprocess_job(config, settings, logs)]
    runs = plan(config, device_for=lambda requested, n: slurm_device(requested, slurm.gpus_per_node))
    for run in runs:
        jobs.append(_job(config, "train", run.name, {**settings, "CONFIGURATION": run.name}, logs,
                         train_resources(config, run)))
    jobs.append(_job(config, "report", None, settings, logs, ["--nodes=1", "--ntasks-per-node=1",
                                                              "--cpus-per-task=1", f"--time={slurm.time_report}"]))
    return jobs


PREPROCESS_TEMPLATES = {"local": "preprocess", "mpi": "preprocess-mpi", "slurm": "preprocess-jobqueue"}
"""The preprocessing job's template for each `preprocess.cluster`: `local` becomes a Dask scheduler and one worker
per CPU of the allocation's nodes, `mpi` one dask-mpi launch over its tasks, `slurm` a small job whose
SLURMCluster submits the worker jobs."""


def preprocess_job(config: ExperimentConfig, settings: dict[str, str], logs: Path) -> JobScript:
    slurm, cluster = config.slurm, config.preprocess.cluster
    if cluster == "slurm":
        resources = ["--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1"]
    elif cluster == "mpi":  # every task is one MPI rank: the scheduler, the client and one worker each
        resources = [f"--nodes={slurm.preprocess_nodes}", f"--ntasks-per-node={slurm.preprocess_cpus_per_node}",
                     "--cpus-per-task=1"]
    else:
        resources = [f"--nodes={slurm.preprocess_nodes}", "--ntasks-per-node=1",
                     f"--cpus-per-task={slurm.preprocess_cpus_per_node}"]
    return _job(config, "preprocess", None, settings, logs, [*resources, f"--time={slurm.time_preprocess}"],
                template=PREPROCESS_TEMPLATES[cluster])


def train_resources(config: ExperimentConfig, run: TrainingRun) -> list[str]:
    """Nodes, tasks and GPUs of one configuration: as few nodes as hold its ranks, the ranks spread evenly."""
    slurm = config.slurm
    per_node = slurm.gpus_per_node or slurm.cpu_ranks_per_node
    nodes = math.ceil(run.world_size / per_node)
    if run.world_size % nodes:
        raise ValueError(f"train.world_sizes: {run.world_size} ranks do not split evenly over {nodes} nodes of "
                         f"{per_node} (slurm.gpus_per_node / slurm.cpu_ranks_per_node)")
    options = [f"--nodes={nodes}", f"--ntasks-per-node={run.world_size // nodes}",
               f"--cpus-per-task={config.train.threads_per_rank}"]
    if slurm.gpus_per_node:
        options.append(f"--gres=gpu:{run.world_size // nodes}")
    options += [f"--time={slurm.time_train}", f"--signal=USR1@{slurm.signal_seconds}"]
    if config.train.requeue:
        options.append("--requeue")
    return options + ["--open-mode=append"]


def _job(config: ExperimentConfig, stage: str, configuration: str | None, settings: dict[str, str], logs: Path,
         resources: list[str], template: str | None = None) -> JobScript:
    name = f"{stage}-{configuration}" if configuration else stage
    log = str(logs / f"{name}-%j.out")
    slurm = config.slurm
    directives = [f"--job-name={_job_name(config.name, name)}", *resources, f"--output={_path_value(log)}"]
    directives += [f"--partition={slurm.partition}"] if slurm.partition else []
    directives += [f"--account={slurm.account}"] if slurm.account else []
    directives += [f"--mem={slurm.memory}"] if slurm.memory else []
    directives += slurm.extra_options
    template = template or stage
    origin = f"# Written by `pipeline submit` for experiment {config.name!r} from slurm/{template}.sbatch."
    text = render((TEMPLATES / f"{template}.sbatch").read_text(), directives, settings, origin)
    return JobScript(stage, name, configuration, text, log)


def render(template: str, directives: list[str], settings: dict[str, str], origin: str) -> str:
    """The template with its #SBATCH lines replaced by `directives`, its settings block by `settings`, and an
    `origin` comment (one line) under the shebang."""
    lines = template.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    start, body = lines.index(SETTINGS_MARK), lines.index(BODY_MARK)
    head = [line for line in lines[:start] if not line.startswith("#SBATCH")]
    out = head[:1] + [origin] + head[1:first] + [f"#SBATCH {d}" for d in directives] + head[first:]
    out += [SETTINGS_MARK] + [f"{key}={shlex.quote(value)}" for key, value in settings.items()]
    return "\n".join(out + lines[body:]) + "\n"


def _job_name(experiment: str, stage: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{experiment}-{stage}")[:100]


def _path_value(path: str) -> str:
    """A path in an #SBATCH line, double-quoted when it has spaces (sbatch strips the quotes)."""
    return f'"{path}"' if re.search(r"\s", path) else path


def check_run_dir(run_dir: str) -> None:
    """sbatch reads #SBATCH lines itself: a quote or newline would end the value, a % is a filename pattern."""
    bad = re.search(r'["\n\r%\\]', run_dir)
    if bad:
        raise ValueError(f"run_dir: {run_dir!r} has {bad[0]!r}, which an #SBATCH --output line cannot hold; "
                         "choose a run folder without quotes, newlines, % or backslashes to submit to SLURM")
