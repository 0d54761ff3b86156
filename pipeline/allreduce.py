"""`pipeline bench --allreduce`: all-reduce latency and bus bandwidth per world size and message size, measured here.

The report's projection needs the link the ranks all-reduce over. Assuming a number (`report.interconnect_gbit_s`)
says nothing about latency or about what the fabric really gives, so this measures it with the method of
nccl-tests (PERFORMANCE.md there):

- per message size, `warmup` all-reduces, then `repeats` timed runs of `iterations` back-to-back all-reduces (sum of
  float32 zeros, so no value ever turns inf or denormal); a run's time per all-reduce is the slowest rank's (the
  step waits for the slowest; nccl-tests averages the ranks by default);
- algorithm bandwidth = bytes / time; bus bandwidth = algbw x 2(N-1)/N, the bytes a ring all-reduce moves through
  each rank's link per second, which is comparable with the link's hardware speed and across world sizes;
- per world size, a fit of t = a_N + m x 2(N-1)/N / B_N to the median times over the message sizes, weighted by
  1/t^2 so that the small messages (latency) and the large ones (bandwidth) count alike: latency a_N (s) and bus
  bandwidth B_N (bytes/s), which `pipeline.report.interconnect` reads.

Backends: gloo on CPU (TCP over loopback on one host), NCCL on CUDA with one GPU per rank. Started alone it spawns
each world size's ranks itself on 127.0.0.1; started as one rank of a torchrun or srun job (RANK/WORLD_SIZE or
SLURM_PROCID/SLURM_NTASKS with more than one rank) it measures at that job's world size and rank 0 writes the JSON:
`srun -N 2 --ntasks-per-node 4 pipeline bench --allreduce --out RUN_DIR/allreduce.json`.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from pipeline.bench import _cpu_seconds, busy_record, hardware, machine
from pipeline.io import atomic_write_json
from pipeline.layout import RunLayout
from pipeline.train.distributed import DistributedEnv, device_index, export_rendezvous, from_environment
from pipeline.train.environment import available_cores

KIND = "pipeline-bench-allreduce"
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}
KiB, MiB = 2**10, 2**20
DEFAULT_SIZES = [4 * KiB * 4**k for k in range(8)]
"""4 KiB, 16 KiB, ..., 64 MiB: DDP's 1 MiB first bucket and 25 MiB buckets sit inside the range."""
RENDEZVOUS_TIMEOUT = datetime.timedelta(minutes=5)
"""A rank whose peers never come (SLURM_NTASKS counts tasks an sbatch script started without srun never runs)
fails after this rather than torch's 30 minutes."""


@dataclass(frozen=True)
class Settings:
    sizes: list[int]
    """Message sizes in bytes (float32 elements: multiples of 4)."""
    repeats: int = 5
    warmup: int = 2
    """All-reduces before the timed runs of each size (connection set-up, NCCL's first-call costs)."""
    target_bytes: int = 128 * MiB
    """Bytes one timed run moves: iterations = target_bytes / size, within min_iterations..max_iterations."""
    min_iterations: int = 5
    max_iterations: int = 100

    def iterations(self, size: int) -> int:
        return max(self.min_iterations, min(self.max_iterations, self.target_bytes // size))


DEFAULT = Settings(DEFAULT_SIZES)
QUICK = Settings([4 * KiB, 64 * KiB, 1 * MiB, 16 * MiB], repeats=3, warmup=1, target_bytes=32 * MiB,
                 min_iterations=3, max_iterations=50)
"""What the train stage measures after its sweep: seconds per world size."""


def bus_factor(world_size: int) -> float:
    """2(N-1)/N: the share of the message a ring all-reduce sends (and receives) through each rank's link."""
    return 2 * (world_size - 1) / world_size


def parse_size(text: str) -> int:
    """`4096`, `4K`, `1M`, `1G` (powers of 1024) -> bytes, a positive multiple of 4 (float32 elements)."""
    number = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": KiB, "M": MiB, "G": 2**30}.get(number[-1:], 1)
    value = int(float(number[:-1] if scale > 1 else number) * scale)
    if value <= 0 or value % 4:
        raise ValueError(f"message size {text!r}: needs a positive multiple of 4 bytes (float32 elements)")
    return value


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_size(size: int, s: Settings, device: torch.device) -> list[float]:
    """Seconds per all-reduce of `size` bytes, one per repeat: the slowest rank's mean over `iterations` calls."""
    tensor = torch.zeros(size // 4, dtype=torch.float32, device=device)
    for _ in range(s.warmup):
        dist.all_reduce(tensor)
    _sync(device)
    iterations, times = s.iterations(size), []
    for _ in range(s.repeats):
        dist.barrier()
        _sync(device)
        started = time.perf_counter()
        for _ in range(iterations):
            dist.all_reduce(tensor)
        _sync(device)
        slowest = torch.tensor([(time.perf_counter() - started) / iterations], dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        times.append(slowest.item())
    return times


def _spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def result_row(world_size: int, nodes: int, size: int, iterations: int, times: list[float]) -> dict:
    """One (world size, bytes) entry of the JSON: time and both bandwidths with their spread over the repeats (the
    bandwidths of the slowest, median and fastest time)."""
    spread = _spread(times)
    algbw = {"min": size / spread["max"], "median": size / spread["median"], "max": size / spread["min"]}
    return {"world_size": world_size, "nodes": nodes, "bytes": size, "iterations": iterations,
            "repeats": len(times), "time_s": {**spread, "values": times}, "algbw_bytes_s": algbw,
            "busbw_bytes_s": {k: v * bus_factor(world_size) for k, v in algbw.items()}}


def measure_ranks(env: DistributedEnv, s: Settings, device_type: str, init_method: str = "env://") -> list[dict]:
    """Join the group of `env` (one GPU per rank on CUDA), time every size, leave; every rank returns the rows."""
    device = torch.device("cpu")
    if device_type == "cuda":
        device = torch.device("cuda", device_index(env.local_rank, env.local_world_size, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    dist.init_process_group(BACKENDS[device_type], init_method=init_method, rank=env.rank,
                            world_size=env.world_size, timeout=RENDEZVOUS_TIMEOUT)
    try:
        return [result_row(env.world_size, env.nodes, size, s.iterations(size), time_size(size, s, device))
                for size in s.sizes]
    finally:
        dist.destroy_process_group()


def _spawned_rank(rank: int, world_size: int, port: int, s: Settings, device_type: str, out: str) -> None:
    env = DistributedEnv(rank, rank, world_size, world_size, "spawn")
    rows = measure_ranks(env, s, device_type, f"tcp://127.0.0.1:{port}")
    if rank == 0:
        Path(out).write_text(json.dumps(rows))


def free_port() -> int:
    """A port no process listens on now (the OS picks it); the ranks' rendezvous binds it moments later."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_world(world_size: int, s: Settings, device_type: str) -> list[dict]:
    """Start `world_size` ranks on this host (fresh interpreters: no CUDA or thread state inherited) and return
    rank 0's rows."""
    with tempfile.TemporaryDirectory(prefix="allreduce-") as scratch:
        out = Path(scratch) / "rows.json"
        mp.start_processes(_spawned_rank, args=(world_size, free_port(), s, device_type, str(out)),
                           nprocs=world_size, join=True, start_method="spawn")
        return json.loads(out.read_text())


def feasible(world_sizes: list[int], device_type: str) -> tuple[list[int], list[dict]]:
    """(world sizes this host can run, the others with their reason): one GPU per NCCL rank, one core per gloo
    rank (more ranks than cores would time the scheduler's time-slicing, not the link)."""
    have = torch.cuda.device_count() if device_type == "cuda" else available_cores()
    unit, what = ("GPU", "GPU(s)") if device_type == "cuda" else ("core", "CPU core(s) available to this process")
    run, skipped = [], []
    for n in sorted(set(world_sizes)):
        if n < 2:
            skipped.append({"world_size": n, "reason": "an all-reduce over one rank moves nothing"})
        elif n > have:
            skipped.append({"world_size": n, "reason": f"{n} ranks need one {unit} each, this host has {have} {what}"})
        else:
            run.append(n)
    return run, skipped


def fit(world_size: int, rows: list[dict]) -> dict:
    """Latency a_N and bus bandwidth B_N of t = a_N + m x 2(N-1)/N / B_N over the median times of `rows`, by least
    squares weighted by 1/t^2 (relative residuals: a plain fit would let the largest messages set the latency).
    A negative intercept (latency below the timer's resolution) is set to 0 and the slope refitted through 0."""
    x = np.array([r["bytes"] * bus_factor(world_size) for r in rows])
    y = np.array([r["time_s"]["median"] for r in rows])
    if len(x) < 2:
        raise ValueError(f"world size {world_size}: a latency and a bandwidth need at least 2 message sizes")
    (latency, slope), *_ = np.linalg.lstsq(np.stack([1 / y, x / y], axis=1), np.ones_like(y), rcond=None)
    if latency < 0:
        latency, slope = 0.0, np.sum(x / y) / np.sum((x / y) ** 2)
    if slope <= 0:
        raise ValueError(f"world size {world_size}: times do not grow with message size; measure larger messages")
    residual = float(np.max(np.abs(latency + slope * x - y) / y))
    return {"world_size": world_size, "latency_s": float(latency), "bus_bandwidth_bytes_s": float(1 / slope),
            "sizes": len(rows), "max_relative_residual": residual}


def fits(results: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the fit per world size, the world sizes whose times admit none, with why): the measurement is kept either
    way, and the report reads only the fits."""
    found, failed = [], []
    for n in sorted({r["world_size"] for r in results}):
        try:
            found.append(fit(n, [r for r in results if r["world_size"] == n]))
        except ValueError as err:
            failed.append({"world_size": n, "reason": str(err)})
    return found, failed


METHOD = [
    "time: per message size, warm-up all-reduces, then repeats of back-to-back all-reduces (sum of float32 "
    "zeros); a repeat's time per all-reduce is the slowest rank's mean over its iterations (nccl-tests averages "
    "the ranks instead)",
    "algbw = bytes / time; busbw = algbw x 2(N-1)/N (nccl-tests): the bytes through each rank's link per second of "
    "a ring all-reduce, comparable with the link's speed; min/median/max over the repeats",
    "fit per world size: t = latency + bytes x 2(N-1)/N / bus bandwidth, least squares weighted by 1/t^2 over the "
    "median times of every message size",
]


def _notes(device_type: str, nodes: int) -> list[str]:
    if device_type == "cpu" and nodes == 1:
        return ["gloo between processes of one host goes through TCP over loopback: this measures the host's "
                "memory and network stack, not a network link between nodes"]
    if nodes == 1:
        return ["every rank on one node: NVLink/PCIe between its GPUs, not the network between nodes"]
    return []


def build_record(device_type: str, launcher: str, s: Settings, results: list[dict], skipped: list[dict],
                 clock: _Clock) -> dict:
    nodes = max((r["nodes"] for r in results), default=1)
    found, failed = fits(results)
    return {"kind": KIND, "device": device_type, "backend": BACKENDS[device_type], "launcher": launcher,
            "hardware": hardware(device_type), "settings": {**asdict(s), "dtype": "float32", "op": "sum",
                                                            "iterations": {n: s.iterations(n) for n in s.sizes}},
            "method": METHOD, "results": results, "fits": found, "unfitted": failed, "skipped": skipped,
            "notes": _notes(device_type, nodes), "measured_at": clock.measured_at, "busy": clock.busy()}


class _Clock:
    """When the measurement started, and how busy the machine was from then on (`pipeline.bench.busy_record`)."""

    def __init__(self) -> None:
        self.before = (list(os.getloadavg()), _cpu_seconds_with_ranks())
        self.started = time.perf_counter()
        self.measured_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

    def busy(self) -> dict:
        return busy_record(self.before, _cpu_seconds_with_ranks(), time.perf_counter() - self.started)


def _cpu_seconds_with_ranks() -> tuple[float, float] | None:
    """`pipeline.bench._cpu_seconds` with the spawned ranks (reaped children) counted as this process's own."""
    found = _cpu_seconds()
    if found is None:
        return None
    times = os.times()
    return found[0], found[1] + times.children_user + times.children_system


def _resolve(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def run_local(world_sizes: list[int], s: Settings, device: str = "auto") -> dict:
    """Measure at each world size this host can run, spawning its ranks; returns the record (nothing written)."""
    device_type, clock = _resolve(device), _Clock()
    run, skipped = feasible(world_sizes, device_type)
    results = [row for n in run for row in spawn_world(n, s, device_type)]
    return build_record(device_type, "spawn", s, results, skipped, clock)


def run_in_job(env: DistributedEnv, s: Settings, device: str = "auto") -> dict | None:
    """This process is one rank of a torchrun/srun job: measure at its world size; rank 0 gets the record."""
    device_type, clock = _resolve(device), _Clock()
    export_rendezvous(env)
    results = measure_ranks(env, s, device_type)
    if env.rank != 0:
        return None
    return build_record(device_type, env.launcher, s, results, [], clock)


def default_world_sizes(device_type: str) -> list[int]:
    """2 and 4, and on CUDA every power of two up to the GPUs seen (2, 4, 8 on an 8-GPU node)."""
    gpus = torch.cuda.device_count() if device_type == "cuda" else 0
    return sorted({2, 4} | {2**k for k in range(1, gpus.bit_length())})


def _bytes(n: int) -> str:
    for unit, scale in (("G", 2**30), ("M", MiB), ("K", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def fit_text(f: dict) -> str:
    return (f"{f['world_size']} ranks: latency {f['latency_s'] * 1e6:.1f} us, bus bandwidth "
            f"{f['bus_bandwidth_bytes_s'] / 1e9:.3f} GB/s")


def table(record: dict) -> str:
    hw = record["hardware"]
    lines = [f"pipeline bench --allreduce on {hw['hostname']}: {record['backend']} on {record['device']}, "
             f"{machine(hw)}",
             f"{'ranks':>5} {'bytes':>6} {'time us':>10} {'algbw GB/s':>11} {'busbw GB/s':>11} busbw min-max"]
    for r in record["results"]:
        bus = r["busbw_bytes_s"]
        lines.append(f"{r['world_size']:>5} {_bytes(r['bytes']):>6} {r['time_s']['median'] * 1e6:>10.1f} "
                     f"{r['algbw_bytes_s']['median'] / 1e9:>11.3f} {bus['median'] / 1e9:>11.3f} "
                     f"{bus['min'] / 1e9:.3f}-{bus['max'] / 1e9:.3f}")
    lines += [f"fit {fit_text(f)} (largest relative residual {f['max_relative_residual']:.0%})"
              for f in record["fits"]]
    lines += [f"{u['world_size']} ranks not fitted: {u['reason']}" for u in record["unfitted"]]
    lines += [f"{s['world_size']} ranks skipped: {s['reason']}" for s in record["skipped"]]
    lines += [f"- {note}" for note in record["notes"]]
    return "\n".join(lines)


def run_allreduce(out: Path | None, world_sizes: list[int] | None, s: Settings, device: str = "auto") -> dict | None:
    """Measure (as one rank of a torchrun/srun job, or spawning the ranks here), print the table and write the
    JSON to `out` (default results/allreduce-<host>.json); returns the record (None on ranks other than 0)."""
    env = from_environment()
    if env.world_size > 1:
        record = run_in_job(env, s, device)
        if record is None:
            return None
        if world_sizes and world_sizes != [env.world_size]:
            record["notes"].append(f"--world-sizes {world_sizes} ignored: one rank of a {env.launcher} job of "
                                   f"{env.world_size} ranks measures at that world size")
    else:
        record = run_local(world_sizes or default_world_sizes(_resolve(device)), s, device)
    if not record["results"]:
        raise RuntimeError("nothing measured: " + "; ".join(f"{x['world_size']} ranks: {x['reason']}"
                                                            for x in record["skipped"]))
    out = Path(out) if out is not None else Path("results") / f"allreduce-{socket.gethostname()}.json"
    atomic_write_json(out, record)
    print(table(record))
    print(f"bench: -> {out}", flush=True)
    return record


def measure_for_run(run_dir: Path, device: str, world_sizes: list[int]) -> Path | None:
    """RUN_DIR/allreduce.json at `world_sizes` above 1 on `device`, with the QUICK settings, for the train stage;
    an existing file is kept (a rerun resumes, it never re-measures). None when there is nothing to measure or
    the measurement failed: training's results stand without it, and the report then assumes the link."""
    path = RunLayout(run_dir).allreduce
    sizes = sorted({n for n in world_sizes if n > 1})
    if not sizes:
        return None
    if path.exists():
        print(f"allreduce: {path} exists, kept (delete it to measure again)", flush=True)
        return path
    try:
        record = run_local(sizes, QUICK, device)
    except (RuntimeError, OSError, ValueError, ProcessException) as err:
        print(f"allreduce: not measured ({type(err).__name__}: {err}); the report assumes the link", flush=True)
        return None
    skipped = "; ".join(f"{x['world_size']} ranks skipped: {x['reason']}" for x in record["skipped"])
    if not record["results"]:
        print(f"allreduce: not measured: {skipped}; the report assumes the link", flush=True)
        return None
    atomic_write_json(path, record)
    print(f"allreduce: {record['backend']} on {device}, " + "; ".join(fit_text(f) for f in record["fits"])
          + (f" ({skipped})" if skipped else "") + f" -> {path}", flush=True)
    return path


def main_args(args) -> None:
    """The `pipeline bench --allreduce` handler."""
    s = QUICK if args.quick else DEFAULT
    if args.message_sizes:
        s = replace(s, sizes=sorted(set(args.message_sizes)))
    if args.repeats is not None:
        s = replace(s, repeats=args.repeats)
    if len(s.sizes) < 2 or s.repeats < 1:
        raise ValueError("--allreduce needs at least 2 message sizes (to fit a latency and a bandwidth) and "
                         "--repeats of 1 or more")
    run_allreduce(args.out, args.world_sizes, s, args.device)
