"""Helpers shared by the benchmark scripts: spread of repeats, what the machine is, and how busy others kept it.

Not a benchmark itself. The scripts in this folder import it as a sibling module (`python benchmarks/NAME.py` puts
this folder first on `sys.path`).
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

from pipeline.train.environment import available_cores, describe_environment

REPO = Path(__file__).resolve().parent.parent
# The demo's run folder, which `pipeline run configs/demo.yaml` (or `pipeline preprocess configs/demo.yaml`) writes;
# git does not track it. The benchmarks only read its feature shards (and images).
DEMO_RUN_DIR = REPO / "runs" / "demo"
RESULTS = REPO / "results" / "benchmarks"
MISSING_FEATURES = (
    "{index} is missing: these benchmarks read the demo's feature shards (runs/demo, not tracked by git). Make them "
    "with\n"
    "  .venv/bin/pipeline data manifest configs/demo.yaml && .venv/bin/pipeline preprocess configs/demo.yaml\n"
    "(about 1-2 minutes on 2 cores; `.venv/bin/pipeline run configs/demo.yaml` also makes them, and trains)."
)


def require_features(run_dir: Path) -> None:
    """Exit with the command to run when the run folder has no feature index."""
    index = Path(run_dir) / "features" / "index.csv"
    if not index.is_file():
        sys.exit(MISSING_FEATURES.format(index=portable(index)))


def portable(path: str | os.PathLike) -> str:
    """`path` as a committed result may record it, without an absolute path of this machine.

    The interpreter (sys.executable) becomes its file name (`python`); a path under the repository becomes relative
    to it (`data/demo`, `.venv/bin/pipeline`, `configs/demo.yaml`); one in a virtual environment outside the
    repository `$VIRTUAL_ENV/...`; one under the temporary folder (tempfile.gettempdir(), e.g. a scratch work dir)
    `$TMPDIR/...`. Any other path is returned as given. A relative path is taken from the current folder.
    """
    text = os.fspath(path)
    if not text:
        return text
    absolute = Path(os.path.abspath(text))
    if sys.executable and absolute == Path(os.path.abspath(sys.executable)):
        return Path(sys.executable).name
    forms = (absolute, absolute.resolve())
    places = [(REPO, "")]
    if sys.prefix != sys.base_prefix:
        places.append((Path(sys.prefix), "$VIRTUAL_ENV"))
    places.append((Path(tempfile.gettempdir()), "$TMPDIR"))
    for root, name in places:
        for form in forms:
            for base in dict.fromkeys((root, root.resolve())):
                if form.is_relative_to(base):
                    rest = form.relative_to(base).as_posix()
                    return "/".join(part for part in (name, rest) if part and part != ".") or "."
    return text


def portable_command(words: list[str]) -> list[str]:
    """A command's words with `portable` applied to every absolute path, alone or as the value of KEY=PATH."""
    out = []
    for word in words:
        key, sep, value = word.partition("=")
        if os.path.isabs(word):
            word = portable(word)
        elif sep and os.path.isabs(value):
            word = f"{key}={portable(value)}"
        out.append(word)
    return out


def command_line() -> str:
    """This benchmark's own command line, as recorded in its JSON: `python SCRIPT ARGS...` with portable paths."""
    return " ".join(portable_command([sys.executable, *sys.argv]))


def spread(values: list[float]) -> dict:
    """mean, sample standard deviation, min, max and count of repeated measurements."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def environment(threads: int) -> dict:
    """Hardware and versions, as the trainer records them, plus the GPU (if any) and the image libraries."""
    record = describe_environment(torch.device("cpu"), threads, 1)
    for name in ("torchvision", "pillow", "audio-ddp-pipeline"):
        try:
            record["versions"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            record["versions"][name] = "not installed"
    record["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    record["cpu_count_host"] = os.cpu_count()
    record["memory_gib"] = _memory_gib()
    record["platform"] = platform.platform()
    record["git"] = _git()
    record.pop("oversubscribed", None)
    record.pop("launcher", None)
    return record


def _git() -> dict | None:
    """Commit of the working tree the benchmark ran from, and whether it had uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit.stdout.strip(), "uncommitted_changes": bool(status.stdout.strip())}


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _proc_stat() -> dict[str, float] | None:
    """Machine-wide CPU seconds from /proc/stat: busy (not idle, not iowait) and stolen by the hypervisor."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {"busy": (user + nice + system + irq + softirq) / tick, "steal": steal / tick}


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (torchrun ranks, loader workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class CpuMeter:
    """How much of the machine's CPU went to other processes while a measurement ran.

    others = machine-wide busy CPU seconds (/proc/stat) - CPU seconds of this process and its ended children.
    Divided by wall time x cores it is the share of the machine that others used: 0 on an otherwise idle machine.
    Children still running when `stop` is called (persistent loader workers) are counted as others, so it is an
    upper bound on contention.
    """

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.load = os.getloadavg()
        self.stat = _proc_stat()
        self.own = _own_cpu_seconds()

    def stop(self) -> dict:
        wall = time.perf_counter() - self.wall
        stat, own = _proc_stat(), _own_cpu_seconds() - self.own
        cores = available_cores()
        record = {"wall_s": round(wall, 2), "loadavg_before": [round(v, 2) for v in self.load],
                  "loadavg_after": [round(v, 2) for v in os.getloadavg()], "own_cpu_s": round(own, 2)}
        if stat and self.stat:
            busy = stat["busy"] - self.stat["busy"]
            others = max(0.0, busy - own)
            record.update({"machine_busy_cpu_s": round(busy, 2), "other_processes_cpu_s": round(others, 2),
                           "other_processes_share_of_machine": round(others / (wall * cores), 3) if wall else None,
                           "steal_cpu_s": round(stat["steal"] - self.stat["steal"], 2)})
        return record


def contention_caveat(meter: dict, threshold: float = 0.05) -> str | None:
    """A sentence for the notes when other processes used a noticeable share of the machine."""
    share = meter.get("other_processes_share_of_machine")
    if share is None or share < threshold:
        return None
    return (f"Contention: other processes used {share:.0%} of the machine's CPU time while this ran "
            f"({meter['other_processes_cpu_s']} CPU s over {meter['wall_s']} s wall on {available_cores()} cores; "
            f"load average {meter['loadavg_before']} before, {meter['loadavg_after']} after). Absolute samples/s "
            f"may be lower than on an idle machine.")


def write_result(out: Path, result: dict, notes: list[str], meter: dict, label: str, repeats: int) -> None:
    """Add the contention caveat to `notes`, write `result` with them as JSON, and print where and the notes."""
    from pipeline.io import atomic_write_json

    caveat = contention_caveat(meter)
    if caveat:
        notes.append(caveat)
    result["notes"] = notes
    atomic_write_json(out, result)
    print(f"{label}: {repeats} repeats in {meter['wall_s']:.0f} s -> {out}")
    for note in notes:
        print(f"- {note}")
