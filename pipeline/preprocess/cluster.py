"""The Dask cluster the preprocessing runs on: a LocalCluster, or a running cluster found through its scheduler
file (slurm/preprocess.sbatch starts one across the nodes of its allocation)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path

from pipeline.config import PreprocessConfig

CONNECT_TIMEOUT_S = 300
"""How long to wait for a scheduler file and its workers: workers on other nodes can take a while to start."""


@contextlib.contextmanager
def dask_executor(config: PreprocessConfig) -> Iterator[Executor]:
    """Dask as a concurrent.futures executor whose failed tasks are retried (a worker that dies loses its tasks).

    The LocalCluster has `config.workers` single-threaded worker processes, because each task already keeps its
    core busy (decode, FFT, PNG encoding), and processes rather than threads because much of that work holds the GIL.
    """
    from dask.distributed import Client, LocalCluster

    if config.scheduler_file:
        with Client(scheduler_file=_wait_for(Path(config.scheduler_file)), timeout=CONNECT_TIMEOUT_S) as client:
            client.wait_for_workers(config.workers, timeout=CONNECT_TIMEOUT_S)
            print(f"dask: attached to {client.scheduler.address} with {len(client.scheduler_info()['workers'])} "
                  f"workers, dashboard at {client.dashboard_link}", flush=True)
            yield client.get_executor(retries=2)
        return
    with LocalCluster(n_workers=config.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        print(f"dask: {config.workers} workers, dashboard at {client.dashboard_link}", flush=True)
        yield client.get_executor(retries=2)


def _wait_for(scheduler_file: Path) -> str:
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while not scheduler_file.is_file():
        if time.monotonic() > deadline:
            raise RuntimeError(f"preprocess.scheduler_file: {scheduler_file} did not appear within "
                               f"{CONNECT_TIMEOUT_S} s; is the Dask scheduler running?")
        time.sleep(0.5)
    return str(scheduler_file)
