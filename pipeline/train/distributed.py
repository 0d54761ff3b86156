"""Who this process is in the job: rank, local rank and world size from torchrun, horovodrun or srun.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT itself, horovodrun HOROVOD_RANK and its
siblings. Under `srun` (one task per GPU, no torchrun) the same facts come from SLURM's variables, and the master
is the first host of the allocation.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class DistributedEnv:
    rank: int
    """Global rank of this process."""
    local_rank: int
    """Rank on this node; selects the GPU."""
    world_size: int
    """Number of ranks in the job."""
    local_world_size: int
    """Ranks on this node; world_size // local_world_size is the node count."""
    launcher: str
    """`torchrun`, `horovodrun` or `srun`, recorded with every measurement."""
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def from_environment(env: Mapping[str, str] | None = None) -> DistributedEnv:
    """Read torchrun's variables when present, else horovodrun's, else SLURM's (srun), else a single process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return DistributedEnv(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), world,
                              int(env.get("LOCAL_WORLD_SIZE", world)), "torchrun",
                              env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", DEFAULT_MASTER_PORT)))
    if "HOROVOD_RANK" in env and "HOROVOD_SIZE" in env:
        world = int(env["HOROVOD_SIZE"])
        return DistributedEnv(int(env["HOROVOD_RANK"]), int(env.get("HOROVOD_LOCAL_RANK", 0)), world,
                              int(env.get("HOROVOD_LOCAL_SIZE", world)), "horovodrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES", 1))
        world = int(env.get("SLURM_STEP_NUM_TASKS") or env["SLURM_NTASKS"])
        # A step may use fewer nodes than the job; its own node list names the master.
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "127.0.0.1")
        return DistributedEnv(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), world,
                              world // nodes, "srun", first_host(nodelist),
                              int(env.get("MASTER_PORT", master_port_for(env.get("SLURM_JOB_ID", "")))))
    return DistributedEnv(0, 0, 1, 1, "single process")


def master_port_for(job_id: str) -> int:
    """A port derived from the job id, so two jobs sharing a node do not collide on the default port."""
    return 20000 + int(job_id) % 20000 if job_id.isdigit() else DEFAULT_MASTER_PORT


def first_host(nodelist: str) -> str:
    """First hostname of a SLURM node list such as `gpu[03-05,07],cpu1`; scontrol expands it when available."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    first = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not first:
        return nodelist
    prefix, ranges = first.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def export_rendezvous(dist_env: DistributedEnv) -> None:
    """Set the variables torch.distributed's env:// rendezvous reads (torchrun has already set them)."""
    os.environ.setdefault("MASTER_ADDR", dist_env.master_addr)
    os.environ.setdefault("MASTER_PORT", str(dist_env.master_port))
    os.environ.setdefault("RANK", str(dist_env.rank))
    os.environ.setdefault("WORLD_SIZE", str(dist_env.world_size))
    os.environ.setdefault("LOCAL_RANK", str(dist_env.local_rank))



def device_index(local_rank: int, local_world_size: int, visible_gpus: int) -> int:
    """The CUDA device index of this rank among the GPUs it sees.

    A rank that sees every GPU of its node (torchrun, `srun` with `--gres=gpu:K` or `--gpus-per-node`) takes the
    one of its local rank; a rank bound to one GPU (`--gpus-per-task=1`, `--gpu-bind=single:1`: CUDA_VISIBLE_DEVICES
    names one device) takes device 0. Any other count would put two ranks on one GPU or pick an arbitrary one, which
    NCCL refuses ("Duplicate GPU detected"), so it is refused here, with the numbers.
    """
    if visible_gpus == local_world_size and 0 <= local_rank < visible_gpus:
        return local_rank
    if visible_gpus == 1:
        return 0
    raise RuntimeError(
        f"rank with local rank {local_rank} of {local_world_size} ranks on this node sees {visible_gpus} GPU(s) "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}): a CUDA rank needs either "
        "one GPU of its own (--gpus-per-task=1) or all of its node's GPUs, one per rank (--gres=gpu:K, "
        "--gpus-per-node=K with K ranks per node)")


def failure_summary(log: str, limit: int = 20) -> str:
    """The lines of a training log that say which rank failed and why: each rank's "failed" line and the last line
    of each traceback (the exception), from the last attempt (`--- ` line) on; empty if there are none.

    torch prefixes a rank's traceback lines with `[rankN]: `, which is kept, so every exception names its rank."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("--- ")]
    lines = lines[starts[-1] + 1:] if starts else lines
    found, in_traceback = [], False
    for i, line in enumerate(lines):
        text = re.sub(r"^\[rank\d+\]: ", "", line)
        if re.match(r"rank \d+ \(pid \d+\) failed", line):
            found.append(line)
        elif text.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and text and not text[0].isspace():
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if not re.sub(r"^\[rank\d+\]: ", "", nxt).startswith(" "):  # the exception line ends the traceback
                found.append(line)
                in_traceback = False
    return "\n".join(found[:limit])
