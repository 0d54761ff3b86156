"""What a measurement ran on: every figure in a report carries this record."""

from __future__ import annotations

import datetime
import os
import platform
import socket
from importlib import metadata

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, which SLURM and containers narrow), not the host's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def visible_gpus() -> int:
    """GPUs this process can see (CUDA_VISIBLE_DEVICES narrows them); 0 without CUDA. Counting does not create a
    CUDA context."""
    return torch.cuda.device_count()


def versions() -> dict[str, str]:
    names = ["torch", "torchaudio", "numpy", "dask", "distributed"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return {"python": platform.python_version(), **found}


def describe_environment(device: torch.device, threads_per_rank: int, world_size: int) -> dict:
    cores = available_cores()
    record = {
        "hostname": socket.gethostname(), "cpu_model": cpu_model(), "cpu_cores_available": cores,
        "threads_per_rank": threads_per_rank, "launcher": "torchrun",
        "oversubscribed": device.type == "cpu" and threads_per_rank * world_size > cores,
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        # Runnable processes over the last minute, this job's ranks included: more than the ranks x threads means
        # something else shared the cores while this was measured.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "versions": versions(),
    }
    if device.type == "cuda":
        record["gpu_model"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
        # GPUs this rank can see: more ranks per node than this means ranks share a GPU, which the report flags.
        record["gpu_count"] = torch.cuda.device_count()
    return record
