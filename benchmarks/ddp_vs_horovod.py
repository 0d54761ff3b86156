"""PyTorch DDP against Horovod: training samples/s of the same models at world size 1 and 2, through the real CLI.

Per repeat and model (`cnn` and `resnet50` by default) it runs

    pipeline train configs/demo.yaml --force --set run_dir=SCRATCH/<model>/repeat<k> --set train.model=<model>
        --set 'train.backends=[ddp,horovod]' --set 'train.world_sizes=[1,2]' --set train.device=cpu ...

as a subprocess: one job per backend and world size, DDP's ranks started by torchrun (gloo on CPU, NCCL on CUDA),
Horovod's by `horovodrun --gloo` (its DistributedOptimizer, gloo on CPU; NCCL on CUDA where Horovod was built with
it). Same model, data, sampler, seed, batch 32 per rank, Adam, input `features` (1-channel 64-mel log-mel maps of
301 frames, 3 s chunks of the demo), `--threads-per-rank` threads per rank. `--device` is passed through as
train.device (`--device cuda` on a GPU machine: world size 2 needs two GPUs; a configuration the pipeline skips or
moves is recorded as it did). The backend order and the world-size order are reversed every other repeat, so a drift
in the machine's load does not always fall on the same backend or world size. DDP runs are named
ws<n>-<device>-bs<b> under run_dir/configs/, Horovod runs ws<n>-<device>-bs<b>-horovod; each one's metrics.json
(which names its `backend` and `launcher`) and steps.csv are read back. SCRATCH/<model>/repeat<k> is made as
train_models_cpu.py makes it: features/ links the demo's shards and keeps an evenly spaced subset of each split.

Throughput is the worker's own figure: samples/s of all ranks over the epochs after the first (epoch 2 of 2), an
epoch running from its first batch to the end of its validation pass; beside it the training-step throughput
(global batch / rank 0's mean step time, no validation) and the step split of the steady epochs: mean_data_s
(waiting for the batch), mean_forward_backward_s, mean_optimizer_s, mean_allreduce_s and mean_step_s.

The all-reduce columns are not comparable between the backends. DDP's is the sum of its gradient buckets' spans
(launch to completion) during backward, and its wait for them falls in forward+backward. Horovod's is one span per
step from the first gradient's launch (a hook during backward) to `synchronize()` returning in `optimizer.step()`,
so it includes backward compute that overlapped it, and its wait falls in the optimizer phase. Compare the step
times (mean_step_s) and samples/s; read the phases as where each backend's time went.

Summaries: per model, backend and world size the spread (mean, std, min, max, values) over the repeats; per model and
world size the horovod/ddp ratio of samples/s taken per repeat (the two runs of one repeat, same pipeline call),
with its spread, and the paired difference of each phase; per model and backend the ws2/ws1 speedup per repeat. The
machine's load is metered per pipeline call (`runs[].machine_load`) and for the whole benchmark. Writes
results/benchmarks/ddp_vs_horovod.json (`--out`); `--estimate` only times a few steps of each model in-process
and prints how long the plan would take.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

from benchlib import (
    RESULTS,
    CpuMeter,
    command_line,
    contention_caveat,
    environment,
    now,
    portable,
    require_features,
    spread,
    write_result,
)
from train_models_cpu import (
    aggregate,
    chunks_per_model,
    estimate,
    make_scratch,
    read_configuration,
    run_model,
    speedup_of,
    training_parser,
)

from pipeline.config import load_config
from pipeline.train.environment import available_cores

MODELS = ["cnn", "resnet50"]
BACKENDS = ["ddp", "horovod"]
PHASES = ["mean_data_s", "mean_forward_backward_s", "mean_optimizer_s", "mean_allreduce_s", "mean_step_s"]
# Training chunks per model (multiples of 64, so both world sizes get whole batches). Chosen from `--estimate` and a
# timed smoke run on the 2-core development machine (one thread per rank: cnn ~0.4 s, resnet50 ~4.6 s per batch of
# 32; ~15 s per run outside its training loop: start-up, test, saving) so that the default plan, 2 models x 2
# backends x 2 world sizes x 3 repeats, takes about 13 minutes on a quiet machine (resnet50 about two thirds of it).
DEFAULT_TRAIN_CHUNKS = {"cnn": 384, "resnet50": 128}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = {"scratch": Path("/tmp/pipeline-bench-horovod"), "models": MODELS, "repeats": 3, "timeout": 1200,
                "out": RESULTS / "ddp_vs_horovod.json"}
    parser = training_parser(__doc__, defaults, DEFAULT_TRAIN_CHUNKS)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="train.device")
    args = parser.parse_args(argv)
    args.chunks = chunks_per_model(parser, args, DEFAULT_TRAIN_CHUNKS, fallback=128)
    return args


def orders(repeat: int, args: argparse.Namespace) -> tuple[list[str], list[int]]:
    """Backends and world sizes as given in odd repeats, both reversed in even ones."""
    if repeat % 2:
        return list(BACKENDS), list(args.world_sizes)
    return BACKENDS[::-1], args.world_sizes[::-1]


def find_configuration(run_dir: Path, ws: int, batch: int, backend: str) -> Path:
    """The folder of one run, on whichever device the pipeline placed it (ws<n>-<device>-bs<b>[-horovod])."""
    suffix = "" if backend == "ddp" else f"-{backend}"
    found = sorted((run_dir / "configs").glob(f"ws{ws}-*-bs{batch}{suffix}"))
    return found[0] if found else run_dir / "configs" / f"ws{ws}-cpu-bs{batch}{suffix}"


def read_run(folder: Path, backend: str, repeat: int) -> dict:
    """`read_configuration`'s row plus what tells the backends apart and how the run was placed."""
    row = read_configuration(folder)
    row.update(configuration=folder.name, backend=backend, repeat=repeat)
    if (folder / "metrics.json").exists():
        m = json.loads((folder / "metrics.json").read_text())
        row.update(backend=m.get("backend", backend), launcher=m.get("launcher"), device=m.get("device"),
                   gpu=m.get("gpu"), device_reason=m.get("device_reason"), nodes=m.get("nodes"),
                   gradient_bytes=m.get("gradient_bytes"), restarts=m.get("restarts"))
        if row["backend"] != backend:
            row["failed"] = f"metrics.json says backend {row['backend']!r}, the folder is {backend}'s"
    return row


def one_call(args: argparse.Namespace, model: str, repeat: int, raw: dict, notes: list[str]) -> tuple[dict, dict]:
    """One repeat of one model: scratch folder, pipeline call, every run read back into `raw`; (run record, counts)."""
    backends, world_sizes = orders(repeat, args)
    run_dir = args.scratch / model / f"repeat{repeat}"
    counts = make_scratch(args.source_run_dir, run_dir, args.chunks[model], min_eval=args.batch_size)
    print(f"repeat {repeat}/{args.repeats}, {model}: {counts['description']}, backends {backends}, world sizes "
          f"{world_sizes}", flush=True)
    meter = CpuMeter()
    extra = {"train.backends": "[" + ",".join(backends) + "]", "train.device": args.device}
    command, wall, status = run_model(args, model, run_dir, world_sizes, extra)
    load = meter.stop()
    for backend in backends:
        for ws in world_sizes:
            row = read_run(find_configuration(run_dir, ws, args.batch_size, backend), backend, repeat)
            raw[(model, backend, ws)].append(row)
            if "samples_per_second" in row and "failed" not in row:
                print(f"  {backend} ws{ws}: {row['samples_per_second']:.1f} samples/s, step "
                      f"{row['mean_step_s']:.3f} s (data {row['mean_data_s']:.3f}, fwd+bwd "
                      f"{row['mean_forward_backward_s']:.3f}, opt {row['mean_optimizer_s']:.3f}, all-reduce "
                      f"{row['mean_allreduce_s']:.3f}), launcher {row['launcher']}, test accuracy "
                      f"{row['test_accuracy']:.3f}", flush=True)
            else:
                print(f"  {backend} ws{ws}: {row.get('skipped') or row.get('failed')}", flush=True)
    print(f"  {wall:.0f} s wall, exit {status}", flush=True)
    caveat = contention_caveat(load)
    if caveat:
        notes.append(f"repeat {repeat}, {model}: {caveat}")
    if not args.keep_scratch and status == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"repeat": repeat, "model": model, "backend_order": backends, "world_size_order": world_sizes,
            "command": command, "wall_s": round(wall, 1), "exit_status": status, "machine_load": load}, counts


def ok(row: dict) -> bool:
    return "samples_per_second" in row and "failed" not in row


def backend_ratio(ddp: list[dict], hvd: list[dict]) -> dict | None:
    """horovod/ddp per repeat (the two runs of one pipeline call), with spread; paired phase differences in s."""
    pairs = [(h, d) for h, d in zip(hvd, ddp, strict=True) if ok(h) and ok(d)]
    if not pairs:
        return None
    result = {"repeats_paired": [d["repeat"] for _, d in pairs],
              "samples_per_second_ratio": spread([h["samples_per_second"] / d["samples_per_second"] for h, d in pairs]),
              "train_step_samples_per_second_ratio": spread([h["train_step_samples_per_second"]
                                                             / d["train_step_samples_per_second"] for h, d in pairs]),
              "mean_step_s_ratio": spread([h["mean_step_s"] / d["mean_step_s"] for h, d in pairs])}
    result["phase_difference_s"] = {p: spread([h[p] - d[p] for h, d in pairs]) for p in PHASES}
    compute = [p for p in PHASES if p not in ("mean_allreduce_s", "mean_step_s")]
    result["phase_differing_most"] = max(compute, key=lambda p: abs(result["phase_difference_s"][p]["mean"]))
    return result


def summarise(args: argparse.Namespace, raw: dict, chunks: dict) -> tuple[list[dict], dict, dict]:
    """Rows per model/backend/world size, horovod/ddp ratios per model/world size, ws speedups per model/backend."""
    rows = []
    for (model, backend, ws), reps in raw.items():
        good = [r for r in reps if ok(r)]
        row = {"backend": backend, **aggregate(model, ws, good, chunks[model]["description"])}
        row.update(repeats=len(reps), repeats_ok=len(good), per_repeat=reps)
        if good:
            row.update(launcher=good[0]["launcher"], device=good[0]["device"], configuration=good[0]["configuration"])
        rows.append(row)
    ratios, speedups = {}, {}
    low = min(args.world_sizes)
    for model in args.models:
        for ws in args.world_sizes:
            found = backend_ratio(raw[(model, "ddp", ws)], raw[(model, "horovod", ws)])
            if found:
                ratios.setdefault(model, {})[f"ws{ws}"] = found
        for backend in BACKENDS:
            by_ws = {ws: [r if ok(r) else {} for r in raw[(model, backend, ws)]] for ws in args.world_sizes}
            for ws in args.world_sizes:
                found = speedup_of(by_ws, ws, low) if ws != low else None
                if found:
                    speedups.setdefault(model, {}).setdefault(backend, {})[f"ws{ws}/ws{low}"] = found
    return rows, ratios, speedups


def ratio_notes(rows: list[dict], ratios: dict) -> list[str]:
    """One sentence per model and world size: horovod/ddp with spread, step times, and the phase differing most."""
    notes = []
    for model, by_ws in ratios.items():
        for key, found in by_ws.items():
            ws = int(key[2:])
            step = {r["backend"]: r["mean_step_s"]["mean"] for r in rows
                    if r["model"] == model and r["world_size"] == ws and "mean_step_s" in r}
            s, phase = found["samples_per_second_ratio"], found["phase_differing_most"]
            diff = found["phase_difference_s"][phase]
            notes.append(
                f"{model} ws{ws}: horovod/ddp samples/s {s['mean']:.3f} (std {s['std']:.3f}, min {s['min']:.3f}, "
                f"max {s['max']:.3f} over {s['n']} paired repeats); training steps only "
                f"{found['train_step_samples_per_second_ratio']['mean']:.3f}. Mean step {step.get('horovod', 0):.3f} s "
                f"(horovod) against {step.get('ddp', 0):.3f} s (ddp). The phase that differs most is "
                f"{phase.removeprefix('mean_').removesuffix('_s')}: {diff['mean'] * 1e3:+.1f} ms per step for "
                f"horovod (std {diff['std'] * 1e3:.1f} ms)"
                + (", where Horovod waits for its all-reduce (DDP waits in forward+backward)."
                   if phase == "mean_optimizer_s" and ws > 1 else "."))
    return notes


def speedup_notes(speedups: dict) -> list[str]:
    notes = []
    for model, by_backend in speedups.items():
        for backend, pairs in by_backend.items():
            for pair, found in pairs.items():
                s = found["speedup"]
                notes.append(f"{model} {backend}: {pair} speedup {s['mean']:.2f} (std {s['std']:.2f}, min "
                             f"{s['min']:.2f}, max {s['max']:.2f} over {s['n']} repeats; training steps only "
                             f"{found['train_step_speedup']['mean']:.2f}).")
    return notes


def method_notes(args: argparse.Namespace, chunks: dict) -> list[str]:
    data = "; ".join(f"{m}: {chunks[m]['description']}" for m in args.models)
    return [
        "samples_per_second is the worker's figure over the steady epochs (all but the first), validation included; "
        "train_step_samples_per_second is global batch / rank 0's mean step time, without validation.",
        "mean_allreduce_s differs in meaning between the backends: DDP's is the sum of its bucket spans during "
        "backward, Horovod's one span from the first gradient launch to synchronize() returning inside "
        "optimizer.step() (backward compute overlapping it included). Compare mean_step_s and samples/s, not the "
        "all-reduce columns; Horovod's wait for the all-reduce shows in mean_optimizer_s, DDP's in "
        "mean_forward_backward_s.",
        f"{args.repeats} repeat(s); each repeat is one pipeline call per model that trains every backend x world "
        "size, with the backend order and the world-size order reversed every other repeat. The horovod/ddp ratio "
        "and the ws speedups are taken per repeat (runs of the same call) and then spread over the repeats.",
        f"World sizes {args.world_sizes} with {args.threads_per_rank} thread(s) per rank on {available_cores()} "
        f"cores, device {args.device}. Data per model: {data}. Test accuracy after {args.epochs} epochs on a "
        "subset only shows that the runs trained.",
    ]


def horovod_version() -> str:
    try:
        return metadata.version("horovod")
    except metadata.PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_features(args.source_run_dir)
    if args.estimate:
        print(f"(each model's time counts both backends: {args.repeats} repeats x {len(BACKENDS)} backends)")
        estimate(argparse.Namespace(**{**vars(args), "repeats": args.repeats * len(BACKENDS)}))
        return
    base = load_config(args.config)
    started, total_meter = now(), CpuMeter()
    runs, notes, chunks = [], [], {}
    raw = {(m, b, ws): [] for m in args.models for b in BACKENDS for ws in args.world_sizes}
    for repeat in range(1, args.repeats + 1):
        for model in args.models:
            run, chunks[model] = one_call(args, model, repeat, raw, notes)
            runs.append(run)
    load = total_meter.stop()
    for model in args.models:
        with contextlib.suppress(OSError):
            (args.scratch / model).rmdir()  # only if every repeat's folder was removed
    rows, ratios, speedups = summarise(args, raw, chunks)
    env = environment(args.threads_per_rank)
    env["versions"]["horovod"] = horovod_version()
    result = {
        "benchmark": "ddp_vs_horovod",
        "question": "samples/s of PyTorch DDP against Horovod for the same models at world size 1 and 2",
        "measured_at": started, "runtime_s": load["wall_s"], "command": command_line(), "environment": env,
        "parameters": {"config": portable(args.config), "base_experiment": base.name, "models": args.models,
                       "backends": BACKENDS, "world_sizes": args.world_sizes, "device": args.device,
                       "epochs": args.epochs, "steady_epochs": "all but the first", "batch_size_per_rank":
                       args.batch_size, "threads_per_rank": args.threads_per_rank, "input": "features",
                       "feature": "logmel", "optimizer": "Adam", "lr": base.train.lr, "loader_workers": 0,
                       "train_chunks": args.chunks, "repeats": args.repeats,
                       "data": {m: {k: v for k, v in c.items() if k != "description"} for m, c in chunks.items()}},
        "method": __doc__.strip(), "machine_load": load, "runs": runs, "rows": rows,
        "horovod_over_ddp": ratios, "speedup": speedups,
    }
    notes[:0] = method_notes(args, chunks)
    notes += ratio_notes(rows, ratios) + speedup_notes(speedups)
    write_result(args.out, result, notes, load, "ddp_vs_horovod", args.repeats)
    failed = sorted({f"{r['model']} repeat {r['repeat']}" for r in runs if r["exit_status"] != 0})
    if failed:
        sys.exit(f"pipeline train failed for {', '.join(failed)}; logs in {args.scratch}/<model>/repeat<n>/bench.log "
                 "(kept)")


if __name__ == "__main__":
    main()
