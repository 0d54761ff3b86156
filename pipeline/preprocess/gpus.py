"""Feature workers on GPUs: one Dask worker per GPU, each pinned to its own device, beside CPU workers for decoding.

Without this every worker process of a LocalCluster would open a CUDA context on GPU 0 (0.5-1 GB each; under the
EXCLUSIVE_PROCESS compute mode all but one fail). With GPUs visible and `preprocess.device` `auto` or `cuda`:

- G GPU workers, one per visible GPU, each started with `CUDA_VISIBLE_DEVICES` set to its own GPU (so it sees one
  device, `cuda:0`) and the Dask resource `GPU=1`;
- the other workers (at least one) are CPU workers, started with `CUDA_VISIBLE_DEVICES=""` (they can never touch a
  GPU) and the resource `DECODE=1`;
- each task is two Dask tasks: `decode_task` (decode, resample, chunk) asks for `DECODE`, `finish_task` (features,
  images, shard) for `GPU` and takes the decoded chunks from the CPU worker.

Without a visible GPU, or with `device: cpu`, nothing here is used: the LocalCluster is the plain one of
`preprocess.cluster`. The decisions are pure functions of the GPU count, so they are tested without a GPU.

Workers started elsewhere follow the same plan: the `dask worker` processes of slurm/preprocess.sbatch and of
dask-jobqueue's jobs through `pipeline.preprocess.node_workers` (one launcher per node, which reads that node's
GPUs), the ranks of dask-mpi through `rank_role`; the client then picks `SplitExecutor` when the workers it sees
report both resources (`splits_tasks`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass

GPU = "GPU"
"""Dask resource of a GPU worker; `finish_task` asks for one."""
DECODE = "DECODE"
"""Dask resource of a CPU worker; `decode_task` asks for one."""


@dataclass(frozen=True)
class WorkerPlan:
    """The workers of a LocalCluster: the CUDA_VISIBLE_DEVICES value of each GPU worker, and how many CPU workers."""

    gpu_devices: tuple[str, ...]
    cpu_workers: int

    @property
    def uses_gpus(self) -> bool:
        return bool(self.gpu_devices)


def visible_gpus(visible: str | None, count: int) -> list[str]:
    """What to set CUDA_VISIBLE_DEVICES to in each GPU worker: the entries of this process's own list (indices, UUIDs
    or MIG names, as SLURM or the user set it), else "0".."count-1"; `count` is the GPUs torch sees."""
    if visible is not None and visible.strip():
        return device_entries(visible)[:count]
    return [str(i) for i in range(count)]


def device_entries(visible: str) -> list[str]:
    """The entries of a CUDA_VISIBLE_DEVICES value, in order."""
    return [entry.strip() for entry in visible.split(",") if entry.strip()]


def torch_gpu_count() -> int:
    """The GPUs torch sees here, counted through NVML: CUDA is not initialised in this process."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def node_gpus(environ: Mapping[str, str], device: str) -> list[str]:
    """The GPUs the workers of one node may use, for workers started outside a LocalCluster (sbatch, dask-jobqueue,
    dask-mpi): the entries of CUDA_VISIBLE_DEVICES where it is set, as SLURM sets it on every node of a job with
    GPUs (`--gres=gpu:G`: the job's G GPUs; the local test cluster's fake ones too, which is why the list is
    trusted rather than counted); where it is unset, none inside a SLURM job (a job without GPUs owns none, even
    on a node that has some), else the GPUs torch counts here (through NVML, without initialising CUDA)."""
    if device == "cpu":
        return []
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = device_entries(visible)
        return [] if entries == ["NoDevFiles"] else entries  # SLURM's value for GPUs without device files
    if environ.get("SLURM_JOB_ID"):
        return []
    return visible_gpus(None, torch_gpu_count())


def rank_role(index: int, workers: int, gpus: list[str]) -> tuple[str | None, dict[str, int]]:
    """CUDA_VISIBLE_DEVICES (None: leave it as it is) and Dask resources of the `index`-th of the `workers` worker
    ranks of dask-mpi on one node that sees `gpus`. MPI fixes the number of ranks, so the plan fits them rather than
    `plan_workers`: one GPU worker per GPU while at least one rank is left to decode; a node with a single worker
    rank gives it its first GPU and both resources, so it still does both halves (and all of a task without a
    split). Without GPUs, no resources: the workers of today."""
    if not gpus:
        return None, {}
    if workers == 1:
        return gpus[0], {GPU: 1, DECODE: 1}
    if index < min(len(gpus), workers - 1):
        return gpus[index], {GPU: 1}
    return "", {DECODE: 1}


def resource_counts(workers: Mapping[str, Mapping]) -> tuple[int, int]:
    """(workers with a GPU resource, workers with a DECODE resource) of a scheduler's `workers` info."""
    def count(resource: str) -> int:
        return sum(1 for info in workers.values() if (info.get("resources") or {}).get(resource))

    return count(GPU), count(DECODE)


def splits_tasks(workers: Mapping[str, Mapping]) -> bool:
    """Whether to split tasks decode -> finish on these workers: only when some can take each half, or half of every
    task would wait for ever. Workers without resources take the tasks of an unsplit run like any other."""
    gpu, decode = resource_counts(workers)
    return gpu > 0 and decode > 0


def plan_workers(workers: int, device: str, gpus: list[str]) -> WorkerPlan:
    """`workers` CPU workers as today when features stay on the CPU (`device: cpu`, or no GPU); else one GPU worker
    per GPU and the rest of `workers`, at least one, as CPU workers for decoding."""
    if device == "cpu" or not gpus:
        return WorkerPlan((), workers)
    return WorkerPlan(tuple(gpus), max(1, workers - len(gpus)))


def worker_specs(plan: WorkerPlan, preload: list[str]) -> dict[str, dict]:
    """SpecCluster worker specs of `plan`: Nannies with one thread, their own environment and Dask resources."""
    from distributed import Nanny

    def spec(env: dict[str, str], resources: dict[str, int]) -> dict:
        return {"cls": Nanny, "options": {"nthreads": 1, "env": env, "resources": resources, "preload": preload}}

    specs = {f"gpu-{i}": spec({"CUDA_VISIBLE_DEVICES": device}, {GPU: 1})
             for i, device in enumerate(plan.gpu_devices)}
    specs.update({f"cpu-{i}": spec({"CUDA_VISIBLE_DEVICES": ""}, {DECODE: 1}) for i in range(plan.cpu_workers)})
    return specs


def local_plan(workers: int, device: str) -> WorkerPlan:
    """The plan for this machine. Counting GPUs goes through NVML and does not initialise CUDA in this process."""
    if device == "cpu":
        return WorkerPlan((), workers)
    return plan_workers(workers, device, visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch_gpu_count()))


class SplitExecutor(Executor):
    """The executor of a cluster with GPU workers: `submit` as Dask's own executor; `submit_task` runs one
    preprocessing task as decode (CPU worker) -> features and images (GPU worker)."""

    def __init__(self, client, retries: int):
        self._client = client
        self._retries = retries
        self._base = client.get_executor(retries=retries)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return self._base.submit(fn, *args, **kwargs)

    def submit_task(self, task, config, sample_rate: int, run_dir: str, root: str) -> Future:
        """Decode on a CPU worker, then features on a GPU worker; a task over `preprocess.task_megabytes` (one long
        file) runs whole on the GPU worker instead, streaming, because its decoded chunks would not fit in memory
        on their way from one worker to the other."""
        from pipeline.preprocess.task import decode_task, finish_task, run_task

        if task.input_bytes > config.task_megabytes * 1e6:
            done = self._client.submit(run_task, task, config, sample_rate, run_dir, root, resources={GPU: 1},
                                       retries=self._retries, pure=False)
        else:
            decoded = self._client.submit(decode_task, task, config, sample_rate, root, resources={DECODE: 1},
                                          retries=self._retries, pure=False)
            done = self._client.submit(finish_task, decoded, task, config, sample_rate, run_dir,
                                       resources={GPU: 1}, retries=self._retries, pure=False)
        result: Future = Future()

        def copy(finished) -> None:
            try:
                result.set_result(finished.result())
            except BaseException as err:  # noqa: BLE001 - handed on to whoever waits on the result
                result.set_exception(err)

        done.add_done_callback(copy)
        return result

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._base.shutdown(wait=wait)


def check_pool(executor: Executor | None, device: str) -> None:
    """Refuse a fork-context process pool when its workers may choose CUDA and this process has initialised CUDA:
    a forked child cannot use CUDA then ("Cannot re-initialize CUDA in forked subprocess")."""
    context = getattr(executor, "_mp_context", None)
    if context is None or device == "cpu" or context.get_start_method() != "fork":
        return
    import torch

    if torch.cuda.is_initialized():
        raise RuntimeError(f"preprocess: a fork-context process pool cannot run features on the GPU (preprocess."
                           f"device: {device}) after this process initialised CUDA; make the pool with "
                           "mp_context=multiprocessing.get_context('spawn'), or set preprocess.device: cpu")
