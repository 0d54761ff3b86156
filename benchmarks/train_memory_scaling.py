"""Training memory and start-up against dataset size: does a rank's RAM, or its time to the first step, grow with
the data?

What it measures, for each dataset scale (`--scales`, default 1x, 4x and 16x the demo) and each `train.input`
(`features`, `images`):

- `train_chunks`: training chunks of the run folder (index.csv), and `files_per_1000_chunks`: files the
  preprocessing wrote under the run folder's `features/` and `images/` per 1,000 chunks (all splits);
- `peak_rss_bytes_per_rank`: the largest over the 2 ranks of `getrusage(RUSAGE_SELF).ru_maxrss` x 1024 read after
  the last step, plus `RUSAGE_CHILDREN`'s (the largest loader worker, read after the workers were shut down and
  reaped) when `train.loader_workers` > 0. Beside it each rank records VmRSS/VmHWM after each phase (imports, group
  joined, each split's dataset built, first step, last step) and /proc/PID/smaps_rollup of itself and of its live
  loader workers after the last step (anonymous vs file-backed resident memory: a memory-mapped shard shows as
  file-backed page cache, a Python list per row as anonymous), so that growth can be attributed;
- `seconds_to_first_step`: from the rank process's start (/proc/self/stat starttime, so interpreter start and every
  import count) to the end of its first optimizer step, the largest over the ranks;
- `samples_per_s`: samples of both ranks per second over steps 2..N (rank 0's clock; the ranks step in lockstep);
- beside them, what is robust to a busy machine: `cpu_s_to_first_step` (the rank's own CPU seconds until then),
  `dataset_build_s` (the trainer's `build_dataset` calls, train and val) and `rss_added_building_trainer_bytes`.

Each measurement is launched `--repeats` times (default 3): timings are the median over the launches, memory the
maximum, and `spread` has every launch's value. On a shared 2-core machine other processes inflate wall times
(each launch records their share of the CPU); the CPU seconds and the dataset build are the figures to compare.

How: the demo dataset is built once (`pipeline data demo WORK/demo`). Scale S holds S copies of every demo wav in
the same speaker folders; copy 0 is the demo file, copy k >= 1 is stretched by 1 + 0.003k (linear interpolation:
a speed and pitch change of 0.3% per copy, so every copy has its own length and samples and no step can deduplicate
it) and attenuated by 0.1k dB (the demo has no silence threshold, and the change is far too small to drop chunks
under one). Copies live once in WORK/copies and are hard-linked into each scale's folder WORK/data/xS. Each scale is
preprocessed into its own run folder with the pipeline's own CLI (`python -m pipeline data manifest` and
`python -m pipeline preprocess`, timed) from configs/demo.yaml with data.root and run_dir pointed at the cache,
`preprocess.images: true` (logmel) at `--image-size` px. Run folders are keyed by a hash of the pipeline package's
source, so a rerun with the same code reuses them and new code gets new ones.

Each measurement starts fresh processes: torchrun (`--standalone --nproc_per_node=2`, as `pipeline train` launches)
runs this script's `rank` command in each rank. A rank does what the worker does (`pipeline.train.worker.join`:
gloo on CPU, `train.threads_per_rank` threads), builds the project's `Trainer` (data, model, DDP, optimizer,
loader), sets the sampler to epoch 1 and runs `--steps` optimizer steps through `Trainer.step_and_check` (the step
`train_epoch` runs: train_step, then the stop-flag all-reduce), not a whole epoch, with the demo's model (`cnn`,
batch 32 per rank, Adam). Images use the same `cnn` (seed 000's network, the fastest model on CPU) with
`--image-loader-workers` loader workers (0 for features). A measurement whose predicted memory (linear in the
training chunks, fitted to the smaller scales of the same input and phase) would exceed 85% of MemAvailable is not
run and is recorded with its estimate.

`--phase before` measures whatever `pipeline` package is importable (e.g. a clone of an older commit put first on
PYTHONPATH) into the JSON's `before` list; `--phase after` (default) into `scales`. Each phase keeps the other's
results in the file, and `summary` gives, per phase and input, largest/smallest ratios.

    .venv/bin/python benchmarks/train_memory_scaling.py     # -> results/benchmarks/train_memory_scaling.json
    OLD=$(mktemp -d) && git clone -q --no-local . "$OLD" && git -C "$OLD" checkout -q COMMIT && \\
    PYTHONPATH="$OLD" .venv/bin/python benchmarks/train_memory_scaling.py --phase before   # older code, side by side
    .venv/bin/python benchmarks/train_memory_scaling.py --quick          # a smoke test: tiny data, 1x and 2x, 3 steps
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SCRIPT_TOP_BOOT_S = time.clock_gettime(time.CLOCK_BOOTTIME)  # only the standard library imported so far
REPO = Path(__file__).resolve().parent.parent
WORLD_SIZE = 2
MEMORY_HEADROOM = 0.85
"""A measurement runs only if its predicted memory (all ranks) is under this share of MemAvailable."""
QUICK_FILES_PER_SPEAKER = 24
STRETCH_PER_COPY = 0.003
GAIN_DB_PER_COPY = -0.1
ROLLUP_KEYS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Anonymous", "Rss_file_backed", "Shared_Clean", "Shared_Dirty",
               "Private_Dirty")
"""The smaps_rollup fields a rank records (bytes)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    rank = sub.add_parser("rank", help="internal: one rank of a measurement (run by torchrun)")
    rank.add_argument("--config", type=Path, required=True)
    rank.add_argument("--input", choices=["features", "images"], required=True)
    rank.add_argument("--loader-workers", type=int, default=0)
    rank.add_argument("--batch-size", type=int, default=32)
    rank.add_argument("--steps", type=int, required=True)
    rank.add_argument("--out", type=Path, required=True, help="folder for rank<N>.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/train-memory-scaling"),
                        help="cache of datasets and run folders (reused by reruns)")
    parser.add_argument("--out", type=Path, help="JSON to write (default results/benchmarks/train_memory_scaling"
                        ".json; with --quick WORK/train_memory_scaling_quick.json)")
    parser.add_argument("--scales", default="1,4,16", help="copies of the demo dataset, comma-separated")
    parser.add_argument("--inputs", default="features,images", help="train.input values, comma-separated")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="launches per measurement (timings: median)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch per rank (the demo's)")
    parser.add_argument("--image-size", type=int, default=64, help="preprocess.image_size of the images")
    parser.add_argument("--image-loader-workers", type=int, default=2, help="train.loader_workers for images")
    parser.add_argument("--phase", choices=["before", "after"], default="after",
                        help="which list of the JSON to fill: `before` (older code via PYTHONPATH) or `scales`")
    parser.add_argument("--fresh-preprocess", action="store_true",
                        help="preprocess again even where the cache has this code's run folder")
    parser.add_argument("--quick", action="store_true", help="smoke test: 24 files per speaker, 1x and 2x, 3 steps")
    args = parser.parse_args(argv)
    if args.command is None and args.quick:
        args.scales, args.steps, args.batch_size, args.repeats = "1,2", 3, 8, 1
    return args


# The rank: runs under torchrun, imports torch only after its clock started.


def boot_seconds() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def process_start_boot_s() -> float:
    """When this process started, in CLOCK_BOOTTIME seconds (/proc/self/stat field 22, clock ticks since boot)."""
    text = Path("/proc/self/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: str | int = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def smaps_rollup(pid: str | int = "self") -> dict[str, int] | None:
    """Resident memory of a process split by kind (bytes): Rss, Pss, Anonymous, Pss_Anon, Pss_File, ..."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return None
    rollup = {}
    for line in lines:
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            rollup[key.strip()] = int(parts[0]) * 1024
    if "Rss" in rollup and "Anonymous" in rollup:
        rollup["Rss_file_backed"] = rollup["Rss"] - rollup["Anonymous"]
    return {key: rollup[key] for key in ROLLUP_KEYS if key in rollup}


class PhaseLog:
    """Boot-clock time and RSS at named moments of a rank, relative to the process start."""

    def __init__(self) -> None:
        self.start = process_start_boot_s()
        self.marks: list[dict] = [{"phase": "script_top", "s": round(SCRIPT_TOP_BOOT_S - self.start, 3)}]

    def mark(self, phase: str, **extra) -> float:
        at = boot_seconds()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.marks.append({"phase": phase, "s": round(at - self.start, 3),
                           "cpu_s": round(usage.ru_utime + usage.ru_stime, 3), **proc_status(), **extra})
        return at


def time_dataset_builds(trainer_module, log: PhaseLog) -> None:
    """Wrap the trainer's `build_dataset` so that each split's build is timed and its RSS recorded (behaviour
    unchanged)."""
    original = trainer_module.build_dataset

    def timed(*args, **kwargs):
        started = time.perf_counter()
        result = original(*args, **kwargs)
        split = args[3] if len(args) > 3 else kwargs.get("split")
        log.mark(f"dataset_{split}", build_s=round(time.perf_counter() - started, 3))
        return result

    trainer_module.build_dataset = timed


def run_steps(trainer, steps: int, log: PhaseLog) -> tuple[list[float], object]:
    """`steps` optimizer steps of epoch 1 as `train_epoch` runs them; the boot-clock time at the end of each."""
    import torch

    trainer.sampler.set_epoch(1)
    trainer.ddp.train()
    totals = torch.zeros(3, device=trainer.device)
    batches = iter(trainer.loader)
    ends = []
    for _ in range(steps):
        trainer.step_and_check(batches, totals, 1)
        ends.append(boot_seconds())
        if len(ends) == 1:
            log.mark("first_step")
    log.mark("last_step")
    return ends, batches


def rank_memory(batches) -> dict:
    """The rank's (and its loader workers') memory after the last step; the workers are shut down and reaped here
    so that RUSAGE_CHILDREN includes them."""
    workers = [w.pid for w in getattr(batches, "_workers", [])]
    record = {"self_smaps_rollup": smaps_rollup(), "worker_smaps_rollup": [smaps_rollup(pid) for pid in workers]}
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    record["ru_maxrss_self_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record["ru_maxrss_children_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    record["loader_worker_pids"] = workers
    pss = [r.get("Pss", 0) for r in [record["self_smaps_rollup"], *record["worker_smaps_rollup"]] if r]
    record["pss_bytes_rank_and_workers_at_end"] = sum(pss)
    return record


def rank_main(args: argparse.Namespace) -> None:
    log = PhaseLog()
    from pipeline.config import load_config
    from pipeline.layout import RunLayout, TrainingPaths
    from pipeline.train import trainer as trainer_module
    from pipeline.train.preemption import StopFlag
    from pipeline.train.worker import join

    log.mark("imported")
    overrides = [f"train.input={args.input}", f"train.loader_workers={args.loader_workers}",
                 f"train.batch_size={args.batch_size}", "train.device=cpu"]
    experiment = load_config(args.config, overrides)
    stop = StopFlag()
    stop.install()
    rank = join(experiment, "cpu")
    log.mark("joined")
    time_dataset_builds(trainer_module, log)
    trainer = trainer_module.Trainer(RunLayout(experiment.run_dir), TrainingPaths(args.out / "run"),
                                     experiment.train, rank.device, rank.backend, stop, log=lambda text: None)
    log.mark("trainer_built")
    steps = min(args.steps, trainer.steps_per_epoch)
    ends, batches = run_steps(trainer, steps, log)
    global_batch = args.batch_size * rank.env.world_size
    record = {
        "rank": rank.env.rank, "pid": os.getpid(), "train_samples": len(trainer.train_set),
        "steps": steps, "steps_per_epoch": trainer.steps_per_epoch, "loader_workers": args.loader_workers,
        "seconds_to_first_step": round(ends[0] - log.start, 3),
        "samples_per_s": global_batch * (steps - 1) / (ends[-1] - ends[0]) if steps > 1 else None,
        "step_end_s": [round(t - log.start, 3) for t in ends], "phases": log.marks,
        "memory": rank_memory(batches),
    }
    record["peak_rss_bytes"] = (record["memory"]["ru_maxrss_self_bytes"]
                                + (record["memory"]["ru_maxrss_children_bytes"] if args.loader_workers else 0))
    rank.backend.teardown()
    (args.out / f"rank{record['rank']}.json").write_text(json.dumps(record, indent=1))


# The dataset: the demo, and S distinct copies of it.


def build_demo(work: Path) -> Path:
    demo = work / "demo"
    if not (demo / "SOURCES.csv").is_file():
        print(f"data: building the demo dataset in {demo}", flush=True)
        subprocess.run([sys.executable, "-m", "pipeline", "data", "demo", str(demo)], check=True)
    return demo


def demo_files(demo: Path, quick: bool) -> list[Path]:
    """The demo's wavs relative to its folder, sorted; with `quick`, the first files of each speaker."""
    files = sorted(p.relative_to(demo) for p in demo.glob("*/*.wav"))
    if not quick:
        return files
    by_speaker: dict[str, list[Path]] = {}
    for f in files:
        by_speaker.setdefault(f.parts[0], []).append(f)
    return [f for group in by_speaker.values() for f in group[:QUICK_FILES_PER_SPEAKER]]


def copy_name(relative: Path, k: int) -> Path:
    return relative.parent / f"{relative.stem}__k{k:02d}.wav"


def make_copy(job: tuple[Path, Path, int]) -> None:
    """Copy k of one wav: stretched by 1 + 0.003k (linear interpolation) and attenuated by 0.1k dB."""
    import numpy as np
    import soundfile

    source, target, k = job
    if target.exists():
        return
    samples, rate = soundfile.read(source, dtype="float64")
    factor = 1.0 + STRETCH_PER_COPY * k
    positions = np.arange(round(len(samples) * factor)) / factor
    stretched = np.interp(positions, np.arange(len(samples)), samples)
    gain = 10 ** (GAIN_DB_PER_COPY * k / 20)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part.wav")
    soundfile.write(partial, stretched * gain, rate, subtype="PCM_16")
    partial.rename(target)


def scaled_dataset(work: Path, demo: Path, scale: int, quick: bool) -> Path:
    """WORK/data/xS: S copies of each demo wav in its speaker folder (hard links into WORK/copies)."""
    files = demo_files(demo, quick)
    jobs = [(demo / f, work / "copies" / f"k{k:02d}" / copy_name(f, k), k) for k in range(1, scale) for f in files]
    todo = [job for job in jobs if not job[1].exists()]
    if todo:
        print(f"data: writing {len(todo)} copies for {scale}x", flush=True)
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(make_copy, todo, chunksize=64))
    root = work / "data" / f"{'quick-' if quick else ''}x{scale}"
    for k in range(scale):
        for f in files:
            target = root / copy_name(f, k)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(demo / f if k == 0 else work / "copies" / f"k{k:02d}" / copy_name(f, k), target)
    return root


# Preprocessing: one run folder per scale and code version.


def code_identity() -> dict:
    """The `pipeline` package under test: where it was imported from, its git commit and dirty flag, and a hash of
    its source files (which names the run folders)."""
    import pipeline

    package = Path(pipeline.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    record = {"package": str(package), "source_sha256": digest.hexdigest()}
    try:
        git = ["git", "-C", str(package.parent)]
        record["commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                          check=True).stdout.strip()
        status = subprocess.run([*git, "status", "--porcelain", "--", "pipeline"], capture_output=True, text=True,
                                check=True).stdout
        record["uncommitted_changes_in_pipeline"] = bool(status.strip())
        record["changed_files"] = [line[3:] for line in status.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        record["commit"] = None
    return record


def write_config(path: Path, root: Path, run_dir: Path, args: argparse.Namespace) -> Path:
    """configs/demo.yaml with the data root and run folder in the cache, images at `--image-size`, 2 CPU ranks."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config["name"] = run_dir.name
    config["run_dir"] = str(run_dir)
    config["data"] = {**config["data"], "source": "folder", "root": str(root)}
    config["preprocess"].update(images=True, image_features=["logmel"], image_size=args.image_size)
    config["train"].update(world_sizes=[WORLD_SIZE], device="cpu", batch_size=args.batch_size)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def count_files(folder: Path) -> tuple[int, int]:
    """(files, bytes) under `folder`."""
    files = size = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            files += 1
            size += os.stat(os.path.join(dirpath, name)).st_size
    return files, size


def index_counts(run_dir: Path) -> dict[str, int]:
    with open(run_dir / "features" / "index.csv", newline="") as f:
        splits = [row["split"] for row in csv.DictReader(f)]
    return {"chunks": len(splits), "train_chunks": splits.count("train")}


def run_logged(command: list[str], log: Path) -> float:
    """Run `command`, appending its output to `log`; its wall seconds. Raises with the log's tail on failure."""
    started = time.perf_counter()
    with open(log, "a") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[1:])} failed (exit {result.returncode}); log {log}:\n"
                           + log.read_text()[-4000:])
    return seconds


def preprocess_scale(work: Path, root: Path, scale: int, code: dict, args: argparse.Namespace) -> dict:
    """Manifest and preprocessing of one scale into its own run folder (reused if complete); what it wrote."""
    name = f"{'quick-' if args.quick else ''}x{scale}-{code['source_sha256'][:10]}"
    run_dir = work / "runs" / name
    record_path = work / "runs" / f"{name}.preprocess.json"
    if record_path.is_file() and (run_dir / "features" / "index.csv").is_file() and not args.fresh_preprocess:
        return json.loads(record_path.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = write_config(work / "runs" / f"{name}.yaml", root, run_dir, args)
    log = work / "runs" / f"{name}.log"
    log.unlink(missing_ok=True)
    print(f"preprocess: {scale}x into {run_dir}", flush=True)
    from benchlib import CpuMeter

    manifest_s = run_logged([sys.executable, "-m", "pipeline", "data", "manifest", str(config)], log)
    meter = CpuMeter()
    preprocess_s = run_logged([sys.executable, "-m", "pipeline", "preprocess", str(config)], log)
    load = meter.stop()
    files = {sub: count_files(run_dir / sub) for sub in ("features", "images")}
    counts = index_counts(run_dir)
    record = {"scale": scale, "run_dir": str(run_dir), "config": str(config), "manifest_s": round(manifest_s, 2),
              "preprocess_s": round(preprocess_s, 2), "preprocess_machine_load": load, **counts,
              "files": {sub: n for sub, (n, _) in files.items()},
              "bytes": {sub: b for sub, (_, b) in files.items()},
              "files_per_1000_chunks": round(1000 * sum(n for n, _ in files.values()) / counts["chunks"], 2),
              "log_tail": [line for line in log.read_text().splitlines() if line.startswith(("data:", "preprocess:"))]}
    record_path.write_text(json.dumps(record, indent=1))
    return record


# Measurements.


def memory_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def predicted_rss(entries: list[dict], input_kind: str, scale: int) -> dict | None:
    """Peak RSS per rank and training chunks predicted at `scale` from the measured entries of the same input: chunks
    proportional to the copies, RSS linear in the chunks (least squares; None with under two measured points)."""
    done = [e for e in entries if e["input"] == input_kind and e.get("peak_rss_bytes_per_rank")]
    if len(done) < 2:
        return None
    largest = max(done, key=lambda e: e["scale"])
    chunks = largest["train_chunks"] * scale / largest["scale"]
    per_chunk = slope(done, "peak_rss_bytes_per_rank")
    mean_x = sum(e["train_chunks"] for e in done) / len(done)
    mean_y = sum(e["peak_rss_bytes_per_rank"] for e in done) / len(done)
    rss = mean_y + per_chunk * (chunks - mean_x)
    return {"train_chunks_estimate": round(chunks), "peak_rss_bytes_per_rank_estimate": round(rss),
            "rss_slope_bytes_per_train_chunk": round(per_chunk, 1)}


def not_run_reason(entries: list[dict], input_kind: str, scale: int) -> dict | None:
    """A `not run` entry when the measurement would not fit in memory, else None."""
    guess = predicted_rss(entries, input_kind, scale)
    available = memory_available()
    if guess is None or WORLD_SIZE * guess["peak_rss_bytes_per_rank_estimate"] < MEMORY_HEADROOM * available:
        return None
    need = WORLD_SIZE * guess["peak_rss_bytes_per_rank_estimate"] / 2**30
    return {"scale": scale, "input": input_kind, **guess,
            "status": f"not run: would exceed the machine's memory ({WORLD_SIZE} ranks x "
                      f"{guess['peak_rss_bytes_per_rank_estimate'] / 2**30:.1f} GiB = {need:.1f} GiB estimated, "
                      f"{available / 2**30:.1f} GiB available)"}


def launch_ranks(config: Path, input_kind: str, workers: int, args: argparse.Namespace, out: Path) -> dict:
    """One measurement in fresh processes: torchrun with 2 ranks running `rank`; their records, or the failure."""
    from benchlib import CpuMeter

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}",
               str(Path(__file__).resolve()), "rank", "--config", str(config), "--input", input_kind,
               "--loader-workers", str(workers), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    meter = CpuMeter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=3600)
    record = {"machine_load": meter.stop(), "launcher_wall_s": None}
    record["launcher_wall_s"] = record["machine_load"]["wall_s"]
    (out / "torchrun.log").write_text(result.stdout + result.stderr)
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    if result.returncode or len(ranks) != WORLD_SIZE:
        record["status"] = f"failed (exit {result.returncode})"
        record["error"] = (result.stdout + result.stderr)[-6000:]
    record["ranks"] = ranks
    return record


def measure_once(prep: dict, input_kind: str, workers: int, args: argparse.Namespace,
                 out: Path) -> tuple[dict, int, list[dict]]:
    """One launch; with loader workers that fail, one more without. (record, loader workers used, failures)"""
    record = launch_ranks(Path(prep["config"]), input_kind, workers, args, out)
    failures = []
    if record.get("status") and workers:
        failures.append({"loader_workers": workers, "status": record["status"], "error": record["error"]})
        workers = 0
        record = launch_ranks(Path(prep["config"]), input_kind, workers, args, out)
    return record, workers, failures


def measure(prep: dict, input_kind: str, args: argparse.Namespace, work: Path) -> dict:
    """Measure one (scale, input) `--repeats` times, each in fresh processes; images fall back to 0 loader workers
    if workers fail."""
    workers = args.image_loader_workers if input_kind == "images" else 0
    base = work / "measure" / f"{args.phase}-{Path(prep['run_dir']).name}-{input_kind}"
    entry = {"scale": prep["scale"], "input": input_kind, "train_chunks": prep["train_chunks"], "status": "ok",
             "files_per_1000_chunks": prep["files_per_1000_chunks"], "chunks_all_splits": prep["chunks"],
             "preprocess_s": prep["preprocess_s"],
             "preprocess_cpu_s": prep.get("preprocess_machine_load", {}).get("own_cpu_s"),
             "preprocess_other_processes_share": prep.get("preprocess_machine_load", {}).get(
                 "other_processes_share_of_machine")}
    repeats, failures = [], []
    for repeat in range(1, args.repeats + 1):
        print(f"measure: {prep['scale']}x {input_kind}, {workers} loader workers, repeat {repeat}", flush=True)
        record, workers, failed = measure_once(prep, input_kind, workers, args, base / f"repeat{repeat}")
        failures += failed
        if record.get("status"):
            entry.update(status=record["status"], error=record["error"])
            print(f"measure: {entry['status']}\n{record['error'][-3000:]}", flush=True)
            break
        repeats.append({**combine_ranks(record["ranks"]), "launcher_wall_s": record["launcher_wall_s"],
                        "machine_load": record["machine_load"], "ranks": record["ranks"]})
    entry.update(loader_workers=workers, failed_attempts=failures)
    if repeats and entry["status"] == "ok":
        entry.update(over_repeats(repeats))
    entry["repeats"] = repeats
    return entry


TIMINGS = ("seconds_to_first_step", "cpu_s_to_first_step", "samples_per_s", "import_s", "dataset_build_s",
           "after_imports_to_first_step_s", "launcher_wall_s")
"""Figures taken as the median over repeats (contention inflates single runs); memory figures take the maximum."""


def over_repeats(repeats: list[dict]) -> dict:
    """One entry's figures from its repeats: medians of the timings, maxima of the memory, spreads of the main ones."""
    import statistics

    from benchlib import spread

    figures = {key: statistics.median(r[key] for r in repeats) for key in TIMINGS}
    for key in repeats[0]:
        if "bytes" in key:
            figures[key] = max(r[key] for r in repeats)
    figures.update(steps=repeats[0]["steps"], train_samples_seen_by_trainer=repeats[0]["train_samples_seen_by_trainer"])
    figures["spread"] = {key: spread([r[key] for r in repeats]) for key in
                         ("seconds_to_first_step", "cpu_s_to_first_step", "samples_per_s", "peak_rss_bytes_per_rank")}
    loads = [r["machine_load"] for r in repeats]
    figures["machine_load"] = {"loadavg_before": loads[0]["loadavg_before"],
                               "loadavg_after": loads[-1]["loadavg_after"],
                               "other_processes_share_of_machine": max(
                                   load.get("other_processes_share_of_machine") or 0 for load in loads)}
    return figures


def phase_of(rank: dict, name: str) -> dict:
    return next(p for p in rank["phases"] if p["phase"] == name)


def start_up_split(ranks: list[dict]) -> dict:
    """Where the time to the first step and the trainer's memory went, the largest over the ranks: imports (the
    same at every scale, and what contention slows most), building the datasets, and the RSS the trainer's
    construction added (datasets, model, DDP, loader)."""
    return {
        "import_s": max(phase_of(r, "imported")["s"] for r in ranks),
        "cpu_s_to_first_step": max(phase_of(r, "first_step")["cpu_s"] for r in ranks),
        "dataset_build_s": max(sum(p.get("build_s", 0) for p in r["phases"] if p["phase"].startswith("dataset_"))
                               for r in ranks),
        "after_imports_to_first_step_s": max(phase_of(r, "first_step")["s"] - phase_of(r, "imported")["s"]
                                             for r in ranks),
        "rss_added_building_trainer_bytes": max(phase_of(r, "trainer_built")["VmRSS"] - phase_of(r, "joined")["VmRSS"]
                                                for r in ranks),
        "peak_rss_while_building_trainer_bytes": max(phase_of(r, "trainer_built")["VmHWM"] for r in ranks),
    }


def combine_ranks(ranks: list[dict]) -> dict:
    """The figures of one measurement from its ranks' records."""
    rank0 = next(r for r in ranks if r["rank"] == 0)
    memory = [r["memory"] for r in ranks]
    return {**start_up_split(ranks),
        "peak_rss_bytes_per_rank": max(r["peak_rss_bytes"] for r in ranks),
        "seconds_to_first_step": max(r["seconds_to_first_step"] for r in ranks),
        "samples_per_s": round(rank0["samples_per_s"], 2) if rank0["samples_per_s"] else None,
        "steps": rank0["steps"], "train_samples_seen_by_trainer": rank0["train_samples"],
        "peak_rss_self_bytes_per_rank": max(m["ru_maxrss_self_bytes"] for m in memory),
        "peak_rss_largest_loader_worker_bytes": max(m["ru_maxrss_children_bytes"] for m in memory),
        "pss_bytes_rank_and_workers_at_end": max(m["pss_bytes_rank_and_workers_at_end"] for m in memory),
        "anonymous_rss_bytes_at_end": max((m["self_smaps_rollup"] or {}).get("Anonymous", 0) for m in memory),
        "file_backed_rss_bytes_at_end": max((m["self_smaps_rollup"] or {}).get("Rss_file_backed", 0)
                                            for m in memory),
    }


# The JSON.


def slope(entries: list[dict], key: str) -> float:
    """Least-squares slope of `key` against train_chunks over `entries`."""
    xs, ys = [e["train_chunks"] for e in entries], [e[key] for e in entries]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)


def ratios(entries: list[dict]) -> dict:
    """Per input: largest/smallest scale ratios of chunks, peak RSS and seconds to the first step, and slopes."""
    summary = {}
    for input_kind in sorted({e["input"] for e in entries}):
        done = sorted((e for e in entries if e["input"] == input_kind and e.get("peak_rss_bytes_per_rank")),
                      key=lambda e: e["scale"])
        if len(done) < 2:
            continue
        small, large = done[0], done[-1]
        summary[input_kind] = {
            "scales": [small["scale"], large["scale"]],
            "train_chunks_ratio": round(large["train_chunks"] / small["train_chunks"], 2),
            "peak_rss_ratio": round(large["peak_rss_bytes_per_rank"] / small["peak_rss_bytes_per_rank"], 3),
            "seconds_to_first_step_ratio": round(large["seconds_to_first_step"] / small["seconds_to_first_step"], 3),
            "samples_per_s_ratio": round(large["samples_per_s"] / small["samples_per_s"], 3),
            "rss_growth_mib_per_1000_train_chunks": round(slope(done, "peak_rss_bytes_per_rank") * 1000 / 2**20, 2),
        }
        if all("cpu_s_to_first_step" in e for e in done):
            summary[input_kind].update({
                "cpu_s_to_first_step_ratio": round(large["cpu_s_to_first_step"] / small["cpu_s_to_first_step"], 3),
                "dataset_build_s": [small["dataset_build_s"], large["dataset_build_s"]],
                "dataset_build_s_per_1000_train_chunks": round(slope(done, "dataset_build_s") * 1000, 4),
                "after_imports_to_first_step_s": [small["after_imports_to_first_step_s"],
                                                  large["after_imports_to_first_step_s"]],
                "rss_added_building_trainer_mib": [round(small["rss_added_building_trainer_bytes"] / 2**20, 1),
                                                   round(large["rss_added_building_trainer_bytes"] / 2**20, 1)]})
    return summary


def portable_entry(entry: dict) -> dict:
    from benchlib import portable

    entry = dict(entry)
    for key in ("run_dir", "config"):
        if key in entry:
            entry[key] = portable(entry[key])
    return entry


def scrub(value):
    """`value` with every absolute path of this machine inside its strings (error texts, log lines) written as
    benchlib.portable writes paths: relative to the repository, or under $TMPDIR."""
    import tempfile

    if isinstance(value, dict):
        return {key: scrub(item) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item) for item in value]
    if not isinstance(value, str):
        return value
    for prefix, name in ((REPO.as_posix() + "/", ""), (REPO.as_posix(), "."),
                         (Path(tempfile.gettempdir()).as_posix().rstrip("/") + "/", "$TMPDIR/")):
        value = value.replace(prefix, name)
    return value


def load_table(entries: list[dict]) -> list[dict]:
    """Load averages before and after each launch of each measurement."""
    return [{"scale": e["scale"], "input": e["input"], "repeat": k, "before": r["machine_load"]["loadavg_before"],
             "after": r["machine_load"]["loadavg_after"],
             "other_processes_share_of_machine": r["machine_load"].get("other_processes_share_of_machine")}
            for e in entries for k, r in enumerate(e.get("repeats", []), start=1)]


NOTES = [
    "peak_rss_bytes_per_rank is the largest over the ranks of ru_maxrss (RUSAGE_SELF) plus, with loader workers, "
    "ru_maxrss of RUSAGE_CHILDREN, which is the largest single worker, not their sum; a forked worker's RSS also "
    "counts the pages it shares with its rank (libraries, the dataset object), so the sum over-counts what the "
    "workers cost and pss_bytes_rank_and_workers_at_end (proportional set size after the last step, rank and live "
    "workers summed) is the figure without double counting.",
    "anonymous_rss_bytes_at_end vs file_backed_rss_bytes_at_end (smaps_rollup of the rank after the last step) "
    "separate heap (tensors, Python objects) from mapped files (libraries, memory-mapped shards: page cache the "
    "kernel can drop); ranks[].phases has VmRSS and VmHWM after each phase, ranks[].memory the full rollups.",
    "seconds_to_first_step starts at the rank process's start (/proc/self/stat), so it includes the interpreter, "
    "the imports of torch and the pipeline, joining the gloo group, building the train and val datasets "
    "(ranks[].phases: dataset_train, dataset_val with build_s), the model, and the first step. torchrun's own start "
    "and rendezvous before the ranks exist is not in it (launcher_wall_s is the whole torchrun job).",
    "The copies are split by file like any folder dataset, so copies of one recording can fall into different "
    "splits; nothing here measures accuracy, which that would inflate.",
]


def run_phase(args: argparse.Namespace, scales: list[int], inputs: list[str]) -> tuple[list, list, dict]:
    """Datasets, preprocessing and measurements of every scale; (entries, preprocessing records, code)."""
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    demo = build_demo(work)
    code = code_identity()
    entries: list[dict] = []
    preps: list[dict] = []
    for scale in scales:
        root = scaled_dataset(work, demo, scale, args.quick)
        skipped = {kind: not_run_reason(entries, kind, scale) for kind in inputs}
        if all(skipped.values()):
            entries += list(skipped.values())
            continue
        try:
            prep = preprocess_scale(work, root, scale, code, args)
        except RuntimeError as err:
            print(err, flush=True)
            entries += [{"scale": scale, "input": kind, "status": "failed: preprocessing", "error": str(err)}
                        for kind in inputs]
            continue
        preps.append(prep)
        entries += [skipped[kind] or measure(prep, kind, args, work) for kind in inputs]
    return entries, preps, code


def write_json(out: Path, args: argparse.Namespace, phase: dict, entries: list[dict]) -> dict:
    """Put this phase's entries into `out` (keeping the other phase's), with machine, method and summary."""
    from benchlib import contention_caveat, environment

    from pipeline.io import atomic_write_json

    result = json.loads(out.read_text()) if out.is_file() else {}
    key = "scales" if args.phase == "after" else "before"
    result["benchmark"] = "train_memory_scaling"
    result["method"] = __doc__.strip()
    result[key] = [portable_entry(e) for e in entries]
    result.setdefault("phases", {})[args.phase] = phase
    machine = environment(1)
    machine["load_averages"] = {k: load_table(result.get(k, [])) for k in ("before", "scales")}
    result["machine"] = machine
    result["summary"] = {k: ratios(result[k]) for k in ("before", "scales") if result.get(k)}
    caveats = [f"{name}: {text}" for name, p in result["phases"].items()
               if (text := contention_caveat(p["machine_load"]))]
    result["notes"] = NOTES + caveats
    result = scrub(result)
    atomic_write_json(out, result)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "rank":
        rank_main(args)
        return
    from benchlib import RESULTS, CpuMeter, command_line, now, portable

    out = args.out or (args.work / "train_memory_scaling_quick.json" if args.quick
                       else RESULTS / "train_memory_scaling.json")
    scales, inputs = [int(s) for s in args.scales.split(",")], args.inputs.split(",")
    started, meter = now(), CpuMeter()
    entries, preps, code = run_phase(args, scales, inputs)
    load = meter.stop()
    phase = {"measured_at": started, "command": command_line(), "runtime_s": load["wall_s"],
             "pythonpath": ":".join(portable(p) for p in os.environ.get("PYTHONPATH", "").split(":") if p) or None,
             "code": {**code, "package": portable(code["package"])}, "machine_load": load,
             "parameters": {"scales": scales, "inputs": inputs, "steps": args.steps, "world_size": WORLD_SIZE,
                            "device": "cpu", "backend": "gloo", "threads_per_rank": 1, "model": "cnn",
                            "batch_size_per_rank": args.batch_size, "image_size": args.image_size,
                            "image_feature": "logmel", "image_loader_workers": args.image_loader_workers,
                            "feature_loader_workers": 0, "quick": args.quick, "work": portable(args.work)},
             "preprocessing": [portable_entry(p) for p in preps]}
    result = write_json(out, args, phase, entries)
    print(f"train_memory_scaling ({args.phase}): {len(entries)} entries in {load['wall_s']:.0f} s -> {out}")
    for entry in entries:
        print(f"  {entry['scale']:>3}x {entry['input']:<8} chunks {entry.get('train_chunks', '?')} "
              f"rss {entry.get('peak_rss_bytes_per_rank', 0) / 2**20:.0f} MiB "
              f"first step {entry.get('seconds_to_first_step')} s  {entry.get('samples_per_s')} samples/s  "
              f"{entry.get('status', 'ok')}")
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
