"""Starting Horovod ranks: horovodrun on this machine, srun inside a SLURM allocation.

On one machine `horovodrun --gloo` starts the ranks, as torchrun does for DDP. Under SLURM srun starts them (one task
per rank, as for DDP), and Horovod's gloo rendezvous, which horovodrun would otherwise run, runs here in the
launching process for as long as the ranks do (`srun_rendezvous`): srun's tasks then find it through the variables
it returns and place themselves from SLURM's (`horovod_backend.export_slot`). That needs no MPI and no ssh.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def horovodrun_command(world_size: int, worker: list[str]) -> list[str]:
    """horovodrun starting `world_size` ranks of `worker` (python's arguments) on this machine over gloo.

    Its own rendezvous timeout (`--gloo-timeout-seconds`, 30 s by default) covers the ranks' start, which imports
    torch and reads the features: on a busy 2-core machine that can take longer, so it gets 300 s."""
    horovodrun = Path(sys.executable).with_name("horovodrun")
    return [str(horovodrun), "-np", str(world_size), "-H", f"localhost:{world_size}", "--gloo",
            "--gloo-timeout-seconds", "300", sys.executable, *worker]


def slot_plan(world_size: int, nodes: int) -> str:
    """Horovod's host list for `world_size` ranks on `nodes` nodes, consecutive ranks per node (srun's block
    distribution), named as `export_slot` names them: `node0:2,node1:2`."""
    if world_size % nodes:
        raise ValueError(f"backend horovod under srun: {world_size} ranks do not divide evenly over {nodes} nodes; "
                         "choose a world size that is a multiple of the nodes (slurm.gpus_per_node or "
                         "slurm.cpu_ranks_per_node)")
    return ",".join(f"node{i}:{world_size // nodes}" for i in range(nodes))


@contextmanager
def srun_rendezvous(world_size: int, nodes: int) -> Iterator[dict[str, str]]:
    """Horovod's gloo rendezvous server for one srun step of `world_size` ranks on `nodes` nodes, running while
    the block runs; yields the variables the ranks need to find it. The address is this host's (the batch
    script's node); the network interface is HOROVOD_GLOO_IFACE if set (e.g. `export HOROVOD_GLOO_IFACE=ib0` in
    slurm.setup), else the one holding that address."""
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
    from horovod.runner.http.http_server import RendezvousServer

    address = _host_address()
    server = RendezvousServer(verbose=0)
    port = server.start()
    try:
        server.init(get_host_assignments(parse_hosts(slot_plan(world_size, nodes)), world_size))
        yield {"HOROVOD_GLOO_RENDEZVOUS_ADDR": address, "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port),
               "HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo",
               "HOROVOD_GLOO_IFACE": os.environ.get("HOROVOD_GLOO_IFACE") or _interface_of(address)}
    finally:
        server.stop()


def _host_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _interface_of(address: str) -> str:
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(entry.address == address for entry in addresses):
            return name
    return "lo"
