"""CPU: training samples/s of each model at world size 1 and 2 on this machine, through the real CLI.

For each model (`cnn`, `lstm`, `resnet50`, `densenet121` by default) it runs

    pipeline train configs/demo.yaml --force --set run_dir=SCRATCH/<model> --set train.model=<model>
        --set train.input=features --set train.epochs=2 --set 'train.world_sizes=[1,2]' ...

as a subprocess: one torchrun job per world size, gloo, CPU ranks with `--threads-per-rank` threads each
(OMP_NUM_THREADS and torch.set_num_threads, as the launcher sets them), batch 32 per rank, input `features`
(1-channel 64-mel log-mel maps of 301 frames, 3 s chunks of the demo). SCRATCH/<model> is a run folder of its own, so
configurations (named ws<n>-cpu-bs<b> under run_dir/configs/) never clash and runs/demo is not touched: its
features/ holds symlinks to the demo's shard folders, the demo's labels.json and stats.json (training statistics
of the full split), and an index.csv that keeps either every chunk or, for models too slow for a full epoch in the
time budget, an evenly spaced subset of each split (every k-th row in index order, so every class is present; val
and test keep the same fraction as train). Each configuration's metrics.json and steps.csv are read back.

Throughput is the worker's own figure: samples/s of all ranks over the epochs after the first (here epoch 2 of 2),
where an epoch's time runs from its first batch to the end of its validation pass. Beside it, the per-step spread
(mean, std, min, max of rank 0's step time in the steady epoch, from steps.csv) and the training-step throughput
(global batch / mean step time, no validation) are recorded. Every configuration runs `--repeats` times (world sizes
in alternating order), and each figure has mean, std, min and max over the repeats; the speedup is taken per repeat.
Writes results/benchmarks/train_models_cpu.json (see `--out`). `--estimate` only times a few steps of each model
in-process and prints how long the plan would take.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from benchlib import (
    DEMO_RUN_DIR,
    REPO,
    RESULTS,
    CpuMeter,
    command_line,
    contention_caveat,
    environment,
    now,
    portable,
    portable_command,
    require_features,
    spread,
)

from pipeline.config import load_config
from pipeline.io import atomic_write_json
from pipeline.train.environment import available_cores

MODELS = ["cnn", "lstm", "resnet50", "densenet121"]
# Training chunks per model (0: the whole split of 2180). Chosen from `--estimate` on the 2-core development machine
# (seconds per batch of 32 on one thread: cnn ~0.4-0.7, lstm ~0.9, resnet50 ~5, densenet121 ~4) so that all eight
# configurations, each run twice, fit in about 12 minutes.
DEFAULT_TRAIN_CHUNKS = {"cnn": 1088, "lstm": 640, "resnet50": 192, "densenet121": 192}


def training_parser(description: str, defaults: dict, train_chunks: dict[str, int]) -> argparse.ArgumentParser:
    """The arguments of a benchmark that trains models through `pipeline train` (this one and ddp_vs_horovod.py);
    `defaults` holds its own scratch, models, repeats, timeout and out, `train_chunks` its chunks per model."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--source-run-dir", type=Path, default=DEMO_RUN_DIR, help="run folder whose features are used")
    parser.add_argument("--scratch", type=Path, default=defaults["scratch"],
                        help="scratch run folders go under here (deleted first)")
    parser.add_argument("--models", nargs="+", default=defaults["models"], choices=MODELS)
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="the first epoch is excluded from throughput")
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--threads-per-rank", type=int, default=1)
    parser.add_argument("--train-chunks", action="append", default=[], metavar="MODEL=N",
                        help="training chunks for MODEL (0: all); default "
                             + ", ".join(f"{m}={n}" for m, n in train_chunks.items()))
    parser.add_argument("--repeats", type=int, default=defaults["repeats"], help="runs of every configuration")
    parser.add_argument("--timeout", type=int, default=defaults["timeout"], help="seconds per pipeline call")
    parser.add_argument("--keep-scratch", action="store_true", help="keep the scratch run folders (model.pt files)")
    parser.add_argument("--estimate", action="store_true",
                        help="only time 3 steps of each model in this process and print the plan's expected time")
    parser.add_argument("--out", type=Path, default=defaults["out"])
    return parser


def chunks_per_model(parser: argparse.ArgumentParser, args: argparse.Namespace, train_chunks: dict[str, int],
                     fallback: int = 0) -> dict[str, int]:
    """Training chunks of each model of `args.models`: `train_chunks` (else `fallback`), as --train-chunks says."""
    chunks = {m: train_chunks.get(m, fallback) for m in args.models}
    for item in args.train_chunks:
        model, sep, value = item.partition("=")
        if not sep or model not in args.models or not value.isdigit():
            parser.error(f"--train-chunks {item!r}: expected MODEL=N with MODEL one of {', '.join(args.models)}")
        chunks[model] = int(value)
    return chunks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = {"scratch": Path("/tmp/pipeline-bench"), "models": MODELS, "repeats": 2, "timeout": 900,
                "out": RESULTS / "train_models_cpu.json"}
    parser = training_parser(__doc__, defaults, DEFAULT_TRAIN_CHUNKS)
    args = parser.parse_args(argv)
    args.chunks = chunks_per_model(parser, args, DEFAULT_TRAIN_CHUNKS)
    return args


def read_index(run_dir: Path) -> tuple[list[str], list[dict]]:
    with open(run_dir / "features" / "index.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def evenly(rows: list[dict], n: int) -> list[dict]:
    """n rows spread evenly over `rows` (every k-th, in order); all of them when n is 0 or too large."""
    if n <= 0 or n >= len(rows):
        return rows
    return [rows[i * len(rows) // n] for i in range(n)]


def make_scratch(source: Path, target: Path, train_chunks: int, min_eval: int) -> dict:
    """A run folder whose features/ links the source's shards and keeps a subset of its index; returns the counts."""
    shutil.rmtree(target, ignore_errors=True)
    features = target / "features"
    features.mkdir(parents=True)
    for name in ("labels.json", "stats.json", "fingerprint.json"):  # the train stage checks the fingerprint
        shutil.copy2(source / "features" / name, features / name)
    for shard in sorted((source / "features").glob("shard-*")):
        (features / shard.name).symlink_to(shard.resolve(), target_is_directory=True)
    columns, rows = read_index(source)
    by_split = {split: [r for r in rows if r["split"] == split] for split in ("train", "val", "test")}
    kept = {"train": evenly(by_split["train"], train_chunks)}
    fraction = len(kept["train"]) / len(by_split["train"])
    for split in ("val", "test"):
        n = len(by_split[split]) if fraction >= 1 else max(min_eval, round(fraction * len(by_split[split])))
        kept[split] = evenly(by_split[split], n)
    with open(features / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for split in ("train", "val", "test"):
            writer.writerows(kept[split])
    counts = {split: len(kept[split]) for split in kept}
    full = {split: len(by_split[split]) for split in by_split}
    counts["description"] = ("full split" if fraction >= 1 else
                             f"train subset of {counts['train']} chunks (every ~{full['train'] / counts['train']:.1f}"
                             f"th of {full['train']}), val {counts['val']} of {full['val']}, test {counts['test']} of "
                             f"{full['test']}")
    counts["full"] = full
    return counts


def pipeline_command() -> list[str]:
    script = Path(sys.executable).parent / "pipeline"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline.cli"]


def run_model(args: argparse.Namespace, model: str, run_dir: Path, order: list[int],
              extra: dict[str, object] | None = None) -> tuple[list[str], float, int]:
    """`pipeline train` for one model, its world sizes in `order` (`extra`: more or other `--set` values, e.g.
    ddp_vs_horovod.py's backends and device); (command as recorded, with portable paths, wall seconds, exit
    status). The log goes to run_dir/bench.log."""
    world_sizes = "[" + ",".join(str(n) for n in order) + "]"
    overrides = {"name": f"bench-{model}", "run_dir": str(run_dir), "train.model": model, "train.input": "features",
                 "train.feature": "logmel", "train.epochs": args.epochs, "train.batch_size": args.batch_size,
                 "train.world_sizes": world_sizes, "train.threads_per_rank": args.threads_per_rank,
                 "train.device": "cpu", "train.loader_workers": 0, "train.skip_oversubscribed": True, **(extra or {})}
    command = [*pipeline_command(), "train", str(args.config), "--force"]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    start = time.perf_counter()
    with open(run_dir / "bench.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            status = process.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)  # the session started here: pipeline + torchrun/horovodrun
            process.wait()
            status = -1
    return portable_command(command), time.perf_counter() - start, status


def read_configuration(folder: Path) -> dict:
    """One row from a configuration's metrics.json and steps.csv (or skipped.json)."""
    if (folder / "skipped.json").exists():
        return {"skipped": json.loads((folder / "skipped.json").read_text())["reason"]}
    if not (folder / "metrics.json").exists():
        return {"failed": "no metrics.json", "log_tail": (folder / "train.log").read_text()[-2000:]
                if (folder / "train.log").exists() else None}
    m = json.loads((folder / "metrics.json").read_text())
    steady = {h["epoch"] for h in (m["history"][1:] or m["history"])}
    with open(folder / "steps.csv", newline="") as f:
        steps = [float(r["step_s"]) for r in csv.DictReader(f) if int(r["epoch"]) in steady]
    keep = ["world_size", "model", "input", "feature", "device", "threads_per_rank", "oversubscribed",
            "batch_size_per_rank", "global_batch_size", "train_samples", "steps_per_epoch", "epochs", "epochs_run",
            "samples_per_second", "samples_per_second_per_rank", "epoch_time_s", "mean_data_s",
            "mean_forward_backward_s", "mean_optimizer_s", "mean_allreduce_s", "mean_step_s", "peak_memory_bytes",
            "final_val_accuracy", "test_accuracy", "test_balanced_accuracy", "test_macro_f1",
            "rank_max_param_difference", "train_wall_s", "measured_at"]
    row = {key: m.get(key) for key in keep}
    row["peak_memory_mib"] = round(m["peak_memory_bytes"] / 2**20, 1)
    row["steady_epochs"] = sorted(steady)
    row["epoch_times_s"] = [round(h["epoch_time_s"], 2) for h in m["history"]]
    row["step_s_spread"] = spread(steps)
    del row["step_s_spread"]["values"]
    row["train_step_samples_per_second"] = m["global_batch_size"] / statistics.fmean(steps)
    return row


def scaling_notes(rows: list[dict], speedups: dict) -> list[str]:
    """One sentence per model and world size pair: speedup, and what happened to rank 0's step time."""
    notes = []
    for model, pairs in speedups.items():
        for pair, found in pairs.items():
            high, low = (int(part[2:]) for part in pair.split("/"))
            row = {r["world_size"]: r for r in rows if r["model"] == model}
            a, b = row[low]["mean_step_s"], row[high]["mean_step_s"]
            s = found["speedup"]
            text = (f"{model}: ws{high}/ws{low} speedup {s['mean']:.2f} (std {s['std']:.2f}, min {s['min']:.2f}, "
                    f"max {s['max']:.2f} over {s['n']} repeats; efficiency {found['efficiency_mean']:.2f}; training "
                    f"steps only {found['train_step_speedup']['mean']:.2f}). Rank 0's mean step went from "
                    f"{a['mean']:.3f} s (std over repeats {a['std']:.3f}) to {b['mean']:.3f} s (std {b['std']:.3f}), "
                    f"{b['mean'] / a['mean'] - 1:+.0%}; all-reduce time per step at ws{high}: "
                    f"{row[high]['mean_allreduce_s']['mean']:.3f} s (it overlaps backward, so it is not all added).")
            if s["max"] > high / low:
                text += (" A speedup above the ideal cannot come from DDP: in that repeat the per-rank step was faster "
                         "in the larger configuration, i.e. the two runs met different machine conditions.")
            notes.append(text)
    return notes


def estimate(args: argparse.Namespace) -> None:
    """Time 3 training steps of each model at --threads-per-rank threads and print the plan's expected time."""
    from torch import nn

    from pipeline.config import TrainConfig
    from pipeline.train.models import build_model, is_convolutional

    torch.set_num_threads(args.threads_per_rank)
    _, rows = read_index(args.source_run_dir)
    full_train = sum(r["split"] == "train" for r in rows)
    labels = json.loads((args.source_run_dir / "features" / "labels.json").read_text())
    total = 0.0
    for name in args.models:
        model = build_model(TrainConfig(model=name), len(labels), 1, 64)
        x, y = torch.randn(args.batch_size, 1, 64, 301), torch.randint(0, len(labels), (args.batch_size,))
        if is_convolutional(name):
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        optimizer, loss_fn = torch.optim.Adam(model.parameters()), nn.CrossEntropyLoss()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            loss_fn(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - start)
        step = min(times[1:])
        n = args.chunks[name] or full_train
        # training steps of all epochs at ideal scaling, validation/test at ~1/3 of a training step per sample,
        # ~12 s of start-up, test and saving per configuration, times the repeats
        seconds = args.repeats * sum(args.epochs * n / (ws * args.batch_size) * step * (1 + 0.22 / 3) + 12
                                     for ws in args.world_sizes)
        total += seconds
        print(f"{name}: {step:.2f} s per step of {args.batch_size} on {args.threads_per_rank} thread(s); "
              f"{n} training chunks -> about {seconds:.0f} s for world sizes "
              f"{args.world_sizes} x {args.repeats} repeat(s)", flush=True)
    print(f"plan: about {total / 60:.1f} minutes at ideal scaling on an idle machine")


def aggregate(model: str, ws: int, reps: list[dict], data: str) -> dict:
    """One row per model and world size: mean, std, min, max over the repeats, and the repeats themselves."""
    ok = [rep for rep in reps if "samples_per_second" in rep]
    row = {"model": model, "world_size": ws, "data": data, "repeats": len(reps), "repeats_ok": len(ok)}
    if ok:
        for key in ("train_samples", "steps_per_epoch", "batch_size_per_rank", "global_batch_size",
                    "threads_per_rank", "oversubscribed", "epochs", "input", "feature"):
            row[key] = ok[0][key]
        for key in ("samples_per_second", "train_step_samples_per_second", "samples_per_second_per_rank",
                    "epoch_time_s", "mean_data_s", "mean_forward_backward_s", "mean_optimizer_s", "mean_allreduce_s",
                    "mean_step_s", "peak_memory_mib", "final_val_accuracy", "test_accuracy"):
            row[key] = spread([rep[key] for rep in ok])
    row["per_repeat"] = reps
    return row


def speedup_of(by_ws: dict[int, list[dict]], high: int, low: int) -> dict | None:
    """ws`high`/ws`low` speedup per repeat (both configurations of the same repeat), with its spread."""
    pairs = [(h, lo) for h, lo in zip(by_ws[high], by_ws[low], strict=True)
             if "samples_per_second" in h and "samples_per_second" in lo]
    if not pairs:
        return None
    speedup = spread([h["samples_per_second"] / lo["samples_per_second"] for h, lo in pairs])
    steps = spread([h["train_step_samples_per_second"] / lo["train_step_samples_per_second"] for h, lo in pairs])
    low_sps = statistics.fmean(lo["samples_per_second"] for _, lo in pairs)
    high_sps = statistics.fmean(h["samples_per_second"] for h, _ in pairs)
    return {"speedup": speedup, "efficiency_mean": speedup["mean"] * low / high,
            "speedup_of_mean_throughput": high_sps / low_sps, "train_step_speedup": steps,
            "train_step_efficiency_mean": steps["mean"] * low / high}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_features(args.source_run_dir)
    if args.estimate:
        estimate(args)
        return
    base = load_config(args.config)
    started, total_meter = now(), CpuMeter()
    runs, notes, chunks = [], [], {}
    raw: dict[tuple[str, int], list[dict]] = {(m, ws): [] for m in args.models for ws in args.world_sizes}
    for repeat in range(1, args.repeats + 1):
        # The world sizes run in the given order in odd repeats and reversed in even ones, so that a slow start or
        # a drift in the machine's load does not always fall on the same configuration.
        order = args.world_sizes if repeat % 2 else args.world_sizes[::-1]
        for model in args.models:
            run_dir = args.scratch / model / f"repeat{repeat}"
            counts = make_scratch(args.source_run_dir, run_dir, args.chunks[model], min_eval=args.batch_size)
            chunks[model] = counts
            print(f"repeat {repeat}/{args.repeats}, {model}: {counts['description']}, world sizes {order}", flush=True)
            meter = CpuMeter()
            command, wall, status = run_model(args, model, run_dir, order)
            load = meter.stop()
            runs.append({"repeat": repeat, "model": model, "world_size_order": order, "command": command,
                         "wall_s": round(wall, 1), "exit_status": status, "machine_load": load})
            for ws in order:
                row = read_configuration(run_dir / "configs" / f"ws{ws}-cpu-bs{args.batch_size}")
                row["repeat"] = repeat
                raw[(model, ws)].append(row)
                if "samples_per_second" in row:
                    print(f"  ws{ws}: {row['samples_per_second']:.1f} samples/s (steps: "
                          f"{row['train_step_samples_per_second']:.1f} samples/s, step "
                          f"{row['step_s_spread']['mean']:.2f} +- {row['step_s_spread']['std']:.2f} s), test accuracy "
                          f"{row['test_accuracy']:.3f}, peak {row['peak_memory_mib']:.0f} MiB", flush=True)
                else:
                    print(f"  ws{ws}: {row.get('skipped') or row.get('failed')}", flush=True)
            print(f"  {wall:.0f} s wall, exit {status}", flush=True)
            caveat = contention_caveat(load)
            if caveat:
                notes.append(f"repeat {repeat}, {model}: {caveat}")
            if not args.keep_scratch and status == 0:
                shutil.rmtree(run_dir, ignore_errors=True)
    load = total_meter.stop()
    for model in args.models:
        with contextlib.suppress(OSError):
            (args.scratch / model).rmdir()  # only if every repeat's folder was removed
    rows = [aggregate(m, ws, raw[(m, ws)], chunks[m]["description"]) for m in args.models for ws in args.world_sizes]
    low = min(args.world_sizes)
    speedups = {}
    for model in args.models:
        by_ws = {ws: raw[(model, ws)] for ws in args.world_sizes}
        for ws in args.world_sizes:
            found = speedup_of(by_ws, ws, low) if ws != low else None
            if found:
                speedups.setdefault(model, {})[f"ws{ws}/ws{low}"] = found
    for model, pairs in speedups.items():
        for pair, found in pairs.items():
            s = found["speedup"]
            print(f"{model} {pair}: speedup {s['mean']:.2f} (std {s['std']:.2f}, min {s['min']:.2f}, max "
                  f"{s['max']:.2f} over {s['n']} repeats)", flush=True)
    subsets = {m: chunks[m]["description"] for m in args.models}
    notes[:0] = [
        "samples_per_second is the worker's figure: samples of all ranks in the steady epochs divided by their "
        "time, and an epoch's time ends after its validation pass, so validation (on every rank, each scoring "
        "every world-th chunk) is part of it. train_step_samples_per_second leaves validation out: global batch / "
        "mean step time of rank 0 in the steady epochs.",
        f"World sizes {args.world_sizes} with {args.threads_per_rank} thread(s) per rank on {available_cores()} "
        "cores: a world size whose ranks x threads equals the cores occupies every core, so anything else running "
        "on the machine (the OS, the launcher, gloo's threads, other users) takes time from the ranks.",
        "Data per model: " + "; ".join(f"{m}: {d}" for m, d in subsets.items()) + ". Throughput per sample does "
        "not depend on which chunks are used (same shape), but test accuracy after 2 epochs from scratch on a "
        "subset is no statement about what the model can reach; it is recorded to show the runs trained.",
        f"{args.repeats} repeat(s) of every configuration, world-size order alternating between repeats; each "
        "figure's spread (mean, std, min, max) is over the repeats, and each repeat keeps its own step-time spread "
        "(per_repeat[].step_s_spread, rank 0's steps in the steady epoch). The speedup is taken per repeat, from "
        "the two configurations of that repeat.",
    ]
    notes += scaling_notes(rows, speedups)
    caveat = contention_caveat(load)
    if caveat:
        notes.append(f"whole benchmark: {caveat}")
    result = {
        "benchmark": "train_models_cpu",
        "question": "CPU: samples/s of each model at world size 1 and 2 on this machine",
        "measured_at": started, "runtime_s": load["wall_s"],
        "command": command_line(),
        "environment": environment(args.threads_per_rank),
        "parameters": {"config": portable(args.config), "base_experiment": base.name, "models": args.models,
                       "world_sizes": args.world_sizes, "epochs": args.epochs, "steady_epochs": "all but the first",
                       "batch_size_per_rank": args.batch_size, "threads_per_rank": args.threads_per_rank,
                       "device": "cpu", "backend": "gloo (DDP)", "input": "features", "feature": "logmel",
                       "input_shape": [1, base.preprocess.n_mels, "~301 frames"],
                       "chunk_seconds": base.preprocess.chunk_seconds, "optimizer": "Adam", "lr": base.train.lr,
                       "loader_workers": 0, "train_chunks": {m: args.chunks[m] for m in args.models},
                       "data": {m: {k: v for k, v in c.items() if k != "description"} for m, c in chunks.items()},
                       "repeats": args.repeats},
        "method": __doc__.strip(),
        "machine_load": load,
        "runs": runs,
        "rows": rows,
        "speedup": speedups,
        "notes": notes,
    }
    atomic_write_json(args.out, result)
    print(f"train_models_cpu: {len(rows)} rows in {load['wall_s']:.0f} s -> {args.out}")
    for note in notes:
        print(f"- {note}")
    failed = sorted({r["model"] for r in runs if r["exit_status"] != 0})
    if failed:
        sys.exit(f"pipeline train failed for {', '.join(failed)}; logs in {args.scratch}/<model>/repeat<n>/bench.log "
                 "(kept)")


if __name__ == "__main__":
    main()
