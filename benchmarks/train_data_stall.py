"""Data stall: training throughput reading the real training split vs the same model on in-memory synthetic tensors.

Issue target: real / synthetic >= 0.95, i.e. the input pipeline costs at most 5% of the training throughput.

What it measures, in one process (world size 1, `torch.set_num_threads(--threads)`, CPU):

- real: training steps that read the demo's training split through the same Dataset and DataLoader the trainer
  builds (`build_dataset(run_dir, input, "logmel", "train")`, batch 32, the trainer's shard-grouped shuffling
  `ShardSampler` with one replica, `num_workers` as given, persistent workers: `pipeline.train.builders.build_loader`),
  one endless iterator over epochs as in the trainer (epoch boundaries, and their iterator restarts, fall inside the
  timed steps);
- synthetic: the same number of steps on one random batch of the same shape already in memory (no loader);
- cached (a control): the same number of steps on one real batch from the loader, kept in memory and reused. If it
  runs as fast as synthetic, the model's compute does not depend on the values, and whatever the real arm loses
  beyond its fetch time is a side effect of loading (caches, the worker process taking CPU).

The arms share one model and one Adam optimizer, built by the trainer's `build_network` and `build_optimizer`, and
one loss, and run the trainer's step: fetch (real arm only), channels-last conversion for convolutional models,
forward, cross-entropy, backward, optimizer step, zero_grad, running totals. The model is not wrapped in DDP
(identical in every arm, so the ratio isolates the input path).
After a warm-up, the arms are interleaved step by step, cycling through the 6 orders of the 3 arms, so that machine
noise and drift, which on a shared machine change within seconds, hit all alike. A repeat is `--steps` steps of each
arm; it gives samples/s per arm and one ratio real/synthetic, and the JSON has mean, std, min and max of each over
`--repeats` repeats. Alongside, the loader alone (no model) is timed for a few
batches, to show how much headroom the input pipeline has.

Rows: `input: features` (the fast path: each sample one read of its row from the `.npy` shard, through the page
cache) with `--feature-loader-workers`, and `input: images` (the seeds' path: one PNG read from its tar shard and
decoded per sample) with each of `--loader-workers`. Writes results/benchmarks/train_data_stall.json (see `--out`).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import resource
import sys
import time
from pathlib import Path

import torch
from benchlib import (
    DEMO_RUN_DIR,
    RESULTS,
    CpuMeter,
    command_line,
    contention_caveat,
    environment,
    now,
    portable,
    require_features,
    spread,
)
from scipy import stats as scipy_stats
from torch import nn
from torch.utils.data import DataLoader

from pipeline.config import TrainConfig
from pipeline.io import atomic_write_json
from pipeline.train.builders import build_loader, build_network, build_optimizer
from pipeline.train.data import build_dataset, read_labels
from pipeline.train.environment import available_cores
from pipeline.train.models import is_convolutional
from pipeline.train.sampling import ShardSampler

TARGET = 0.95
ARMS = ("real", "synthetic", "cached")
ORDERS = list(itertools.permutations(ARMS))
ISSUE = "Data stall: throughput reading real shards vs the same model on in-memory synthetic tensors; target >= 0.95"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=DEMO_RUN_DIR, help="run folder with features/ (and images/)")
    parser.add_argument("--model", default="cnn", choices=["cnn", "lstm", "resnet50", "densenet121"])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads of the training process")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per arm per repeat")
    parser.add_argument("--repeats", type=int, default=8, help="repeats of the interleaved arms")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps of each arm before the repeats")
    parser.add_argument("--loader-batches", type=int, default=10, help="batches per repeat of the loader-only timing")
    parser.add_argument("--feature-loader-workers", type=int, nargs="*", default=[0],
                        help="DataLoader workers for the features rows (none: skip features)")
    parser.add_argument("--loader-workers", type=int, nargs="*", default=[0, 1],
                        help="DataLoader workers for the images rows (none: skip images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "train_data_stall.json")
    return parser.parse_args(argv)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def ci95(stats: dict) -> list[float]:
    """95% confidence interval of the mean of repeated measurements (Student's t)."""
    n = stats["n"]
    if n < 2:
        return [stats["mean"], stats["mean"]]
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * stats["std"] / n ** 0.5
    return [stats["mean"] - half, stats["mean"] + half]


def verdict(interval: list[float]) -> str:
    if interval[0] >= TARGET:
        return "meets"
    if interval[1] < TARGET:
        return "misses"
    return "not distinguishable from"


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def endless(loader: DataLoader, sampler: ShardSampler):
    """Batches over successive epochs, as the trainer iterates them (set_epoch, then a fresh pass)."""
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from loader


class Stepper:
    """The trainer's step on one model, optimizer and loss, shared by all arms of a row."""

    def __init__(self, model: nn.Module, channels_last: bool, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.channels_last = model, channels_last
        self.optimizer = optimizer
        self.loss_fn = nn.CrossEntropyLoss()
        self.totals = torch.zeros(3)

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        logits = self.model(xb)
        loss = self.loss_fn(logits.float(), yb)
        loss.backward()
        self.totals += torch.stack([loss.detach() * len(yb), (logits.argmax(1) == yb).sum().float(),
                                    torch.tensor(float(len(yb)))])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def real_step(self, batches) -> tuple[float, float, float, int, int]:
        """(seconds, of which fetching and converting the batch, CPU seconds of this process, minor page faults, of
        which while fetching) of one step reading the loader."""
        start, cpu, faults = time.perf_counter(), time.process_time(), _minor_faults()
        xb, yb = next(batches)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        fetched, fetch_faults = time.perf_counter(), _minor_faults() - faults
        self.step(xb, yb)
        return (time.perf_counter() - start, fetched - start, time.process_time() - cpu, _minor_faults() - faults,
                fetch_faults)

    def memory_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[float, float, int]:
        """(seconds, CPU seconds of this process, minor page faults) of one step on a batch already in memory."""
        start, cpu, faults = time.perf_counter(), time.process_time(), _minor_faults()
        self.step(xb, yb)
        return time.perf_counter() - start, time.process_time() - cpu, _minor_faults() - faults

    def interleaved(self, batches, synthetic: tuple, cached: tuple, steps: int) -> dict[str, float]:
        """`steps` steps of each arm, interleaved step by step, cycling through the 6 orders of the 3 arms so that
        each arm runs equally often first, second and third; returns wall and CPU seconds per arm and the real
        arm's fetch time."""
        seconds = dict.fromkeys([*ARMS, "data", "data_faults",
                                 *(f"{arm}_{what}" for arm in ARMS for what in ("cpu", "faults"))], 0.0)
        for i in range(steps):
            for arm in ORDERS[i % len(ORDERS)]:
                if arm == "real":
                    step_s, fetch_s, cpu_s, faults, fetch_faults = self.real_step(batches)
                    seconds["data"] += fetch_s
                    seconds["data_faults"] += fetch_faults
                else:
                    step_s, cpu_s, faults = self.memory_step(*(synthetic if arm == "synthetic" else cached))
                seconds[arm] += step_s
                seconds[f"{arm}_cpu"] += cpu_s
                seconds[f"{arm}_faults"] += faults
        return seconds


def measure_row(args: argparse.Namespace, input_kind: str, workers: int) -> dict:
    run_dir = args.run_dir
    built = time.perf_counter()
    dataset, in_channels = build_dataset(run_dir, input_kind, "logmel", "train")
    build_s = time.perf_counter() - built
    labels = read_labels(run_dir)
    sample_shape = tuple(dataset[0][0].shape)
    config = TrainConfig(model=args.model, input=input_kind, feature="logmel", batch_size=args.batch_size,
                         loader_workers=workers, seed=args.seed)
    device = torch.device("cpu")
    torch.manual_seed(args.seed)  # as the trainer seeds before building the model
    model, channels_last = build_network(config, len(labels), in_channels, sample_shape[1], device)
    model.train()
    sampler, loader = build_loader(dataset, config, 1, 0, device)  # the trainer's sampler and loader, one rank
    stepper = Stepper(model, channels_last, build_optimizer(model, config.lr))
    synthetic_x = torch.randn(args.batch_size, *sample_shape)
    if channels_last:
        synthetic_x = synthetic_x.contiguous(memory_format=torch.channels_last)
    synthetic_y = torch.randint(0, len(labels), (args.batch_size,))
    print(f"row input={input_kind} workers={workers}: {len(dataset)} training chunks of shape {sample_shape} "
          f"(dataset built in {build_s:.2f} s)", flush=True)

    # The loader alone: how fast the input pipeline can deliver batches with nothing else to do.
    loader_only = []
    children_cpu = _children_cpu_seconds()
    probe = endless(loader, sampler)
    cached_x, cached_y = (t.clone() for t in next(probe))  # also starts the workers
    if channels_last:
        cached_x = cached_x.contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(args.loader_batches):
            next(probe)
        loader_only.append(args.loader_batches * args.batch_size / (time.perf_counter() - start))
    del probe

    batches = endless(loader, sampler)
    synthetic, cached = (synthetic_x, synthetic_y), (cached_x, cached_y)
    stepper.interleaved(batches, synthetic, cached, args.warmup_steps)
    per_repeat: dict[str, list[float]] = {key: [] for key in (
        "real_sps", "synthetic_sps", "cached_sps", "ratio", "cached_over_synthetic", "real_over_cached", "data_ms",
        "real_compute_ms", "compute_excess_ms", "real_cpu_over_wall", "synthetic_cpu_over_wall",
        "cached_cpu_over_wall", "real_faults", "synthetic_faults", "cached_faults",
        "data_faults")}
    samples = args.steps * args.batch_size
    for repeat in range(args.repeats):
        seconds = stepper.interleaved(batches, synthetic, cached, args.steps)
        values = {"real_sps": samples / seconds["real"], "synthetic_sps": samples / seconds["synthetic"],
                  "cached_sps": samples / seconds["cached"], "ratio": seconds["synthetic"] / seconds["real"],
                  "cached_over_synthetic": seconds["synthetic"] / seconds["cached"],
                  "real_over_cached": seconds["cached"] / seconds["real"],
                  "data_ms": 1000 * seconds["data"] / args.steps,
                  "real_compute_ms": 1000 * (seconds["real"] - seconds["data"]) / args.steps,
                  "compute_excess_ms": 1000 * (seconds["real"] - seconds["data"] - seconds["cached"]) / args.steps,
                  **{f"{arm}_cpu_over_wall": seconds[f"{arm}_cpu"] / seconds[arm]
                     for arm in ARMS},
                  **{f"{arm}_faults": seconds[f"{arm}_faults"] / args.steps for arm in (*ARMS, "data")}}
        for key, value in values.items():
            per_repeat[key].append(value)
        print(f"  repeat {repeat + 1}/{args.repeats}: real {values['real_sps']:.1f} samples/s (data "
              f"{values['data_ms']:.1f} ms/step), synthetic {values['synthetic_sps']:.1f}, cached real batch "
              f"{values['cached_sps']:.1f}; real/synthetic {values['ratio']:.3f}", flush=True)
    del batches, loader  # ends (and reaps) persistent workers, so their CPU time is counted as children's
    gc.collect()
    worker_cpu_s = _children_cpu_seconds() - children_cpu
    fetched = 1 + 3 * args.loader_batches + args.warmup_steps + args.repeats * args.steps  # + up to 2 prefetched
    stats = {key: spread(values) for key, values in per_repeat.items()}
    ratio = stats["ratio"]
    ms = {arm: 1000 * args.batch_size / stats[f"{arm}_sps"]["mean"] for arm in ("real", "synthetic", "cached")}
    return {
        "input": input_kind, "feature": "logmel" if input_kind == "features" else "logmel (PNG image)",
        "loader_workers": workers, "train_chunks": len(dataset), "sample_shape": list(sample_shape),
        "batch_shape": [args.batch_size, *sample_shape], "steps_per_epoch": len(sampler) // args.batch_size,
        "dataset_build_s": round(build_s, 3),
        "real_samples_per_second": stats["real_sps"], "synthetic_samples_per_second": stats["synthetic_sps"],
        "ratio_real_over_synthetic": ratio,
        "ratio_of_means": stats["real_sps"]["mean"] / stats["synthetic_sps"]["mean"],
        "ratio_ci95_of_mean": ci95(ratio), "verdict": f"{verdict(ci95(ratio))} the target {TARGET}",
        "meets_target": ratio["mean"] >= TARGET, "every_repeat_meets_target": ratio["min"] >= TARGET,
        "step_ms": {arm: round(value, 2) for arm, value in ms.items()},
        "real_data_ms_per_step": stats["data_ms"], "real_compute_ms_per_step": stats["real_compute_ms"],
        "real_compute_excess_over_cached_ms_per_step": stats["compute_excess_ms"],
        "main_process_cpu_over_wall": {arm: stats[f"{arm}_cpu_over_wall"] for arm in ARMS},
        "minor_page_faults_per_step": {**{arm: stats[f"{arm}_faults"] for arm in ARMS},
                                       "real_while_fetching": stats["data_faults"]},
        "loader_worker_cpu_ms_per_batch": 1000 * worker_cpu_s / fetched if workers else None,
        "data_share_of_real_step": stats["data_ms"]["mean"] / ms["real"],
        "cached_real_batch_samples_per_second": stats["cached_sps"],
        "ratio_cached_over_synthetic": stats["cached_over_synthetic"],
        "ratio_real_over_cached": stats["real_over_cached"],
        "loader_only_samples_per_second": spread(loader_only),
        "loader_headroom": spread(loader_only)["mean"] / stats["synthetic_sps"]["mean"],
    }


def notes_for(rows: list[dict], meter: dict) -> list[str]:
    notes = []
    for row in rows:
        r, name = row["ratio_real_over_synthetic"], f"input={row['input']}, loader_workers={row['loader_workers']}"
        ms, cached, excess = row["step_ms"], row["ratio_cached_over_synthetic"], \
            row["real_compute_excess_over_cached_ms_per_step"]
        cpu, faults = row["main_process_cpu_over_wall"], row["minor_page_faults_per_step"]
        worker = row["loader_worker_cpu_ms_per_batch"]
        worker_text = f"; the loader worker used {worker:.0f} ms of CPU per batch" if worker is not None else ""
        notes.append(
            f"{name}: real/synthetic = {r['mean']:.3f} (std {r['std']:.3f}, min {r['min']:.3f}, max {r['max']:.3f} "
            f"over {r['n']} repeats; 95% CI of the mean {row['ratio_ci95_of_mean'][0]:.3f} to "
            f"{row['ratio_ci95_of_mean'][1]:.3f}): {row['verdict']}. Per step: real {ms['real']:.0f} ms, of which "
            f"{row['real_data_ms_per_step']['mean']:.1f} ms fetching the batch ({row['data_share_of_real_step']:.1%})"
            f"; synthetic {ms['synthetic']:.0f} ms; the cached real batch {ms['cached']:.0f} ms (cached/synthetic "
            f"{cached['mean']:.3f}, std {cached['std']:.3f}). The real arm's compute (step minus fetch) was "
            f"{excess['mean']:+.0f} ms (std {excess['std']:.0f}) off the cached batch's step. CPU time of the "
            f"training process over wall time: real {cpu['real']['mean']:.2f}, synthetic {cpu['synthetic']['mean']:.2f}"
            f", cached {cpu['cached']['mean']:.2f}; minor page faults per step: real {faults['real']['mean']:.0f} "
            f"({faults['real_while_fetching']['mean']:.0f} of them while fetching), "
            f"synthetic {faults['synthetic']['mean']:.0f}, cached {faults['cached']['mean']:.0f}{worker_text}. The "
            f"loader alone delivers {row['loader_only_samples_per_second']['mean']:.0f} samples/s, "
            f"{row['loader_headroom']:.1f}x what the model consumes.")
    features = [row for row in rows if row["input"] == "features"]
    if features:
        notes.append(
            "The features path reads each sample from its shard when the loader asks for it (one pread of its "
            "row of the float16 .npy through the page cache, then per-bin standardisation), so its ratio measures "
            "that read, the DataLoader's collate and the channels-last copy. On a model this slow per sample on one "
            "CPU thread it is close to 1 almost by construction, while a GPU step is "
            "far shorter, so the same loader cost would be a larger share there.")
    images = {row["loader_workers"]: row for row in rows if row["input"] == "images"}
    if images:
        text = ("The images path (the seeds' path) reads one PNG per sample from its tar shard, decodes it with "
                "Pillow, converts it to RGB float and normalises it. ")
        inline = images.get(0)
        if inline:
            text += (f"With 0 workers the decode runs inline: {inline['real_data_ms_per_step']['mean']:.0f} ms per "
                     f"batch of fetch time is a pure stall (ratio {inline['ratio_real_over_synthetic']['mean']:.3f}). ")
        for w, row in sorted(images.items()):
            if not w:
                continue
            cpu = row["main_process_cpu_over_wall"]
            drop = cpu["cached"]["mean"] - cpu["real"]["mean"]
            text += (f"With {w} worker(s) the fetch shrinks to {row['real_data_ms_per_step']['mean']:.1f} ms (the "
                     f"worker prefetches 2 batches; what is left is receiving the batch and the channels-last copy), "
                     f"ratio {row['ratio_real_over_synthetic']['mean']:.3f}")
            if drop > 0.03:
                text += (f", but the decode still costs CPU ({row['loader_worker_cpu_ms_per_batch']:.0f} ms per "
                         f"batch in the worker) and the training process got less of the CPU during real steps "
                         f"(CPU/wall {cpu['real']['mean']:.2f} vs {cpu['cached']['mean']:.2f} on cached steps): with "
                         f"{available_cores()} cores and other processes running, the worker has no core of its own, "
                         f"so the stall moves from fetch time into slower compute "
                         f"({row['real_compute_excess_over_cached_ms_per_step']['mean']:+.0f} ms per step). ")
            else:
                text += (f"; the training process kept its share of the CPU during real steps (CPU/wall "
                         f"{cpu['real']['mean']:.2f} vs {cpu['cached']['mean']:.2f} on cached steps), so the worker "
                         f"ran beside it. ")
        notes.append(text.strip())
    notes.append(
        "The synthetic arm reuses one random batch of the same shape. All arms run in the same process on the same "
        "model and optimizer, interleaved step by step, so the ratio is paired per repeat; absolute samples/s depend "
        "on the machine's load at the time.")
    caveat = contention_caveat(meter)
    if caveat:
        notes.append(caveat)
    return notes


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_features(args.run_dir)
    if args.model == "lstm" and args.loader_workers:
        print("lstm reads feature sequences only: skipping the images rows", file=sys.stderr)
        args.loader_workers = []
    torch.set_num_threads(args.threads)
    started, meter = now(), CpuMeter()
    rows = [measure_row(args, "features", w) for w in args.feature_loader_workers]
    rows += [measure_row(args, "images", w) for w in args.loader_workers]
    load = meter.stop()
    result = {
        "benchmark": "train_data_stall", "issue": ISSUE, "target_ratio": TARGET,
        "measured_at": started, "runtime_s": load["wall_s"],
        "command": command_line(),
        "environment": environment(args.threads),
        "parameters": {"run_dir": portable(args.run_dir), "model": args.model, "world_size": 1, "device": "cpu",
                       "torch_threads": args.threads, "batch_size": args.batch_size, "split": "train",
                       "feature": "logmel", "optimizer": "Adam", "lr": TrainConfig().lr, "loss": "cross-entropy",
                       "channels_last": TrainConfig().channels_last and is_convolutional(args.model),
                       "steps_per_arm_per_repeat": args.steps, "repeats": args.repeats,
                       "warmup_steps_per_arm": args.warmup_steps, "loader_only_batches": args.loader_batches,
                       "loader_only_repeats": 3, "seed": args.seed,
                       "feature_loader_workers": args.feature_loader_workers,
                       "image_loader_workers": args.loader_workers},
        "method": __doc__.strip(),
        "machine_load": load,
        "rows": rows,
    }
    result["notes"] = notes_for(rows, load)
    atomic_write_json(args.out, result)
    print(f"train_data_stall: {len(rows)} rows in {load['wall_s']:.0f} s -> {args.out}")
    for note in result["notes"]:
        print(f"- {note}")


if __name__ == "__main__":
    main()
