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
from pipeline.layout import RunLayout
from pipeline.sweep import TrainingRun, plan

TEMPLATES = Path(__file__).parent / "scripts"
SETTINGS_MARK = "# pipeline: settings"
BODY_MARK = "# pipeline: body"
SETUP_MARK = "# pipeline: setup (slurm.setup, verbatim)"


@dataclass(frozen=True)
class Resources:
    """What one job asks SLURM for; the sbatch scripts and the submitit executors are both made from this."""

    nodes: int
    ntasks_per_node: int
    cpus_per_task: int
    time: str
    """Time limit, [D-]HH:MM:SS."""
    gpus_per_node: int = 0
    """GPUs per node, asked for in the form `gpu_request` names; 0: none."""
    signal_seconds: int | None = None
    """`--signal=<signal>@N`: the warning before the time limit that makes training checkpoint and requeue."""
    requeue: bool = False
    append: bool = False
    """`--open-mode=append`: a requeued job's output goes on after the earlier runs'."""
    gpu_request: str = "gres"
    """`gres` (`--gres=gpu:K`), `gpus-per-node` (`--gpus-per-node=K`) or `gpus-per-task` (`--gpus-per-task=1`,
    one task per GPU: K tasks per node make K GPUs per node)."""
    signal: str = "USR1"
    """`USR1` or `USR2` (`slurm.signal`)."""
    exclusive: bool = False
    """`--exclusive`: the job's nodes are its own."""

    def options(self) -> list[str]:
        """The job's own #SBATCH options, in the order of the scripts."""
        options = [f"--nodes={self.nodes}", f"--ntasks-per-node={self.ntasks_per_node}",
                   f"--cpus-per-task={self.cpus_per_task}"]
        options += [self.gpu_option()] if self.gpus_per_node else []
        options.append(f"--time={self.time}")
        options += [f"--signal={self.signal}@{self.signal_seconds}"] if self.signal_seconds is not None else []
        options += ["--requeue"] if self.requeue else []
        options += ["--exclusive"] if self.exclusive else []
        return options + (["--open-mode=append"] if self.append else [])

    def gpu_option(self) -> str:
        """The job's GPUs in the form `gpu_request` names."""
        forms = {"gres": f"--gres=gpu:{self.gpus_per_node}", "gpus-per-node": f"--gpus-per-node={self.gpus_per_node}",
                 "gpus-per-task": "--gpus-per-task=1"}
        if self.gpu_request not in forms:
            raise ValueError(f"slurm.gpu_request: {self.gpu_request!r}, expected one of {', '.join(forms)}")
        return forms[self.gpu_request]


@dataclass(frozen=True)
class Job:
    """One job of a submitted experiment, before it is a script or a submitit submission."""

    stage: str
    """`preprocess`, `train` or `report`."""
    configuration: str | None
    """The training run a train job runs (a name of the sweep)."""
    resources: Resources
    template: str
    """The script template in scripts/ (without .sbatch)."""

    @property
    def name(self) -> str:
        """File stem of the script and its log, e.g. `train-ws2-cuda-bs32`."""
        return f"{self.stage}-{self.configuration}" if self.configuration else self.stage


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


def experiment_jobs(config: ExperimentConfig) -> list[Job]:
    """The preprocess job, one train job per run of the sweep (each repeat of a configuration is its own job, named
    `train-<configuration>-r<k>`, so repeats queue and fail independently), and the report job."""
    slurm = config.slurm
    runs = plan(config, device_for=lambda requested, n: slurm_device(requested, slurm.gpus_per_node))
    report = Resources(nodes=1, ntasks_per_node=1, cpus_per_task=1, time=slurm.time_report)
    return [preprocess_job(config),
            *(Job("train", run.name, train_resources(config, run), train_template(config)) for run in runs),
            Job("report", None, report, "report")]


def experiment_scripts(config: ExperimentConfig, config_path: Path, python: str) -> list[JobScript]:
    """The sbatch script of each job of `experiment_jobs`."""
    check_run_dir(config.run_dir)
    settings = {"CONFIG": str(config_path), "PYTHON": python}
    return [_script(config, job, {**settings, "CONFIGURATION": job.configuration} if job.configuration else settings)
            for job in experiment_jobs(config)]


PREPROCESS_TEMPLATES = {"local": "preprocess", "mpi": "preprocess-mpi", "slurm": "preprocess-jobqueue"}
"""The preprocessing job's template for each `preprocess.cluster`: `local` becomes a Dask scheduler and one worker
per CPU of the allocation's nodes (on nodes with GPUs, one of them per GPU pinned to it: `preprocess.node_workers`),
`mpi` one dask-mpi launch over its tasks, `slurm` a small job whose SLURMCluster submits the worker jobs."""


def preprocess_job(config: ExperimentConfig) -> Job:
    slurm, cluster = config.slurm, config.preprocess.cluster
    if cluster == "slurm":
        shape = (1, 1, 1)
    elif cluster == "mpi":  # every task is one MPI rank: the scheduler, the client and one worker each
        shape = (slurm.preprocess_nodes, slurm.preprocess_cpus_per_node, 1)
    else:
        shape = (slurm.preprocess_nodes, 1, slurm.preprocess_cpus_per_node)
    gpus = slurm.preprocess_gpus_per_node if cluster != "slurm" else 0  # dask-jobqueue's worker jobs ask for theirs
    resources = Resources(*shape, time=slurm.time_preprocess, gpus_per_node=gpus,
                          gpu_request="gpus-per-node" if slurm.gpu_request == "gpus-per-node" else "gres")
    return Job("preprocess", None, resources, PREPROCESS_TEMPLATES[cluster])


def train_resources(config: ExperimentConfig, run: TrainingRun) -> Resources:
    """Nodes, tasks and GPUs of one configuration: as few nodes as hold its ranks, the ranks spread evenly."""
    slurm = config.slurm
    per_node = slurm.gpus_per_node or slurm.cpu_ranks_per_node
    nodes = math.ceil(run.world_size / per_node)
    if run.world_size % nodes:
        raise ValueError(f"train.world_sizes: {run.world_size} ranks do not split evenly over {nodes} nodes of "
                         f"{per_node} (slurm.gpus_per_node / slurm.cpu_ranks_per_node)")
    tasks = run.world_size // nodes
    return Resources(nodes, tasks, rank_cpus(config), slurm.time_train,
                     gpus_per_node=tasks if slurm.gpus_per_node else 0, signal_seconds=slurm.signal_seconds,
                     requeue=config.train.requeue, append=True, gpu_request=slurm.gpu_request, signal=slurm.signal,
                     exclusive=slurm.exclusive)


def rank_cpus(config: ExperimentConfig) -> int:
    """`--cpus-per-task` of a training rank: its threads and its loader worker processes, or, for GPU ranks,
    `slurm.cpus_per_gpu_rank` when set."""
    if config.slurm.gpus_per_node and config.slurm.cpus_per_gpu_rank:
        return config.slurm.cpus_per_gpu_rank
    return config.train.threads_per_rank + config.train.loader_workers


def train_template(config: ExperimentConfig) -> str:
    """`train-requeue` when the batch script, not rank 0, requeues (`slurm.requeue_by: script`), else `train`."""
    return "train-requeue" if config.train.requeue and config.slurm.requeue_by == "script" else "train"


def job_name(config: ExperimentConfig, job: Job) -> str:
    """`--job-name`: the experiment's name and the job's, in characters every SLURM tool prints as they are."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{config.name}-{job.name}")[:100]


def shared_options(config: ExperimentConfig) -> list[str]:
    """The #SBATCH options every job of the experiment has: partition, account, memory, slurm.extra_options."""
    slurm = config.slurm
    options = [f"--partition={slurm.partition}"] if slurm.partition else []
    options += [f"--account={slurm.account}"] if slurm.account else []
    options += [f"--mem={slurm.memory}"] if slurm.memory else []
    return options + slurm.extra_options


def _script(config: ExperimentConfig, job: Job, settings: dict[str, str]) -> JobScript:
    log = str(RunLayout(config.run_dir).slurm.log(job.name))
    directives = [f"--job-name={job_name(config, job)}", *job.resources.options(), f"--output={_path_value(log)}",
                  *shared_options(config)]
    origin = f"# Written by `pipeline submit` for experiment {config.name!r} from slurm/{job.template}.sbatch."
    text = render((TEMPLATES / f"{job.template}.sbatch").read_text(), directives, settings, origin,
                  config.slurm.setup)
    return JobScript(job.stage, job.name, job.configuration, text, log)


def render(template: str, directives: list[str], settings: dict[str, str], origin: str,
           setup: list[str] | tuple[str, ...] = ()) -> str:
    """The template with its #SBATCH lines replaced by `directives`, its settings block by `settings`, an `origin`
    comment (one line) under the shebang, and the `setup` lines (`slurm.setup`, the user's shell code, verbatim)
    between the settings and the body."""
    lines = template.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    start, body = lines.index(SETTINGS_MARK), lines.index(BODY_MARK)
    head = [line for line in lines[:start] if not line.startswith("#SBATCH")]
    out = head[:1] + [origin] + head[1:first] + [f"#SBATCH {d}" for d in directives] + head[first:]
    out += [SETTINGS_MARK] + [f"{key}={shlex.quote(value)}" for key, value in settings.items()]
    if any(c in line for line in setup for c in "\n\r\0"):
        raise ValueError("slurm.setup: one shell line per entry, without newlines or NUL")
    out += [SETUP_MARK, *setup] if setup else []
    return "\n".join(out + lines[body:]) + "\n"


def _path_value(path: str) -> str:
    """A path in an #SBATCH line, double-quoted when it has spaces (sbatch strips the quotes)."""
    return f'"{path}"' if re.search(r"\s", path) else path


def check_run_dir(run_dir: str) -> None:
    """sbatch reads #SBATCH lines itself: a quote or newline would end the value, a % is a filename pattern."""
    bad = re.search(r'["\n\r%\\]', run_dir)
    if bad:
        raise ValueError(f"run_dir: {run_dir!r} has {bad[0]!r}, which an #SBATCH --output line cannot hold; "
                         "choose a run folder without quotes, newlines, % or backslashes to submit to SLURM")
