"""The Dask cluster the preprocessing runs on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Executor

from pipeline.config import PreprocessConfig


@contextlib.contextmanager
def dask_executor(config: PreprocessConfig) -> Iterator[Executor]:
    """A LocalCluster of `config.workers` single-threaded worker processes, as a concurrent.futures executor.

    Single-threaded workers because each task already keeps its core busy (decode, FFT, PNG encoding), and
    processes rather than threads because much of that work holds the GIL.
    """
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=config.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        print(f"dask: {config.workers} workers, dashboard at {client.dashboard_link}", flush=True)
        yield client.get_executor(retries=2)
