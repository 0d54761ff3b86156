"""`pipeline bench`: what this machine gives, before asking for an allocation (as Horovod's synthetic benchmark).

On whatever it finds (one GPU, several, or only CPUs) it measures, each as `repeats` timed runs after a warm-up:

- training images/s of resnet50 and the project's cnn on synthetic data, fp32 and (on CUDA) bf16 autocast: one
  forward, cross-entropy, backward and Adam step per batch, as `Trainer.train_step` does without DDP;
- log-mel + MFCC chunks/s of `preprocess.features.FeatureExtractor` on synthetic chunks (host -> device -> host, as
  a preprocessing task does);
- spectrogram images/s, JPEG and PNG, from log-mel features on the device to encoded files on the host, as a
  preprocessing task makes them (`preprocess.task._encoded`: on a GPU the JPEG is encoded there by nvJPEG, the PNG
  by Pillow on the CPU from indices copied back);
- samples/s of the training loader (`train.builders.build_loader`) over a synthetic TensorDataset, or over the
  train split of a preprocessed run folder (`--features RUN_DIR`), each batch moved to the device.

It prints a table and writes JSON: hardware, versions, settings, min/median/max of every figure with its notes, and
how busy the machine was (load average, CPU time of other processes, GPU memory others held).
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.config import PreprocessConfig, TrainConfig
from pipeline.io import atomic_write_json
from pipeline.train.environment import available_cores, describe_environment

SAMPLE_RATE = 16000
CLASSES = 10


@dataclass(frozen=True)
class Settings:
    device: str
    steps: int
    warmup: int
    repeats: int
    batch_size: int
    image_size: int
    chunks: int
    loader_samples: int
    quick: bool


def settings(device: str, quick: bool, steps: int | None, batch_size: int | None,
             image_size: int | None) -> Settings:
    """Sizes for `device`: ImageNet-like on CUDA (224 px, batch 256); small on CPU, where resnet50 at 224 px takes
    seconds a step; `quick` shrinks everything to seconds on a CPU."""
    cuda = device == "cuda"
    if quick:
        base = dict(steps=3 if cuda else 2, warmup=1, repeats=3 if cuda else 2, batch_size=32 if cuda else 4,
                    image_size=64 if cuda else 32,
                    chunks=256 if cuda else 16, loader_samples=512)
    else:
        base = dict(steps=30 if cuda else 5, warmup=5 if cuda else 1, repeats=5 if cuda else 3,
                    batch_size=256 if cuda else 16, image_size=224 if cuda else 64, chunks=2048 if cuda else 64,
                    loader_samples=8192 if cuda else 2048)
    base.update({k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("image_size", image_size))
                 if v is not None})
    return Settings(device=device, quick=quick, **base)


def timed(run: Callable[[], int], settings: Settings, sync: Callable[[], None]) -> list[float]:
    """Items per second of `repeats` runs of `run` (which returns how many items it did), after `warmup` runs."""
    for _ in range(settings.warmup):
        run()
    sync()
    rates = []
    for _ in range(settings.repeats):
        started = time.perf_counter()
        items = run()
        sync()
        rates.append(items / (time.perf_counter() - started))
    return rates


def figure(name: str, unit: str, rates: list[float], notes: str, **fields) -> dict:
    return {"name": name, "unit": unit, **fields, "repeats": len(rates), "min": min(rates),
            "median": statistics.median(rates), "max": max(rates), "values": rates, "notes": notes}


def bench_training(model_name: str, precision: str, s: Settings, sync: Callable[[], None]) -> dict:
    """Training images/s of one model at one precision on synthetic batches."""
    from pipeline.train.builders import build_network, build_optimizer

    config = TrainConfig(model=model_name, precision=precision, batch_size=s.batch_size)
    channels = 3 if model_name == "resnet50" else 1
    device = torch.device(s.device)
    torch.manual_seed(0)
    model, channels_last = build_network(config, CLASSES, channels, s.image_size, device)
    optimizer = build_optimizer(model, 1e-3)
    x = torch.randn(s.batch_size, channels, s.image_size, s.image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (s.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def run() -> int:
        for _ in range(s.steps):
            with autocast:
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return s.steps * s.batch_size

    model.train()
    rates = timed(run, s, sync)
    notes = (f"synthetic {channels}x{s.image_size}x{s.image_size} inputs, batch {s.batch_size}, {s.steps} steps per "
             f"repeat after {s.warmup} warm-up repeats; forward + cross-entropy + backward + Adam, no DDP, "
             f"{'channels-last, ' if channels_last else ''}{precision}"
             + (" autocast" if precision == "bf16" else ""))
    return figure(f"train {model_name} {precision}", "images/s", rates, notes, model=model_name,
                  precision=precision, batch_size=s.batch_size, image_size=s.image_size)


def bench_features(s: Settings, sync: Callable[[], None]) -> dict:
    """Log-mel + MFCC chunks/s of the preprocessing's FeatureExtractor on 3 s synthetic chunks."""
    from pipeline.preprocess.features import FeatureExtractor

    config = PreprocessConfig()
    extractor = FeatureExtractor(config, SAMPLE_RATE, s.device)
    chunks = torch.randn(s.chunks, int(config.chunk_seconds * SAMPLE_RATE)) * 0.1

    def run() -> int:
        for _ in range(s.steps):
            extractor(chunks)
        return s.steps * s.chunks

    rates = timed(run, s, sync)
    notes = (f"{s.chunks} chunks of {config.chunk_seconds:g} s at {SAMPLE_RATE} Hz per call, {s.steps} calls per "
             f"repeat; n_fft {config.n_fft}, hop {config.hop_length}, {config.n_mels} mels, {config.n_mfcc} MFCCs; "
             f"timed from host waveforms to host features (the copies a preprocessing task makes), "
             f"{torch.get_num_threads()} CPU threads")
    return figure("features logmel+mfcc", "chunks/s", rates, notes, batch_chunks=s.chunks)


def bench_images(image_format: str, s: Settings, sync: Callable[[], None]) -> dict:
    """Images/s of one format from log-mel features already on the device, as a preprocessing task writes them."""
    from pipeline.preprocess.features import FeatureExtractor
    from pipeline.preprocess.task import _encoded

    config = PreprocessConfig(image_format=image_format, image_size=s.image_size)
    chunks = torch.randn(s.chunks, int(config.chunk_seconds * SAMPLE_RATE)) * 0.1
    logmel = FeatureExtractor(config, SAMPLE_RATE, s.device).on_device(chunks)["logmel"]

    def run() -> int:
        for _ in range(s.steps):
            _encoded(logmel, config)
        return s.steps * s.chunks

    rates = timed(run, s, sync)
    where = ("scaled, resized, coloured and encoded on the GPU (nvJPEG), bytes to the host" if image_format == "jpeg"
             else "scaled and resized on the GPU, indices to the host, encoded by Pillow on one CPU thread") \
        if s.device == "cuda" else "on the CPU, encoded by Pillow"
    notes = (f"{s.chunks} log-mel maps of {config.n_mels} x {logmel.shape[-1]} per call, {s.steps} calls per repeat, "
             f"{s.image_size} px {image_format}: {where}")
    return figure(f"images {image_format}", "images/s", rates, notes, image_format=image_format,
                  image_size=s.image_size)


def loader_dataset(s: Settings, features: Path | None) -> tuple[torch.utils.data.Dataset, str]:
    """The train split of a preprocessed run folder, or synthetic log-mel-sized samples."""
    if features is not None:
        from pipeline.train.data import build_dataset

        dataset, _ = build_dataset(features, "features", "logmel", "train")
        return dataset, f"the logmel train split of {features} ({len(dataset)} samples, read from its shards)"
    x = torch.randn(s.loader_samples, 1, 64, 301)
    y = torch.randint(0, CLASSES, (s.loader_samples,))
    return torch.utils.data.TensorDataset(x, y), f"synthetic {s.loader_samples} samples of 1x64x301 (3 s log-mel)"


def bench_loader(s: Settings, sync: Callable[[], None], features: Path | None) -> dict:
    """Samples/s of the training loader, one pass over its sampler per repeat, each batch moved to the device."""
    from pipeline.train.builders import build_loader

    dataset, what = loader_dataset(s, features)
    config = TrainConfig(batch_size=s.batch_size)
    device = torch.device(s.device)
    _, loader = build_loader(dataset, config, 1, 0, device)

    def run() -> int:
        samples = 0
        for x, _ in loader:
            x.to(device, non_blocking=True)
            samples += len(x)
        return samples

    rates = timed(run, s, sync)
    notes = (f"build_loader over {what}, batch {s.batch_size}, loader_workers {config.loader_workers} (train's "
             f"default), pin_memory {device.type == 'cuda'}; one epoch per repeat")
    return figure("loader", "samples/s", rates, notes, batch_size=s.batch_size)


def _cpu_seconds() -> tuple[float, float] | None:
    """(machine-wide busy CPU seconds, this process's CPU seconds)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:8]]
    except (OSError, ValueError):
        return None
    user, nice, system, _, _, irq, softirq = (fields + [0] * 7)[:7]
    times = os.times()
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK"), times.user + times.system


def busy_record(before: tuple, after: tuple, wall: float) -> dict:
    """How busy others kept the machine while the benchmark ran: load averages and other processes' CPU share."""
    record = {"wall_s": round(wall, 2), "loadavg_before": before[0], "loadavg_after": list(os.getloadavg())}
    if before[1] and after:
        others = max(0.0, (after[0] - before[1][0]) - (after[1] - before[1][1]))
        record["other_processes_cpu_s"] = round(others, 2)
        record["other_processes_share_of_machine"] = round(others / (wall * available_cores()), 3) if wall else None
    return record


def hardware(device: str) -> dict:
    record = describe_environment(torch.device(device), torch.get_num_threads(), 1)
    for key in ("launcher", "oversubscribed", "threads_per_rank"):
        record.pop(key, None)
    record.update({"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                   "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                   if device == "cuda" else []})
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        record["gpu_memory_gib"] = round(total / 2**30, 1)
        record["gpu_memory_used_by_others_gib"] = round((total - free) / 2**30, 2)  # before this allocated any
        record["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    return record


def measure(s: Settings, features: Path | None) -> tuple[list[dict], list[dict]]:
    """Every figure on `s.device`, and the measurements skipped with their reason."""
    sync = torch.cuda.synchronize if s.device == "cuda" else (lambda: None)
    results, skipped = [], []
    for model in ("resnet50", "cnn"):
        for precision in ("fp32", "bf16"):
            if precision == "bf16" and s.device != "cuda":
                skipped.append({"name": f"train {model} bf16", "reason": "bf16 is measured on CUDA only: CPU "
                                "autocast to bf16 runs most convolutions slower than fp32 on CPUs without AMX, "
                                "and training runs use bf16 on GPUs"})
                continue
            results.append(bench_training(model, precision, s, sync))
            print(f"bench: {_row(results[-1])}", flush=True)
    for run in (lambda: bench_features(s, sync), lambda: bench_images("jpeg", s, sync),
                lambda: bench_images("png", s, sync), lambda: bench_loader(s, sync, features)):
        results.append(run())
        print(f"bench: {_row(results[-1])}", flush=True)
    return results, skipped


def run_bench(out: Path | None, quick: bool = False, steps: int | None = None, batch_size: int | None = None,
              image_size: int | None = None, features: Path | None = None, device: str = "auto") -> dict:
    """Measure, print the table, write the JSON to `out` (default results/bench-<host>.json); returns the record."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    s = settings(device, quick, steps, batch_size, image_size)
    notes = _notes(s, image_size)
    before = (list(os.getloadavg()), _cpu_seconds())
    started = time.perf_counter()
    record = {"kind": "pipeline-bench", "device": device, "hardware": hardware(device),
              "settings": s.__dict__.copy()}
    results, skipped = measure(s, features)
    record.update({"results": results, "skipped": skipped, "notes": notes,
                   "busy": busy_record(before, _cpu_seconds(), time.perf_counter() - started)})
    share = record["busy"].get("other_processes_share_of_machine")
    if share is not None and share >= 0.05:
        notes.append(f"other processes used {share:.0%} of the machine's CPU time while this ran: figures may be "
                     "lower than on an idle machine")
    out = Path(out) if out is not None else Path("results") / f"bench-{socket.gethostname()}.json"
    atomic_write_json(out, record)
    print(table(record))
    print(f"bench: -> {out}")
    return record


def _notes(s: Settings, image_size: int | None) -> list[str]:
    notes = []
    if s.device == "cpu" and image_size is None:
        notes.append(f"CPU: images are {s.image_size} px, not 224 (resnet50 at 224 px takes seconds a step on a "
                     "CPU); pass --image-size 224 to compare with GPU figures")
    gpus = torch.cuda.device_count() if s.device == "cuda" else 0
    if gpus > 1:
        notes.append(f"{gpus} GPUs found: every figure is one GPU's (cuda:0); a node's DDP throughput is at most "
                     f"{gpus}x that, and `pipeline train` measures how close it gets")
    if s.quick:
        notes.append("--quick: small sizes and few steps, a smoke test of the benchmark rather than a measurement")
    return notes


def _row(result: dict) -> str:
    return (f"{result['name']:<22} {result['median']:>11.1f} {result['unit']:<10} "
            f"(min {result['min']:.1f}, max {result['max']:.1f}, {result['repeats']} repeats)")


def machine(hw: dict) -> str:
    """The GPUs a benchmark ran on, or its CPU and cores: the head line of its table."""
    return ", ".join(hw["gpus"]) if hw["gpus"] else f"{hw['cpu_model']} ({hw['cpu_cores_available']} cores)"


def table(record: dict) -> str:
    hw = record["hardware"]
    lines = [f"pipeline bench on {hw['hostname']}: {record['device']}, {machine(hw)}",
             f"{'measurement':<22} {'median':>11} {'unit':<10} spread", *(_row(r) for r in record["results"])]
    lines += [f"{s['name']:<22} {'skipped':>11}: {s['reason']}" for s in record["skipped"]]
    lines += [f"- {note}" for note in record["notes"]]
    return "\n".join(lines)


def main_args(args) -> None:
    """The `pipeline bench` handler."""
    run_bench(args.out, args.quick, args.steps, args.batch_size, args.image_size, args.features, args.device)
