"""One DDP rank of one training configuration; started by torchrun (`python -m pipeline.train.worker`).

Rank, world size and the rendezvous come from the environment torchrun sets. Rank 0 writes metrics.json.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from pipeline.config import TrainConfig, load_config
from pipeline.io import atomic_write_json
from pipeline.train.data import load_split
from pipeline.train.environment import describe_environment
from pipeline.train.model import build_model
from pipeline.train.timing import (
    PHASES,
    AllReduceClock,
    StepTimes,
    peak_memory_bytes,
    timed_allreduce_hook,
    write_step_times,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="resolved experiment YAML")
    parser.add_argument("--out", required=True, help="folder of this configuration")
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    args = parser.parse_args(argv)
    experiment = load_config(args.config)
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    config = experiment.train
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        torch.set_num_threads(config.threads_per_rank)
        device = torch.device("cpu")
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    try:
        metrics = train(experiment.run_dir, config, rank, world, device)
        if rank == 0:
            write_step_times(Path(args.out) / "steps.csv", metrics.pop("step_times"))
            metrics.update(describe_environment(device, config.threads_per_rank, world))
            atomic_write_json(Path(args.out) / "metrics.json", metrics)
    finally:
        # DDP's reducer keeps the process group alive through reference cycles. If it survives until interpreter
        # shutdown, a gloo thread can reach for the GIL mid-finalisation and abort the rank ("terminate called
        # without an active exception"), so it is collected and the group destroyed while Python is fully alive.
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()


def train(run_dir: str, config: TrainConfig, rank: int, world: int, device: torch.device) -> dict:
    """Train with DDP, evaluate on val after each epoch and on test at the end; returns rank 0's metrics."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    x_train, y_train, labels = load_split(Path(run_dir), config.feature, "train")
    splits = {name: load_split(Path(run_dir), config.feature, name)[:2] for name in ("val", "test")}
    model = build_model(config.model, len(labels)).to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    sampler = DistributedSampler(TensorDataset(x_train, y_train), num_replicas=world, rank=rank,
                                 shuffle=True, seed=config.seed, drop_last=True)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=config.batch_size, sampler=sampler,
                        drop_last=True, num_workers=0, pin_memory=device.type == "cuda")
    clock = AllReduceClock()
    ddp.register_comm_hook(clock, timed_allreduce_hook)
    history, steps = [], StepTimes()
    for epoch in range(1, config.epochs + 1):
        sampler.set_epoch(epoch)
        ddp.train()
        _synchronize(device)
        epoch_start = tick = time.perf_counter()
        loss_sum = torch.zeros(2, device=device)
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            got_batch = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(ddp(xb), yb)
            loss.backward()
            _synchronize(device)
            backward_done = time.perf_counter()
            optimizer.step()
            loss_sum += torch.stack([loss.detach() * len(yb), torch.tensor(len(yb), device=device)])
            _synchronize(device)
            now = time.perf_counter()
            steps.add(epoch, data_s=got_batch - tick, forward_backward_s=backward_done - got_batch,
                      optimizer_s=now - backward_done, allreduce_s=clock.take(), step_s=now - tick)
            tick = now
        epoch_time = time.perf_counter() - epoch_start
        dist.all_reduce(loss_sum)
        val_accuracy = evaluate(model, *splits["val"], rank, world, device, config.batch_size)
        history.append({"epoch": epoch, "train_loss": (loss_sum[0] / loss_sum[1]).item(),
                        "val_accuracy": val_accuracy, "epoch_time_s": epoch_time,
                        "samples": int(loss_sum[1].item())})
        if rank == 0:
            print(f"epoch {epoch}/{config.epochs}: loss {history[-1]['train_loss']:.4f} "
                  f"val acc {val_accuracy:.3f} ({epoch_time:.1f} s)", flush=True)
    test_accuracy = evaluate(model, *splits["test"], rank, world, device, config.batch_size)
    steady = history[1:] or history  # the first epoch pays one-off costs (allocator, caches)
    steady_epochs = {h["epoch"] for h in steady}
    samples_per_second = sum(h["samples"] for h in steady) / sum(h["epoch_time_s"] for h in steady)
    peak = torch.tensor(peak_memory_bytes(device), dtype=torch.float64, device=device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return {
        "world_size": world, "nodes": world // int(os.environ.get("LOCAL_WORLD_SIZE", world)),
        "device": device.type, "precision": "fp32", "model": config.model, "feature": config.feature,
        "batch_size_per_rank": config.batch_size, "global_batch_size": config.batch_size * world,
        "epochs": config.epochs, "lr": config.lr, "train_samples": len(y_train), "steps_per_epoch": len(loader),
        "samples_per_second": samples_per_second, "samples_per_second_per_rank": samples_per_second / world,
        **{f"mean_{phase}": steps.mean(phase, steady_epochs) for phase in PHASES},
        "peak_memory_bytes": int(peak.item()),
        "epoch_time_s": sum(h["epoch_time_s"] for h in steady) / len(steady),
        "final_val_accuracy": history[-1]["val_accuracy"], "test_accuracy": test_accuracy,
        "train_wall_s": time.perf_counter() - started, "labels": labels, "history": history, "step_times": steps.rows,
    }


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rank: int, world: int, device: torch.device,
             batch_size: int) -> float:
    """Accuracy over the whole split: each rank scores every world-th sample and the counts are summed."""
    model.eval()
    counts = torch.zeros(2, device=device)
    mine = torch.arange(rank, len(y), world)
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        predictions = model(x[idx].to(device)).argmax(dim=1)
        counts += torch.stack([(predictions == y[idx].to(device)).sum().float(),
                               torch.tensor(float(len(idx)), device=device)])
    dist.all_reduce(counts)
    return (counts[0] / counts[1]).item()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
