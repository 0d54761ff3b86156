"""Long recordings: a preprocessing worker's peak memory against the length of one source file, before and after
decoding in blocks, and what happens to a file too big for a worker.

Issue target (18, part 1): at most 1.5 GB per worker for any length at the default settings, measured over 10 min,
1 h and 4 h files; a file too big for a worker's limit is a reject, never a KilledWorker. Before the change
`load_audio` decoded a whole file, and one Dask worker peaked at 13.3 GB for two 2-hour 48 kHz stereo WAVs.
"1.5 GB" is read as 1.5e9 bytes (1,431 MiB), the stricter reading.

The recordings (`--minutes`, default 10, 60 and 240) are generated, never read from anywhere: 48 kHz stereo 16-bit
WAVs written 10 s at a time (the whole array is never in memory), noise under a slow envelope (a 5 s period) plus a
few tones per channel, so that no chunk is silence (the demo's config has no silence threshold, but a chunk count
under one would say so). `--formats flac mp3` adds the same signal at `--compressed-minutes` (60) as FLAC
(libsndfile decodes it in blocks) and as an MP3 without a Xing/Info header (written by ffmpeg with -write_xing 0),
which the pipeline decodes through an ffmpeg pipe. They live in `--work` (default $TMPDIR/long-recordings-bench),
are reused by reruns and removed at the end unless `--keep-audio`.

Settings: configs/demo.yaml's preprocess section (3 s chunks, the last one padded, log-mel and MFCC, 128 px log-mel
PNGs in tar shards), data.sample_rate 16000, one file per run, one task per file.

Every measurement is a fresh subprocess (this script's internal `measure` command), so that its peak is that one
file's alone:

- `direct`: imports the pipeline, records its RSS (`rss_after_imports`), then calls
  `pipeline.preprocess.task.run_task(Task(0, (source,)), config.preprocess, 16000, run_dir, root)`; the peak is
  `getrusage(RUSAGE_SELF).ru_maxrss` after it returned (`peak_rss`), `RUSAGE_CHILDREN`'s the largest child (ffmpeg
  for the MP3). Wall and CPU time count run_task alone.
- `dask`: a real `distributed.LocalCluster` of one single-threaded worker process with `memory_limit="2GB"`
  (`--memory-limit`; dask-jobqueue's default per worker here, 8 GB over 4 processes, so its nanny kills a worker
  at 95% of it), warmed with a task that imports the preprocessing, then `pipeline.preprocess.run.preprocess(config,
  client.get_executor(retries=2))` as `pipeline preprocess` runs it (index, statistics and gallery in the calling
  process). The worker's own peak is ru_maxrss read in the worker through `client.run` afterwards; a sampler
  thread also reads the RSS of every descendant process (nanny, worker, ffmpeg) every 0.25 s, which survives a
  worker the nanny restarts. What the nanny logged (memory warnings, restarts) is counted from its stderr, and the
  run's exception, if any (KilledWorker), is recorded.

Every run's outputs are checked against the recording's length (3 s chunks: 10 min = 200): the rows of chunks.csv
and of every feature array, and the PNGs in the tar, then the run folder is removed.

The "before" side is the same driver on the code of `--before` (default e57d2be, the commit before the change):
a `git worktree add --detach` of it under $TMPDIR, first on PYTHONPATH of the subprocess (removed at the end), at
`--before-minutes` (10 and 60). A longer "before" is not run: its peak is extrapolated linearly in the audio's
length from the measured "before" peaks and recorded with that figure as the reason. The "after" side is the
working tree as it is, or with `--after REF` a worktree of that commit, put on PYTHONPATH the same way (a commit is
what to measure while others edit the working tree: its results name one version of the code).

The memory check (`--no-memory-check` skips it): two runs through the 2 GB Dask worker, each with a 30 s stereo file
and a file that cannot fit, both longer than one chunk (so that the before code cannot reject them as too short).
`wide_small_limit`: 128 channels at 96 kHz (4 s, 98 MB), with `preprocess.worker_memory_mb` set from the warmed
worker's RSS (RSS + the pipeline's own batch estimate + 80 MB, over Dask's 0.8 pause fraction), so that the stereo
file fits (1.2 MB a second of block) and a 1 s block of the wide one (99 MB) does not. `wider_than_worker`: 1024
channels at 192 kHz (3.5 s, 1.4 GB on disk, 2.8 GB as float32), at the worker's own 2 GB limit, no setting; this
one also runs on the "before" code. Each records rejects.csv, the chunks written and whether the run completed.

Repeats: `--repeats` (default 1) direct runs per recording and code, `--short-repeats` (default 3) for recordings
of 10 minutes or less, code versions alternating in order; Dask runs once. Memory is the maximum over repeats,
timings the median; with one repeat there is no spread (say so, single runs). Timings are noisy on a shared 2-core
machine (`machine_load` says how busy); memory is what this benchmark is for.

    .venv/bin/python benchmarks/long_recordings.py --after COMMIT  # -> results/benchmarks/long_recordings.json
                                    # 10-20 min on 2 busy cores, plus ~7 min the first time to write the audio
    .venv/bin/python benchmarks/long_recordings.py --minutes 1 3 --before-minutes 1 --formats --out /tmp/quick.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORK = Path(tempfile.gettempdir()) / "long-recordings-bench"
BEFORE_REF = "e57d2be"
SOURCE_RATE, SOURCE_CHANNELS, TARGET_RATE = 48000, 2, 16000
WRITE_BLOCK_SAMPLES = 10 * SOURCE_RATE * SOURCE_CHANNELS
"""Samples (frames x channels) the generator computes at a time: 10 s of stereo, under 0.1 s of 1024 channels."""
FULL_BATCH_SECONDS = 256 * 3.0
"""Audio that fills one feature batch (BATCH_CHUNKS chunks of 3 s): shorter recordings have smaller batches, so
their peak is lower for that reason alone; growth with length is read from the recordings past it."""
GOAL_BYTES = 1.5e9
MEMORY_LIMIT = "2GB"
DASK_RETRIES = 2
"""As pipeline.preprocess.cluster.RETRIES, before and after."""
SAMPLE_EVERY_S = 0.25
TIMELINE_POINTS = 40
MEMORY_HEADROOM = 0.85
"""A "before" run is only worth trying when its estimated peak is under this share of MemAvailable."""
WIDE_MARGIN_MB = 80
"""Room left in worker_memory_mb for the wide file's check: over a stereo block, under a 128-channel one."""
NANNY_PATTERNS = {"memory_warnings": "memory budget", "restarts": "Restarting worker",
                  "unmanaged_memory_warnings": "Unmanaged memory use is high", "killed_worker": "KilledWorker"}
MIB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, and the internal `measure` command each measurement runs in a fresh interpreter."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    inner = sub.add_parser("measure", help="internal: one file in this process (direct) or one Dask worker (dask)")
    inner.add_argument("--mode", choices=["direct", "dask"], required=True)
    inner.add_argument("--config", type=Path, required=True)
    inner.add_argument("--file", required=True, help="the recording, relative to data.root ('' with --manifest)")
    inner.add_argument("--out", type=Path, required=True)
    inner.add_argument("--memory-limit", default=MEMORY_LIMIT)
    inner.add_argument("--worker-memory-margin-mb", type=float,
                       help="set preprocess.worker_memory_mb from the warmed worker's RSS plus this margin")
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60, 240], help="WAV lengths to measure")
    parser.add_argument("--formats", nargs="*", default=["flac", "mp3"], choices=["flac", "mp3"],
                        help="compressed copies at --compressed-minutes (none: --formats with no value)")
    parser.add_argument("--compressed-minutes", type=float, default=60)
    parser.add_argument("--before", default=BEFORE_REF, help="git ref of the code before the change")
    parser.add_argument("--after", help="git ref of the code after it (default: this working tree, as it is)")
    parser.add_argument("--before-minutes", type=float, nargs="*", default=[10, 60],
                        help="WAV lengths the before code runs at (others are extrapolated)")
    parser.add_argument("--repeats", type=int, default=1, help="direct runs per recording and code")
    parser.add_argument("--short-repeats", type=int, default=3, help="direct runs for recordings of <= 10 min")
    parser.add_argument("--memory-limit", default=MEMORY_LIMIT, help="memory_limit of the Dask worker")
    parser.add_argument("--no-dask", action="store_true", help="skip the runs through a Dask worker")
    parser.add_argument("--no-memory-check", action="store_true", help="skip the too-big-file runs")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="generated audio and scratch run folders")
    parser.add_argument("--keep-audio", action="store_true", help="keep the generated audio for a rerun")
    parser.add_argument("--out", type=Path, help="default results/benchmarks/long_recordings.json")
    return parser.parse_args(argv)


# The recordings.


def signal_block(start: int, frames: int, rate: int, channels: int, rng) -> object:
    """Frames [start, start + frames) of the test signal: noise and tones under a slow envelope, distinct per
    channel; computed from the absolute frame index, so the blocks join without a seam."""
    import numpy as np

    t = (start + np.arange(frames)) / rate
    envelope = 0.55 + 0.4 * np.sin(2 * np.pi * 0.2 * t)
    channel = np.arange(channels)
    tones = sum(level * np.sin(2 * np.pi * hz * (1 + 0.01 * channel)[None, :] * t[:, None] + channel[None, :])
                for hz, level in ((220, 0.08), (660, 0.05), (1250, 0.03)))
    noise = rng.standard_normal((frames, channels)) * 0.06
    return (envelope[:, None] * (noise + tones)).astype(np.float32)


def write_signal(path: Path, seconds: float, rate: int, channels: int, kind: str = "WAV") -> None:
    """A 16-bit recording of `seconds`, written block by block (never whole in memory), renamed into place when
    complete so that a rerun never reuses half a file."""
    import numpy as np
    import soundfile as sf

    frames, block = round(seconds * rate), max(1, WRITE_BLOCK_SAMPLES // channels)
    rng = np.random.default_rng(18)
    partial = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(partial, "w", rate, channels, "PCM_16", format=kind) as out:
        for start in range(0, frames, block):
            out.write(signal_block(start, min(block, frames - start), rate, channels, rng))
    partial.rename(path)


def write_mp3(path: Path, wav: Path) -> None:
    """The WAV as a 128 kb/s MP3 without a Xing/Info header (`-write_xing 0`): the pipeline decodes such a file
    through its ffmpeg pipe, since libsndfile cannot know its length."""
    partial = path.with_name(path.stem + ".part.mp3")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), "-c:a", "libmp3lame", "-b:a", "128k",
                    "-write_xing", "0", "-map_metadata", "-1", str(partial)], check=True)
    partial.rename(path)


def has_length_header(path: Path) -> bool:
    """The test `pipeline.audio` makes: a Xing/Info/VBRI tag near the start (after any ID3v2 tag)."""
    with open(path, "rb") as f:
        head = f.read(10)
        skip = 10 + (head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9]) if head[:3] == b"ID3" else 0
        f.seek(skip)
        start = f.read(4096)
    return any(tag in start for tag in (b"Xing", b"Info", b"VBRI"))


def recording(work: Path, name: str, minutes: float, kind: str, rate: int = SOURCE_RATE,
              channels: int = SOURCE_CHANNELS, label: str = "long", group: str | None = None) -> dict:
    """The recording `name` (generated unless already there), in a data root of its own, WORK/audio/NAME/LABEL/,
    or shared with the other files of `group`."""
    root = work / "audio" / (group or name)
    path = root / label / f"{name}.{kind}"
    generated = not path.is_file()
    if generated:
        print(f"audio: writing {path}", flush=True)
        if kind == "mp3":
            write_mp3(path, Path(recording(work, f"wav-{minutes:g}min", minutes, "wav")["path"]))
        else:
            write_signal(path, minutes * 60, rate, channels, kind.upper())
    return {"name": name, "format": kind, "minutes": minutes, "audio_seconds": minutes * 60, "rate": rate,
            "channels": channels, "bits": 16, "bytes": path.stat().st_size, "root": str(root),
            "file": f"{label}/{path.name}", "path": str(path), "generated_now": generated,
            **({"length_header": has_length_header(path)} if kind == "mp3" else {})}


def recordings(args: argparse.Namespace) -> list[dict]:
    """The WAVs of `--minutes`, then the compressed copies of `--formats`."""
    work = args.work.resolve()
    found = [recording(work, f"wav-{m:g}min", m, "wav") for m in args.minutes]
    found += [recording(work, f"{kind}-{args.compressed_minutes:g}min", args.compressed_minutes, kind)
              for kind in args.formats]
    return found


def expected_chunks(seconds: float, chunk: float = 3.0, min_last: float = 0.5) -> int:
    """Chunks of a recording at the demo's settings: full chunks, and a padded last one if at least half a chunk
    remains (last_chunk: pad, min_last_chunk: 0.5)."""
    full = int(seconds // chunk)
    return full + (seconds - full * chunk >= min_last * chunk)


# One measurement, in a fresh process.


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes (empty if it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {key: int(value.split()[0]) * 1024 for key, _, value in (line.partition(":") for line in lines)
            if key in ("VmRSS", "VmHWM")}


class RssSampler(threading.Thread):
    """RSS every SAMPLE_EVERY_S: of this process, or (`descendants`) the largest of its descendant processes, which
    is the Dask worker, whoever its nanny restarted. A timeline is what shows whether memory grows with the
    recording as it is read, which a peak alone cannot. Each descendant's own largest sample is kept too: ffmpeg's
    real RSS, which its ru_maxrss does not give (see NOTES)."""

    def __init__(self, descendants: bool = False) -> None:
        super().__init__(daemon=True)
        self.descendants, self.samples, self.started = descendants, [], time.perf_counter()
        self.processes: dict[int, dict] = {}
        self._stop_event = threading.Event()

    def read(self) -> int:
        import psutil

        sizes = [0]
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):  # it ended between the listing and the read
                rss = child.memory_info().rss
                sizes.append(rss)
                known = self.processes.setdefault(child.pid, {"name": process_name(child), "peak_rss_bytes": 0})
                known["peak_rss_bytes"] = max(known["peak_rss_bytes"], rss)
        return max(sizes) if self.descendants else proc_status().get("VmRSS", 0)

    def run(self) -> None:
        while not self._stop_event.wait(SAMPLE_EVERY_S):
            self.samples.append((time.perf_counter() - self.started, self.read()))

    def stop(self) -> dict:
        self._stop_event.set()
        self.join()
        record = {"sampled_peak_rss_bytes": max((rss for _, rss in self.samples), default=0),
                  "timeline_s_mib": downsample(self.samples)}
        record["sampled_processes"] = sorted(self.processes.values(), key=lambda p: -p["peak_rss_bytes"])[:6]
        return record


def process_name(process) -> str:
    """What a descendant is, in a word: the Dask worker, its nanny's helpers, ffmpeg."""
    try:
        words = process.cmdline()
    except Exception:  # noqa: BLE001 - gone, or not ours to read
        return "?"
    text = " ".join(words)
    for marker in ("ffmpeg", "multiprocessing.spawn", "multiprocessing.forkserver", "resource_tracker"):
        if marker in text:
            return marker
    return " ".join(word.rsplit("/", 1)[-1] for word in words[:3])


def downsample(samples: list[tuple[float, int]]) -> list[list[float]]:
    """At most TIMELINE_POINTS [seconds, MiB] points, each the largest sample of its stretch (peaks survive)."""
    if not samples:
        return []
    step = max(1, -(-len(samples) // TIMELINE_POINTS))
    points = []
    for first in range(0, len(samples), step):
        part = samples[first:first + step]
        at, rss = max(part, key=lambda s: s[1])
        points.append([round(at, 2), round(rss / MIB, 1)])
    return points


def usage() -> dict:
    """Peak RSS and CPU seconds of this process and of its reaped children (ffmpeg)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"ru_maxrss_bytes": me.ru_maxrss * 1024, "ru_maxrss_children_bytes": children.ru_maxrss * 1024,
            "cpu_s": me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime}


def measure_direct(args: argparse.Namespace) -> dict:
    """run_task on one file in this process: RSS after the imports, then the task's peak, time and chunks."""
    sampler = RssSampler()
    sampler.start()
    from pipeline.config import load_config
    from pipeline.data.sources import SourceFile
    from pipeline.layout import RunLayout
    from pipeline.preprocess.task import Task, run_task

    imported = proc_status()
    config = load_config(args.config)
    RunLayout(config.run_dir).features.folder.mkdir(parents=True, exist_ok=True)
    source = SourceFile(path=args.file, label="long", speaker="long", split="train")
    before, started = usage(), time.perf_counter()
    summary = run_task(Task(0, (source,)), config.preprocess, config.data.sample_rate, str(config.run_dir),
                       str(config.data.root))
    wall, after = time.perf_counter() - started, usage()
    return {"rss_after_imports_bytes": imported["VmRSS"], "hwm_after_imports_bytes": imported["VmHWM"],
            "peak_rss_bytes": after["ru_maxrss_bytes"],
            "peak_rss_largest_child_bytes": after["ru_maxrss_children_bytes"],
            "wall_s": round(wall, 2), "cpu_s": round(after["cpu_s"] - before["cpu_s"], 2),
            "chunks": summary.chunks, "rejects": summary.rejects, **sampler.stop()}


def warm_worker() -> dict:
    """Runs on the Dask worker: import what a task imports, so that its RSS after imports is known before the
    recording; its pid, to tell a restarted worker from the first."""
    import pipeline.preprocess.task  # noqa: F401

    return {"pid": os.getpid(), **proc_status()}


def worker_usage() -> dict:
    """Runs on the Dask worker (client.run): its pid and peak RSS since it started."""
    return {"pid": os.getpid(), **usage()}


def worker_memory_mb(config, rss: int, margin_mb: float) -> float:
    """preprocess.worker_memory_mb that leaves `margin_mb` for a block: the worker's RSS, the pipeline's own batch
    estimate and the margin, over Dask's pause fraction (which memory.block_planner plans against)."""
    import dask

    from pipeline.preprocess.memory import batch_bytes
    from pipeline.preprocess.task import BATCH_CHUNKS

    pause = dask.config.get("distributed.worker.memory.pause", 0.8) or 0.8
    need = rss + batch_bytes(config.preprocess, config.data.sample_rate, BATCH_CHUNKS) + margin_mb * 1e6
    return round(need / pause / 1e6, 1)


def measure_dask(args: argparse.Namespace) -> dict:
    """`preprocess` through a LocalCluster of one worker with a memory limit: completed or not, the worker's
    peak, its restarts, and the run's exception."""
    sampler = RssSampler(descendants=True)
    sampler.start()
    from distributed import Client, LocalCluster

    from pipeline.config import load_config
    from pipeline.preprocess.run import preprocess

    config = load_config(args.config)
    record: dict = {"memory_limit": args.memory_limit}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit=args.memory_limit,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        warm = client.submit(warm_worker, pure=False).result()
        record.update(worker_pid_at_start=warm["pid"], rss_after_imports_bytes=warm["VmRSS"])
        if args.worker_memory_margin_mb is not None:
            record["worker_memory_mb"] = worker_memory_mb(config, warm["VmRSS"], args.worker_memory_margin_mb)
            config = load_config(args.config, [f"preprocess.worker_memory_mb={record['worker_memory_mb']}"])
        started = time.perf_counter()
        try:
            summary = preprocess(config, client.get_executor(retries=DASK_RETRIES))
            record.update(status="completed", chunks=summary.chunks, rejected_files=summary.rejected_files)
        except Exception as err:  # noqa: BLE001 - what the run ends with is the measurement
            record.update(status="failed", error=f"{type(err).__name__}: {err}"[:2000])
        record["wall_s"] = round(time.perf_counter() - started, 2)
        final = next(iter(client.run(worker_usage).values()), {})
    record.update(worker_pid_at_end=final.get("pid"), worker_peak_rss_bytes=final.get("ru_maxrss_bytes"),
                  worker_peak_rss_largest_child_bytes=final.get("ru_maxrss_children_bytes"),
                  worker_restarted=final.get("pid") != warm["pid"], **sampler.stop())
    return record


def measure_main(args: argparse.Namespace) -> None:
    """The internal `measure` command: one measurement, its record as JSON, with the code it ran."""
    record = measure_direct(args) if args.mode == "direct" else measure_dask(args)
    from train_memory_scaling import code_identity

    identity = code_identity()
    record["code_identity"] = {key: identity.get(key) for key in ("package", "commit", "source_sha256",
                                                         "uncommitted_changes_in_pipeline")}
    args.out.write_text(json.dumps(record, indent=1))


# The runs, from the parent process.


WORKER_ENV = {"MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "OPENBLAS_NUM_THREADS": "1"}
"""What Dask's nanny sets in every worker it spawns (distributed.nanny.pre-spawn-environ); the direct runs get the
same, so that they measure what a task costs inside a worker."""


def write_config(path: Path, root: str, run_dir: Path) -> Path:
    """configs/demo.yaml with its preprocess settings as they are, the data root and run folder of one run."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config["name"] = run_dir.name
    config["run_dir"] = str(run_dir)
    config["data"] = {**config["data"], "source": "folder", "root": root, "sample_rate": TARGET_RATE}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_manifest(run_dir: Path, files: list[tuple[str, str]]) -> None:
    """RUN_DIR/manifest.csv of (path, label) files, all in the training split, as `pipeline data manifest` writes
    it (its columns have not changed since the before commit)."""
    import csv

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "speaker", "split"])
        writer.writerows([path, label, label, "train"] for path, label in files)


def nanny_counts(log: Path) -> dict[str, int]:
    """How often the Dask worker's nanny warned about memory or restarted the worker (lines of its stderr)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    return {key: text.count(pattern) for key, pattern in NANNY_PATTERNS.items()}


def run_measure(mode: str, config: Path, file: str, pythonpath: str | None, out: Path, timeout: float,
                extra: list[str] = ()) -> dict:
    """This script's `measure` command in a fresh interpreter (PYTHONPATH: the code under test, or none for the
    working tree's), with the machine's load meanwhile; a failure is a record with the output's tail."""
    from benchlib import CpuMeter

    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **WORKER_ENV}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, str(Path(__file__).resolve()), "measure", "--mode", mode, "--config", str(config),
               "--file", file, "--out", str(out), *extra]
    log = out.with_suffix(".log")
    meter = CpuMeter()
    try:
        with open(log, "w") as stderr:
            done = subprocess.run(command, env=env, stdout=stderr, stderr=subprocess.STDOUT, timeout=timeout)
        status = None if done.returncode == 0 else f"exit status {done.returncode}"
    except subprocess.TimeoutExpired:
        status = f"timed out after {timeout:.0f} s"
    load = meter.stop()
    if status or not out.is_file():
        return {"status": f"failed: {status or 'no record'}", "output_tail": log.read_text(errors="replace")[-3000:],
                "machine_load": load, **nanny_counts(log)}
    record = json.loads(out.read_text())
    record.setdefault("status", "completed")
    return {**record, "machine_load": load, "nanny_log": nanny_counts(log) if mode == "dask" else None}


def outputs_on_disk(run_dir: Path) -> dict:
    """What the run wrote, counted from the files themselves: rows of every shard's chunks.csv and of each
    feature array, and the images in the tars."""
    import csv
    import tarfile

    import numpy as np

    counts: dict[str, int] = {"chunks_csv_rows": 0}
    for shard in sorted((run_dir / "features").glob("shard-*")):
        if not shard.is_dir():
            continue
        with open(shard / "chunks.csv", newline="") as f:
            counts["chunks_csv_rows"] += sum(1 for _ in csv.DictReader(f))
        for array in sorted(shard.glob("*.npy")):
            key = f"{array.stem}_rows"
            counts[key] = counts.get(key, 0) + int(np.load(array, mmap_mode="r").shape[0])
    for tar in sorted((run_dir / "images").glob("*/shard-*.tar")):
        key = f"{tar.parent.name}_images"
        with tarfile.open(tar) as members:
            counts[key] = counts.get(key, 0) + sum(m.name.endswith(".png") for m in members)
    return counts


def chunk_check(record: dict, counts: dict, expected: int) -> str:
    """"ok" when the task's chunk count, every count on disk and the recording's length agree."""
    found = {"reported": record.get("chunks"), **counts}
    wrong = {key: value for key, value in found.items() if value != expected}
    return "ok" if not wrong else f"expected {expected} chunks, found {wrong}"


def measure_recording(rec: dict, code: str, mode: str, args: argparse.Namespace, pythonpath: str | None,
                      tag: str) -> dict:
    """One run of one recording on one code version: config, manifest, the subprocess, the check of its outputs;
    the run folder is removed afterwards (a 4 h run writes ~0.3 GB)."""
    scratch = args.work.resolve() / "runs" / f"{rec['name']}-{code}-{mode}-{tag}"
    shutil.rmtree(scratch, ignore_errors=True)
    run_dir = scratch / "run"
    write_manifest(run_dir, [(rec["file"], "long")])
    config = write_config(scratch / "config.yaml", rec["root"], run_dir)
    print(f"measure: {rec['name']} {code} {mode} {tag}", flush=True)
    timeout = 600 + 8 * rec["audio_seconds"] / 60 * (4 if mode == "dask" and code == "before" else 1)
    extra = ["--memory-limit", args.memory_limit] if mode == "dask" else []
    record = run_measure(mode, config, rec["file"], pythonpath, scratch / "record.json", timeout, extra)
    if record["status"] == "completed":
        expected = expected_chunks(rec["audio_seconds"])
        record["chunks_check"] = chunk_check(record, outputs_on_disk(run_dir), expected)
        record["chunks_per_s"] = round(record["chunks"] / record["wall_s"], 2) if record.get("chunks") else None
        record["audio_s_per_wall_s"] = round(rec["audio_seconds"] / record["wall_s"], 1)
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"measure: {rec['name']} {code} {mode}: {brief(record)}", flush=True)
    return record


def brief(record: dict) -> str:
    """One line of a record for the console."""
    peak = record.get("peak_rss_bytes") or record.get("worker_peak_rss_bytes") or 0
    return (f"{record['status']}, peak {peak / MIB:.0f} MiB, {record.get('wall_s')} s, chunks "
            f"{record.get('chunks')} ({record.get('chunks_check', '-')}) {record.get('error', '')[:200]}")


# The arms: direct and Dask runs, before and after, and what is not run.


def worktree(ref: str, code: str) -> Path:
    """A detached worktree of `ref` under $TMPDIR (the repository's history has it, so a clean clone runs this);
    `remove_worktree` takes it away."""
    path = Path(tempfile.mkdtemp(prefix=f"long-recordings-{code}-")) / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), ref], check=True)
    return path


def remove_worktree(path: Path) -> None:
    """Take a worktree away, whatever happened, so that the checkout is left as it was found."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)
    shutil.rmtree(path.parent, ignore_errors=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=False)


def runs_before(rec: dict, args: argparse.Namespace) -> bool:
    """Whether the before code runs at this length (`--before-minutes`); the others would not fit in memory."""
    return rec["minutes"] in args.before_minutes


def combine(rec: dict, code: str, mode: str, repeats: list[dict]) -> dict:
    """One entry from its repeats: memory the largest, timings the median, spreads of both; a failed repeat makes
    the entry failed (its record is kept in `repeats`)."""
    from benchlib import spread

    entry = {"recording": rec["name"], "audio_seconds": rec["audio_seconds"], "code": code, "mode": mode,
             "status": next((r["status"] for r in repeats if r["status"] != "completed"), "completed")}
    done = [r for r in repeats if r["status"] == "completed" and "wall_s" in r]
    peak_key = "peak_rss_bytes" if mode == "direct" else "worker_peak_rss_bytes"
    if not done or not all(r.get(peak_key) for r in done):
        failed = next(r for r in repeats if r["status"] != "completed")
        entry.update({key: failed[key] for key in ("error", "sampled_peak_rss_bytes", "nanny_log", "wall_s")
                      if key in failed})
        return {**entry, "repeats": repeats}
    entry.update({key: max(r[key] for r in done) for key in (peak_key, "rss_after_imports_bytes",
                                                              "sampled_peak_rss_bytes")})
    entry.update({key: statistics.median(r[key] for r in done) for key in ("wall_s", "chunks_per_s") if key in done[0]})
    entry["chunks"], entry["chunks_check"] = done[0].get("chunks"), done[0].get("chunks_check")
    entry["peak_increase_over_imports_bytes"] = entry[peak_key] - entry["rss_after_imports_bytes"]
    entry["spread"] = {"peak_rss_mib": spread([r[peak_key] / MIB for r in done]),
                       "wall_s": spread([r["wall_s"] for r in done])}
    return {**entry, "repeats": repeats}


def direct_arm(recs: list[dict], args: argparse.Namespace, trees: dict) -> list[dict]:
    """Every recording in fresh processes, after and (where it runs) before, their order alternating per repeat.
    `trees` has the worktree each code runs from (none: the working tree, for `after` without `--after`)."""
    entries = []
    for rec in recs:
        codes = ["after"] + (["before"] if trees["before"] and runs_before(rec, args) else [])
        count = args.short_repeats if rec["minutes"] <= 10 else args.repeats
        records: dict[str, list[dict]] = {code: [] for code in codes}
        for k in range(count):
            for code in codes if k % 2 == 0 else codes[::-1]:
                records[code].append(measure_recording(rec, code, "direct", args, trees[code], f"r{k + 1}"))
        entries += [combine(rec, code, "direct", records[code]) for code in codes]
    return entries


def dask_arm(recs: list[dict], args: argparse.Namespace, trees: dict) -> list[dict]:
    """Every recording through one Dask worker at the memory limit, once; the before code on the WAVs it runs at
    (the compressed ones only after, to keep the runtime down)."""
    entries = []
    for rec in recs:
        entries.append(combine(rec, "after", "dask",
                               [measure_recording(rec, "after", "dask", args, trees["after"], "r1")]))
        if trees["before"] and runs_before(rec, args) and rec["format"] == "wav":
            entries.append(combine(rec, "before", "dask",
                                   [measure_recording(rec, "before", "dask", args, trees["before"], "r1")]))
    return entries


def memory_available() -> int:
    """MemAvailable in bytes: what a skipped before run is compared with."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def linear_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(slope, intercept) of a least-squares line through (x, y) points (two or more)."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x in xs)
    return slope, mean_y - slope * mean_x


def not_run_before(recs: list[dict], entries: list[dict], args: argparse.Namespace) -> list[dict]:
    """The WAVs the before code does not run at: each with its peak extrapolated from the measured before peaks
    (linear in the audio's length), which is the reason it is not run."""
    seconds = {rec["name"]: rec["audio_seconds"] for rec in recs}
    points = [(seconds[e["recording"]], e["peak_rss_bytes"]) for e in entries
              if e["code"] == "before" and e["mode"] == "direct" and e.get("peak_rss_bytes")
              and e["recording"].startswith("wav-")]
    out = []
    for rec in recs:
        if rec["format"] != "wav" or runs_before(rec, args):
            continue
        entry = {"recording": rec["name"], "code": "before", "mode": "direct", "status": "not run"}
        if len(points) >= 2:
            slope, intercept = linear_fit(points)
            estimate = slope * rec["audio_seconds"] + intercept
            available = memory_available()
            entry.update(estimated_peak_rss_bytes=round(estimate), memory_available_bytes=available,
                         fit={"bytes_per_audio_hour": round(slope * 3600), "intercept_bytes": round(intercept),
                              "from_audio_seconds": [x for x, _ in points]},
                         reason=f"not in --before-minutes: its peak is estimated at {estimate / 1e9:.1f} GB "
                                f"(linear in length from the measured before peaks: {slope * 3600 / 1e9:.2f} GB "
                                f"per audio hour + {intercept / 1e9:.2f} GB), "
                                + ("over" if estimate > MEMORY_HEADROOM * available else "under")
                                + f" {MEMORY_HEADROOM:.0%} of this machine's MemAvailable "
                                  f"({available / 1e9:.1f} GB) when it was skipped")
        else:
            entry["reason"] = "not in --before-minutes, and fewer than 2 before runs to extrapolate from"
        out.append(entry)
    return out


# The memory check: a file too big for the worker is a reject.


MEMORY_CASES = {
    "wide_small_limit": {"rate": 96000, "channels": 128, "seconds": 4, "margin_mb": WIDE_MARGIN_MB,
                         "codes": ["after"]},
    "wider_than_worker": {"rate": 192000, "channels": 1024, "seconds": 3.5, "margin_mb": None,
                          "codes": ["after", "before"]},
}
"""The files that cannot fit, and how: under a small `preprocess.worker_memory_mb` (a setting the before code does
not have), or under the 2 GB worker's own limit, which the before code is run against too."""
COMPANION_SECONDS = 30


def memory_case(name: str, case: dict, args: argparse.Namespace) -> dict:
    """The case's data root: its wide file and a 30 s stereo 48 kHz companion that fits, in folders of their own."""
    work = args.work.resolve()
    group = f"memory-{name}"
    wide = recording(work, f"wide-{case['channels']}ch-{case['rate'] // 1000}k-{case['seconds']}s",
                     case["seconds"] / 60, "wav", case["rate"], case["channels"], "wide", group)
    stereo = recording(work, f"stereo-{COMPANION_SECONDS}s", COMPANION_SECONDS / 60, "wav", label="stereo",
                       group=group)
    return {"wide": wide, "stereo": stereo, "root": wide["root"]}


def read_rejects(run_dir: Path) -> list[dict]:
    """rejects.csv of a run: where a file too big for the worker must end up."""
    import csv

    path = run_dir / "features" / "rejects.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def memory_check_run(name: str, case: dict, files: dict, code: str, args: argparse.Namespace,
                     trees: dict) -> dict:
    """One preprocessing run of the case through the Dask worker: completed or not, the worker's peak, and
    rejects.csv, which should name the wide file and only it."""
    scratch = args.work.resolve() / "runs" / f"memory-{name}-{code}"
    shutil.rmtree(scratch, ignore_errors=True)
    run_dir = scratch / "run"
    write_manifest(run_dir, [(files["wide"]["file"], "wide"), (files["stereo"]["file"], "stereo")])
    config = write_config(scratch / "config.yaml", files["root"], run_dir)
    extra = ["--memory-limit", args.memory_limit]
    if case["margin_mb"] is not None:
        extra += ["--worker-memory-margin-mb", str(case["margin_mb"])]
    print(f"memory check: {name} {code}", flush=True)
    record = run_measure("dask", config, "", trees[code], scratch / "record.json", 900, extra)
    record["rejects"] = read_rejects(run_dir)
    wide_rejected = [r for r in record["rejects"] if r["path"] == files["wide"]["file"]]
    record["verdict"] = verdict(record, bool(wide_rejected))
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"memory check: {name} {code}: {record['verdict']}; {brief(record)}", flush=True)
    return {"case": name, "code": code, "wide_file": describe(files["wide"]), "companion": describe(files["stereo"]),
            **record}


def verdict(record: dict, wide_rejected: bool) -> str:
    """What the run made of the file that cannot fit, in words."""
    if record["status"] == "completed" and wide_rejected and len(record["rejects"]) == 1 \
            and record.get("chunks") == COMPANION_SECONDS // 3:
        return "a reject, the run completed with the other file's chunks"
    if "KilledWorker" in record.get("error", ""):
        return (f"KilledWorker: the run failed, its worker killed and restarted "
                f"{record.get('nanny_log', {}).get('restarts')} times by the nanny")
    return "not a clean reject: see status, error, rejects and chunks"


def memory_checks(args: argparse.Namespace, trees: dict) -> list[dict]:
    """Every MEMORY_CASES case on each code version it names (before only with a worktree)."""
    out = []
    for name, case in MEMORY_CASES.items():
        files = memory_case(name, case, args)
        out += [memory_check_run(name, case, files, code, args, trees)
                for code in case["codes"] if code == "after" or trees["before"]]
    return out


def describe(rec: dict) -> dict:
    """A recording as the JSON records it: no absolute path."""
    return {key: value for key, value in rec.items() if key not in ("root", "path")}


# The JSON and the table.


def planned_bytes(rec: dict) -> dict | None:
    """What pipeline.preprocess.memory expects a file to cost over the worker's resident memory (a feature batch
    and a block of BLOCK_SECONDS), beside which the measured increase can be read; None on code without it."""
    try:
        from pipeline.audio import BLOCK_SECONDS, AudioInfo
        from pipeline.config_types import PreprocessConfig
        from pipeline.preprocess.memory import batch_bytes, block_bytes_per_second
        from pipeline.preprocess.task import BATCH_CHUNKS
    except ImportError:
        return None
    import yaml

    settings = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["preprocess"]
    config = PreprocessConfig(**settings)
    batch = batch_bytes(config, TARGET_RATE, BATCH_CHUNKS)
    block = BLOCK_SECONDS * block_bytes_per_second(AudioInfo(rec["rate"], rec["channels"], rec["format"]),
                                                   TARGET_RATE)
    return {"batch_bytes": batch, "block_bytes": round(block), "total_bytes": round(batch + block)}


def summary(recs: list[dict], entries: list[dict]) -> dict:
    """Against the goal: the largest after peak per worker; growth with length (MiB per audio hour) per code and
    mode over the WAVs; before/after at each length."""
    seconds = {rec["name"]: rec["audio_seconds"] for rec in recs}
    peak = {(e["recording"], e["code"], e["mode"]): e.get("peak_rss_bytes") or e.get("worker_peak_rss_bytes")
            for e in entries}
    after = [value for (_, code, _), value in peak.items() if code == "after" and value]
    growth = {}
    for code in ("before", "after"):
        for mode in ("direct", "dask"):
            points = [(seconds[r] / 3600, v / MIB) for (r, c, m), v in peak.items()
                      if c == code and m == mode and v and r.startswith("wav-")]
            if len(points) >= 2:
                growth[f"{code}_{mode}_mib_per_audio_hour"] = round(linear_fit(points)[0], 1)
            past = [(hours, mib) for hours, mib in points if hours * 3600 >= FULL_BATCH_SECONDS]
            if len(past) >= 2:
                growth[f"{code}_{mode}_mib_per_audio_hour_past_one_batch"] = round(linear_fit(past)[0], 1)
    ratios = {r: round(peak[(r, "before", "direct")] / peak[(r, "after", "direct")], 2) for r in seconds
              if peak.get((r, "before", "direct")) and peak.get((r, "after", "direct"))}
    hashes = sorted({r["code_identity"]["source_sha256"] for e in entries if e["code"] == "after"
                     for r in e.get("repeats", []) if r.get("code_identity")})
    return {"goal_bytes_per_worker": GOAL_BYTES, "after_source_sha256_seen": hashes,
            "planned_vs_measured_mib": planned_vs_measured(recs, entries),
            "after_largest_peak_bytes": max(after) if after else None,
            "after_meets_goal": bool(after) and max(after) <= GOAL_BYTES,
            "peak_growth": growth, "before_over_after_peak_direct": ratios}


def planned_vs_measured(recs: list[dict], entries: list[dict]) -> dict:
    """Per recording: pipeline.preprocess.memory's estimate of what the file adds (MiB) beside what the after runs
    measured above their imports (direct) and above the warmed worker (dask)."""
    out = {}
    for rec in recs:
        if not rec.get("planned_bytes"):
            continue
        row = {"planned": round(rec["planned_bytes"]["total_bytes"] / MIB, 1)}
        for e in entries:
            if e["recording"] == rec["name"] and e["code"] == "after" and e.get("peak_increase_over_imports_bytes"):
                row[f"measured_{e['mode']}"] = round(e["peak_increase_over_imports_bytes"] / MIB, 1)
        out[rec["name"]] = row
    return out


def table(recs: list[dict], entries: list[dict]) -> str:
    """The console table: per recording, peak RSS before/after (direct), the Dask worker's, time and chunks."""
    rows = ["| recording | audio s | peak before (direct) | peak after (direct) | worker peak after (dask, "
            "2 GB) | worker before (dask) | after wall s | chunks | chunks/s | check |", "|" + "---|" * 10]
    index = {(e["recording"], e["code"], e["mode"]): e for e in entries}

    def peak(name: str, code: str, mode: str) -> str:
        entry = index.get((name, code, mode))
        if not entry:
            return "-"
        value = entry.get("peak_rss_bytes") or entry.get("worker_peak_rss_bytes")
        if value:
            return f"{value / MIB:,.0f} MiB" + ("" if entry["status"] == "completed" else f" ({entry['status']})")
        if entry.get("estimated_peak_rss_bytes"):
            return f"not run ({entry['estimated_peak_rss_bytes'] / MIB:,.0f} MiB est.)"
        if "KilledWorker" in entry.get("error", ""):
            return (f"KilledWorker, {(entry.get('nanny_log') or {}).get('restarts')} restarts (sampled "
                    f"{entry.get('sampled_peak_rss_bytes', 0) / MIB:,.0f} MiB)")
        return entry["status"] + f": {entry.get('error', '')[:60]}"

    for rec in recs:
        after = index.get((rec["name"], "after", "direct"), {})
        rows.append(f"| {rec['name']} | {rec['audio_seconds']:g} | {peak(rec['name'], 'before', 'direct')} | "
                    f"{peak(rec['name'], 'after', 'direct')} | {peak(rec['name'], 'after', 'dask')} | "
                    f"{peak(rec['name'], 'before', 'dask')} | {after.get('wall_s')} | {after.get('chunks')} | "
                    f"{after.get('chunks_per_s')} | {after.get('chunks_check')} |")
    return "\n".join(rows)


NOTES = [
    "peak_rss_bytes (direct) is ru_maxrss of the measuring process after run_task returned: the interpreter, the "
    "imports (rss_after_imports_bytes: torch, torchaudio, numpy, soundfile, the pipeline) and the task; "
    "peak_increase_over_imports_bytes is what the task added. worker_peak_rss_bytes (dask) is ru_maxrss of the "
    "worker process, read in it after the run; it includes distributed's own imports and the warm-up task. A "
    "worker the nanny restarted reports only its last life, so sampled_peak_rss_bytes (the largest descendant "
    "process every 0.25 s) is the figure for a run with restarts, a lower bound of the true peak.",
    "ffmpeg (the MP3) is a child process of the worker, not counted in the worker's RSS and not watched by Dask's "
    "nanny. Its real RSS is in sampled_processes (the largest sample of each descendant process). "
    "peak_rss_largest_child_bytes (RUSAGE_CHILDREN) is not ffmpeg's: Python starts it with vfork, and Linux records "
    "the memory the child shared with its parent up to exec as the child's ru_maxrss, so it shows the parent's RSS "
    "when ffmpeg started (~550 MB here); the ~64 MB in the Dask runs is the nanny's spawned helper's likewise.",
    "The direct runs get the environment Dask's nanny gives its workers (MALLOC_TRIM_THRESHOLD_=65536, one "
    "OpenMP/MKL/OpenBLAS thread); run_task sets one torch thread itself.",
    "planned_bytes is pipeline.preprocess.memory's estimate of a file's cost above the worker's resident memory "
    "(a batch of 256 chunks and a 20 s block), the figure its memory check plans with; summary."
    "planned_vs_measured_mib sets it beside peak_increase_over_imports_bytes of the after runs (the dask figure is "
    "over the warmed worker's RSS).",
    "A feature batch is 256 chunks (12.8 min of audio at 3 s): a shorter recording never fills one, so its peak is "
    "lower for that reason alone; peak_growth's *_past_one_batch slopes use only the recordings past one batch, "
    "and those are the figures that say whether memory grows with length.",
    "after_source_sha256_seen: the hash of the pipeline package's source in every after run; more than one means "
    "the working tree changed while the benchmark ran (other engineers edit it): results[].repeats[].code_identity.",
    "Wall times include reading the file, which the generator has just written, so it is likely in the page "
    "cache; on a shared 2-core machine they are loose (machine_load per run), memory is not affected.",
]


def write_json(out: Path, result: dict) -> None:
    """The result with every path of this machine made portable (tests/test_committed_files.py checks)."""
    from train_memory_scaling import scrub

    from pipeline.io import atomic_write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, scrub(result))


def run_all(args: argparse.Namespace, recs: list[dict]) -> tuple[list[dict], list[dict]]:
    """The direct runs, the extrapolated before runs, the Dask runs and the memory check, with the before code (and
    the after code, with `--after`) in worktrees for as long as they take; (entries, memory checks)."""
    wanted = {"before": args.before if args.before_minutes or not args.no_memory_check else None,
              "after": args.after}
    trees: dict[str, str | None] = dict.fromkeys(wanted)
    try:
        for code, ref in wanted.items():
            trees[code] = str(worktree(ref, code)) if ref else None
        entries = direct_arm(recs, args, trees)
        entries += not_run_before(recs, entries, args)
        if not args.no_dask:
            entries += dask_arm(recs, args, trees)
        checks = [] if args.no_memory_check else memory_checks(args, trees)
    finally:
        for tree in trees.values():
            if tree:
                remove_worktree(Path(tree))
    return entries, checks


def commit_of(ref: str | None) -> str | None:
    """The full commit a ref names (what the JSON records, since a branch moves)."""
    if not ref:
        return None
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", ref], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def parameters(args: argparse.Namespace) -> dict:
    """The settings a reader needs to redo the measurement: lengths, repeats, limits, the demo's preprocess."""
    import yaml

    return {"minutes": args.minutes, "formats": args.formats, "compressed_minutes": args.compressed_minutes,
            "before_ref": args.before, "after_ref": args.after, "before_minutes": args.before_minutes,
            "repeats": args.repeats,
            "short_repeats": args.short_repeats, "memory_limit": args.memory_limit, "dask_retries": DASK_RETRIES,
            "source": f"{SOURCE_RATE} Hz, {SOURCE_CHANNELS} channels, 16-bit", "sample_rate": TARGET_RATE,
            "preprocess": yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["preprocess"],
            "worker_env": WORKER_ENV, "work": args.work.as_posix(), "decoders": decoder_versions()}


def decoder_versions() -> dict:
    """libsndfile's and ffmpeg's versions: what decodes the recordings, on both sides."""
    import soundfile

    try:
        ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        ffmpeg = None
    return {"libsndfile": soundfile.__libsndfile_version__, "soundfile": soundfile.__version__, "ffmpeg": ffmpeg}


def main(argv: list[str] | None = None) -> None:
    """Generate the audio, run every arm, write the JSON, print the table, remove the audio (unless kept)."""
    args = parse_args(argv)
    if args.command == "measure":
        measure_main(args)
        return
    from benchlib import RESULTS, CpuMeter, command_line, contention_caveat, environment, now
    from train_memory_scaling import code_identity

    out = args.out or RESULTS / "long_recordings.json"
    started, meter, clock = now(), CpuMeter(), time.perf_counter()
    recs = recordings(args)
    generated_s = round(time.perf_counter() - clock, 1)
    entries, checks = run_all(args, recs)
    load = meter.stop()
    for rec in recs:
        rec["expected_chunks"], rec["planned_bytes"] = expected_chunks(rec["audio_seconds"]), planned_bytes(rec)
    notes = NOTES + [note for note in [contention_caveat(load)] if note]
    result = {"benchmark": "long_recordings", "method": __doc__.strip(), "measured_at": started,
              "command": command_line(), "runtime_s": load["wall_s"], "audio_generation_s": generated_s,
              "machine": environment(1), "machine_load": load, "parameters": parameters(args),
              "code": {"after": {"ref": args.after, "commit": commit_of(args.after)} if args.after else
                       {"ref": "working tree", **code_identity()},
                       "before": {"ref": args.before, "commit": commit_of(args.before)}},
              "recordings": [describe(rec) for rec in recs], "results": entries, "memory_check": checks,
              "summary": summary(recs, entries), "notes": notes}
    write_json(out, result)
    print(table(recs, entries))
    for check in checks:
        print(f"memory check {check['case']} ({check['code']}): {check['verdict']}; rejects {check['rejects']}")
    print(json.dumps(result["summary"], indent=1))
    print(f"long_recordings: {len(entries)} entries in {load['wall_s']:.0f} s -> {out}")
    if not args.keep_audio:
        shutil.rmtree(args.work.resolve() / "audio", ignore_errors=True)


if __name__ == "__main__":
    main()
