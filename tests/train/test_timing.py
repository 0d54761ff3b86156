"""Step timing and the host-synchronisation cadence on CPU: the gloo all-reduce timed from launch to completion through
the same hook NCCL uses, marks read after the step, the stop flag and the TensorBoard loss every K steps, and the
LSTM's precision under autocast."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pipeline.config import TrainConfig, load_config
from pipeline.layout import RunLayout
from pipeline.train import checkpoint
from pipeline.train.backend import DDPBackend
from pipeline.train.models import FrameLSTM, build_model, precision_of
from pipeline.train.preemption import StopFlag
from pipeline.train.timing import PhaseClock, StepTimes
from pipeline.train.trainer import GPU_EVERY_STEPS, Trainer, every_steps
from tests.train.conftest import experiment

BUCKET = 2048  # a 2048 x 2048 fp32 weight: one 16 MiB gradient bucket, so bucket spans cannot overlap


def _gloo_rank(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    backend = DDPBackend()
    torch.manual_seed(0)
    ddp = backend.wrap(nn.Linear(BUCKET, BUCKET, bias=False), torch.device("cpu"))
    x = torch.randn(8, BUCKET)
    rows = []
    for _ in range(3):
        started = time.perf_counter()
        ddp(x).square().mean().backward()
        step_s = time.perf_counter() - started
        rows.append((backend.allreduce_clock.take(), step_s))
        ddp.zero_grad(set_to_none=True)
    torch.save(rows, f"{out}.{rank}")
    dist.barrier()
    del ddp
    dist.destroy_process_group()


def test_the_gloo_allreduce_is_timed_from_launch_to_completion_by_the_ddp_hook(tmp_path):
    out = str(tmp_path / "rows")
    mp.start_processes(_gloo_rank, args=(str(tmp_path / "init"), out), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        for allreduce_s, step_s in torch.load(f"{out}.{rank}"):
            # 16 MiB through gloo on localhost: far more than a launch (µs), and inside the backward it overlaps
            assert 1e-4 < allreduce_s <= step_s, (allreduce_s, step_s)


def test_phase_marks_are_read_at_flush_in_step_order():
    clock, steps = PhaseClock(torch.device("cpu")), StepTimes()
    a, b, c = clock.mark(), clock.mark(), clock.mark()
    clock.add(1, data_s=[(a, b), (b, c)], step_s=[(a, c)])
    clock.add(2, data_s=[], step_s=[(b, c)])
    assert steps.rows == []  # nothing is read inside the step
    clock.flush(steps)
    assert steps.rows == [{"epoch": 1, "data_s": 0.0 + (b - a) + (c - b), "step_s": c - a},
                          {"epoch": 2, "data_s": 0.0, "step_s": c - b}]
    assert clock.pending == []


def test_the_cadence_defaults_to_every_step_on_cpu_and_every_ten_on_gpus():
    assert every_steps(None, torch.device("cpu")) == 1
    assert every_steps(None, torch.device("cuda", 0)) == GPU_EVERY_STEPS == 10
    assert every_steps(3, torch.device("cpu")) == 3


class Scalars:
    """A stand-in for TensorBoard's SummaryWriter that remembers what was written."""

    def __init__(self) -> None:
        self.written: list[tuple[str, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.written.append((tag, step))


@pytest.fixture
def one_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _trainer(tmp_path: Path, features: Path, stop: StopFlag, **train: object) -> tuple[Trainer, Scalars]:
    config = load_config(experiment(tmp_path, features, world_sizes=[1], **train))
    layout = RunLayout(config.run_dir)
    tensorboard = Scalars()
    trainer = Trainer(layout, layout.training("ws1-cpu-bs4"), config.train, torch.device("cpu"), DDPBackend(), stop,
                      log=lambda text: None, tensorboard=tensorboard)
    return trainer, tensorboard


def test_a_signal_stops_at_the_next_check_within_k_steps_with_a_checkpoint(tmp_path, features, one_rank):
    stop = StopFlag()
    stop.signal = signal.SIGUSR1  # arrived before the first step
    trainer, tensorboard = _trainer(tmp_path, features, stop, stop_check_every_steps=3, log_every_steps=2)
    outcome = trainer.fit()
    assert outcome.stop_signal == signal.SIGUSR1
    assert outcome.progress.optimizer_steps == outcome.progress.batches_done == 3  # the first check
    assert trainer.paths.checkpoint.exists()
    saved = checkpoint.read(trainer.paths.checkpoint)
    assert len(saved["progress"]["step_times"]) == 3  # every step's timing read before the checkpoint
    assert [step for tag, step in tensorboard.written if tag == "train/loss"] == [2]


def test_without_a_signal_the_loss_is_logged_every_k_steps_and_checkpoints_every_n(tmp_path, features, one_rank):
    trainer, tensorboard = _trainer(tmp_path, features, StopFlag(), epochs=1, stop_check_every_steps=4,
                                    log_every_steps=5, checkpoint_every_steps=3)
    saved_at = []
    save = trainer.save_checkpoint
    trainer.save_checkpoint = lambda: (saved_at.append(trainer.progress.optimizer_steps), save())[1]
    outcome = trainer.fit()
    steps = trainer.steps_per_epoch
    assert outcome.stop_signal is None and outcome.progress.optimizer_steps == steps >= 10
    assert saved_at == [*range(3, steps + 1, 3), steps]  # every 3 steps, then the epoch's end
    assert [step for tag, step in tensorboard.written if tag == "train/loss"] == list(range(5, steps + 1, 5))
    rows = outcome.progress.step_times
    assert len(rows) == steps and all(0 < r["forward_backward_s"] <= r["step_s"] for r in rows)
    assert all(r["allreduce_s"] > 0 for r in rows)  # world size 1 still runs the timed hook


def test_the_lstm_runs_in_fp32_under_bf16_autocast_and_the_record_says_so():
    torch.manual_seed(0)
    model = build_model(TrainConfig(model="lstm"), 4, 1, n_bins=16)
    assert isinstance(model, FrameLSTM)
    seen = {}
    model.lstm.register_forward_hook(lambda m, i, o: seen.update(lstm=o[0].dtype))
    x = torch.randn(2, 1, 16, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert seen["lstm"] == torch.float32
    assert logits.dtype == torch.bfloat16  # the head still runs under autocast
    logits.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in model.lstm.parameters())
    assert precision_of("lstm", autocast=True) == "bf16 (lstm layers in fp32)"
    assert precision_of("cnn", autocast=True) == "bf16"
    assert precision_of("lstm", autocast=False) == "fp32"
    model.eval()  # no dropout: the same input gives the same logits
    plain = model(x)
    with torch.autocast("cpu", enabled=False):
        assert torch.equal(model(x), plain)  # fp32 without autocast: unchanged by the fp32 block
