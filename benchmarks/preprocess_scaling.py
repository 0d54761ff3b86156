"""Preprocessing scaling: chunks/s of the pipeline's preprocessing stage on a real Dask LocalCluster at several worker
counts, and the efficiency of each against one worker.

Issue target ("Preprocessing at cluster scale"): chunks/s at 1 and 2 workers on 2 cores with >= 90% efficiency,
where efficiency(n) = rate(n) / (n x rate(1)); and a script that measures the curve for any worker count, for larger
machines (`--workers 1 2 4 8 16`).

What one measurement does, for n workers:
1. empties the run folder (every feature shard, image and the gallery; the manifest stays), so every run starts
   from an empty features folder and does all the work;
2. starts the cluster the way `pipeline preprocess` does: `pipeline.preprocess.cluster.dask_executor` with
   `preprocess.workers: n` (a LocalCluster of n single-threaded worker processes), timed as `startup_s`;
3. warms the workers: n short tasks that import the pipeline's preprocessing modules (torch, torchaudio, ...) on
   the workers and report their process ids, so that each worker has one (`warmup_s`, and `warm_workers` says how
   many distinct workers answered);
4. times `pipeline.preprocess.run.preprocess(config, executor)`, the stage itself: all tasks submitted at once,
   then the index, statistics and gallery figure written by this process (`run_s`); chunks/s = chunks / run_s;
5. closes the cluster (`shutdown_s`).

So cluster start-up and the workers' module imports are EXCLUDED from chunks/s and reported beside it
(`chunks_per_second_including_startup` counts steps 2-4). The per-run work that does not shrink with more workers
(the gallery figure and the index, drawn in this process after the tasks) is INCLUDED and amortised by the workload:
by default the whole demo dataset (2,646 files, about 4,300 chunks); `--files-per-speaker N` takes N evenly spaced
files per speaker instead. Every worker count uses the same tasks (`--files-per-task`; by default the pipeline's 64,
lowered so that there are at least 8 tasks per worker at the largest count, so that the last tasks do not leave
workers idle).

The pipeline's settings are those of preprocess_vs_seed.py (`PIPELINE_PREPROCESS` there: 3 s chunks, log-mel and
MFCC, both as 288 px PNG images; `--set preprocess.KEY=VALUE` changes one). Worker counts run in alternating order
(ascending, then descending, ...) over `--repeats`, so that drift in the machine's load hits all counts alike; the
efficiency is taken per repeat against the smallest count of the same repeat. Each measurement also records how much
CPU other processes used meanwhile.

Writes results/benchmarks/preprocess_scaling.json; `--out RUN_DIR/preprocess_scaling.json` writes it into a run
folder instead, where `pipeline report RUN_DIR` draws it as the preprocessing scaling curve.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from pathlib import Path

from benchlib import (
    RESULTS,
    CpuMeter,
    command_line,
    environment,
    now,
    portable,
    portable_command,
    spread,
    write_result,
)
from preprocess_vs_seed import (
    DEFAULT_DATA_ROOT,
    PIPELINE_PREPROCESS,
    THREAD_ENV,
    _time_calls,
    audio_seconds,
    clear_run_dir,
    library_versions,
    select_sources,
    warm_page_cache,
    write_config,
)

from pipeline.train.environment import available_cores

TARGET = 0.90
ISSUE = ("Preprocessing at cluster scale: chunks/s of the preprocessing at 1 and 2 Dask workers on 2 cores, "
         "efficiency rate(n) / (n x rate(1)) >= 0.90")
DEFAULT_WORK_DIR = Path("/tmp/pipeline-bench/preprocess_scaling")


def _warm(i: int) -> int:
    """Runs on a worker: import what the preprocessing tasks import, hold the worker a moment (so the n warm-up
    tasks spread over the n workers), return the worker's process id."""
    import pipeline.preprocess.task  # noqa: F401

    time.sleep(0.5)
    return os.getpid()


def _warm_matplotlib() -> None:
    """Import pyplot and draw one text once in this process, where the gallery is drawn: otherwise the first
    measurement alone would pay for the import and the font loading (module imports are excluded, as in
    preprocess_vs_seed.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import pipeline.preprocess.gallery  # noqa: F401

    fig = plt.figure()
    fig.text(0.5, 0.5, "warm-up")
    fig.canvas.draw()
    plt.close(fig)


def measure(config_path: Path, overrides: list[str], n: int, gallery_times: list[float]) -> dict:
    from pipeline.config import load_config
    from pipeline.preprocess.cluster import dask_executor
    from pipeline.preprocess.run import preprocess

    config = load_config(config_path, [*overrides, f"preprocess.workers={n}"])
    clear_run_dir(Path(config.run_dir))
    gallery_times.clear()
    meter = CpuMeter()
    t0 = time.perf_counter()
    with dask_executor(config.preprocess) as executor:
        t_ready = time.perf_counter()
        pids = {f.result() for f in [executor.submit(_warm, i) for i in range(n)]}
        t_warm = time.perf_counter()
        summary = preprocess(config, executor)
        t_done = time.perf_counter()
    t_closed = time.perf_counter()
    load = meter.stop()
    run_s = t_done - t_warm
    return {"workers": n, "chunks": summary.chunks, "files": summary.files, "tasks": summary.tasks,
            "rejected_files": summary.rejected_files, "startup_s": t_ready - t0, "warmup_s": t_warm - t_ready,
            "warm_workers": len(pids), "run_s": run_s, "shutdown_s": t_closed - t_done,
            "gallery_s": sum(gallery_times), "chunks_per_second": summary.chunks / run_s,
            "chunks_per_second_including_startup": summary.chunks / (t_done - t0),
            "pipeline_summary_seconds": summary.runs[-1].seconds, "machine_load": load}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask worker counts to measure")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every worker count, alternating order")
    parser.add_argument("--files-per-speaker", type=int, default=None,
                        help="source files per speaker (default: every file of --data-root)")
    parser.add_argument("--files-per-task", type=int, default=None,
                        help="source files per Dask task (default: 64, or fewer for >= 8 tasks per worker)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help="folder-per-speaker dataset (built here with build_demo if missing)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="scratch run folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the pipeline's config, e.g. preprocess.image_format=jpeg")
    parser.add_argument("--out", type=Path, default=RESULTS / "preprocess_scaling.json",
                        help="result JSON; RUN_DIR/preprocess_scaling.json puts the curve in that run's report")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.workers):
        parser.error("--workers: counts must be >= 1")
    args.workers = sorted(set(args.workers))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from pipeline.config import load_config
    from pipeline.stages import data_stage

    for name in THREAD_ENV:  # inherited by the worker processes (Dask also sets OMP/MKL/OpenBLAS to 1)
        os.environ[name] = "1"
    os.environ["MPLBACKEND"] = "Agg"
    work = args.work_dir
    if work.exists():
        shutil.rmtree(work)
    sources = select_sources(args.data_root, args.files_per_speaker)
    files_per_task = args.files_per_task or max(1, min(64, len(sources) // (8 * max(args.workers))))
    config_path = write_config(work, sources, "preprocess_scaling")
    overrides = [f"preprocess.files_per_task={files_per_task}", *args.overrides]
    config = load_config(config_path, overrides)
    data_stage(config)  # the manifest, once, outside the timing
    warm_page_cache(sources)
    seconds_of_audio = audio_seconds(sources)
    gallery_times = _time_calls(("write_galleries",)).get("write_galleries", [])
    _warm_matplotlib()
    cores = available_cores()
    print(f"preprocess_scaling: {len(sources)} files ({seconds_of_audio / 60:.1f} min of audio), "
          f"{-(-len(sources) // files_per_task)} tasks of {files_per_task} files, workers {args.workers}, "
          f"{args.repeats} repeats, {cores} cores", flush=True)

    started, meter = now(), CpuMeter()
    repeats = []
    for r in range(args.repeats):
        order = args.workers if r % 2 == 0 else args.workers[::-1]
        runs = {}
        for n in order:
            runs[n] = measure(config_path, overrides, n, gallery_times)
            m = runs[n]
            print(f"  repeat {r + 1}/{args.repeats}, {n} worker(s): {m['chunks_per_second']:.1f} chunks/s "
                  f"({m['chunks']} chunks in {m['run_s']:.1f} s; start-up {m['startup_s']:.1f} s, warm-up "
                  f"{m['warmup_s']:.1f} s, gallery {m['gallery_s']:.1f} s; others used "
                  f"{m['machine_load'].get('other_processes_share_of_machine', 0):.0%} of the machine)", flush=True)
        base = args.workers[0]
        for n, m in runs.items():
            m["speedup"] = m["chunks_per_second"] / runs[base]["chunks_per_second"]
            m["efficiency"] = m["speedup"] / (n / base)
            m["efficiency_including_startup"] = (m["chunks_per_second_including_startup"]
                                                 / runs[base]["chunks_per_second_including_startup"]) / (n / base)
        repeats.append({"order": list(order), "runs": [runs[n] for n in order]})
    load = meter.stop()
    shutil.rmtree(work)

    def per_count(n: int, key: str) -> dict:
        return spread([run[key] for rep in repeats for run in rep["runs"] if run["workers"] == n])

    base = args.workers[0]
    rows = []
    for n in args.workers:
        rate = per_count(n, "chunks_per_second")
        rows.append({"workers": n, "oversubscribed": n > cores,
                     "chunks_per_second": rate, "speedup": per_count(n, "speedup"),
                     "efficiency": per_count(n, "efficiency"),
                     "efficiency_of_means": rate["mean"] / (n / base * per_count(base, "chunks_per_second")["mean"]),
                     "chunks_per_second_including_startup": per_count(n, "chunks_per_second_including_startup"),
                     "efficiency_including_startup": per_count(n, "efficiency_including_startup"),
                     "run_s": per_count(n, "run_s"), "startup_s": per_count(n, "startup_s"),
                     "warmup_s": per_count(n, "warmup_s"), "gallery_s": per_count(n, "gallery_s"),
                     "other_processes_share_of_machine": spread(
                         [run["machine_load"].get("other_processes_share_of_machine") or 0.0
                          for rep in repeats for run in rep["runs"] if run["workers"] == n])})
    first = repeats[0]["runs"][0]
    result = {
        "benchmark": "preprocess_scaling", "issue": ISSUE, "target_efficiency": TARGET,
        "measured_at": started, "runtime_s": load["wall_s"],
        "command": command_line(),
        "environment": {**environment(1), "bench_versions": library_versions()},
        "parameters": {"workers": args.workers, "repeats": args.repeats, "baseline_workers": base,
                       "files_per_speaker": args.files_per_speaker, "files": len(sources),
                       "audio_seconds": round(seconds_of_audio, 1), "chunks": first["chunks"],
                       "tasks": first["tasks"], "files_per_task": files_per_task,
                       "data_root": portable(args.data_root),
                       "cluster": "LocalCluster via pipeline.preprocess.cluster.dask_executor, threads_per_worker=1",
                       "pipeline_config": {"preprocess": {**PIPELINE_PREPROCESS},
                                           "overrides": portable_command(overrides)},
                       "pipeline_config_resolved": {**dataclasses.asdict(config.preprocess),
                                                    "scheduler_file": portable(config.preprocess.scheduler_file or "")
                                                    or None}},
        "method": __doc__.strip(),
        "machine_load": load,
        "rows": rows,
        "repeats": repeats,
    }
    notes = []
    for row in rows:
        eff, rate = row["efficiency"], row["chunks_per_second"]
        text = (f"{row['workers']} worker(s): {rate['mean']:.1f} chunks/s (std {rate['std']:.1f}, "
                f"{rate['min']:.1f}-{rate['max']:.1f})")
        if row["workers"] != base:
            verdict = "meets" if eff["mean"] >= TARGET else "misses"
            text += (f", efficiency {eff['mean']:.3f} (min {eff['min']:.3f}, max {eff['max']:.3f} over {eff['n']} "
                     f"repeats; {verdict} {TARGET:.2f}); with cluster start-up and warm-up counted "
                     f"{row['efficiency_including_startup']['mean']:.3f}")
        if row["oversubscribed"]:
            text += f"; more workers than the {cores} cores, so efficiency is bounded by the cores, not the code"
        notes.append(text + ".")
    gallery = rows[-1]["gallery_s"]["mean"]
    notes.append(
        f"Serial work per run that more workers do not shrink: the gallery figure ({gallery:.1f} s) and the index, "
        f"written by this process after the tasks; with {first['tasks']} tasks of {files_per_task} files, the "
        "last tasks can also leave workers idle. Both weigh less on a larger workload.")
    notes.append(
        f"On {cores} cores the client process (Dask scheduler, this script) shares the cores with the workers; at "
        f"{cores} workers it competes with them.")
    write_result(args.out, result, notes, load, "preprocess_scaling", args.repeats)


if __name__ == "__main__":
    main()
