"""Checkpoint RNG states: each rank its own CUDA generator, and a CPU rank never touches torch.cuda."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from pipeline.train import checkpoint

ROUND_TRIP = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch

    from pipeline.train import checkpoint

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    path = Path(sys.argv[1])
    checkpoint.save(path, checkpoint.state_dict(model, optimizer, scheduler, checkpoint.Progress(epoch=2)))
    after_save = torch.rand(3)
    progress = checkpoint.load_state_dict(checkpoint.read(path), model, optimizer, scheduler)
    assert progress.epoch == 2 and torch.equal(torch.rand(3), after_save)
    assert "cuda_by_rank" not in checkpoint.read(path)["rng"]
    print("cuda initialised:", torch.cuda.is_initialized())
""")


def test_a_cpu_checkpoint_round_trip_never_initialises_cuda(tmp_path):
    result = subprocess.run([sys.executable, "-c", ROUND_TRIP, str(tmp_path / "last.pt")], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cuda initialised: False"


def test_each_cuda_rank_saves_and_restores_its_own_generator(monkeypatch):
    """torch.cuda's RNG calls stand in for the GPUs: which device each call names, and which state it gets."""
    generators = {0: torch.tensor([0] * 16, dtype=torch.uint8), 1: torch.tensor([1] * 16, dtype=torch.uint8)}
    restored = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: generators[device.index].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.__setitem__(device.index, state))

    own = checkpoint.rng_state(torch.device("cuda", 1), rank=1)
    assert list(own["cuda_by_rank"]) == [1] and torch.equal(own["cuda_by_rank"][1], generators[1])
    gathered = checkpoint.rng_state(torch.device("cuda", 0), rank=0, cuda_rng=dict(generators))
    for rank in (0, 1):
        checkpoint.set_rng_state(gathered, torch.device("cuda", rank), rank)
        assert torch.equal(restored.pop(rank), generators[rank])
    # rank 1 of a checkpoint that holds only rank 0's state keeps its generator as seeded
    checkpoint.set_rng_state(checkpoint.rng_state(torch.device("cuda", 0), rank=0), torch.device("cuda", 1), 1)
    assert restored == {}
    # a checkpoint of an older version (rank 0's get_rng_state_all()): each rank takes its own device's entry
    legacy = {**checkpoint.rng_state(torch.device("cpu")), "cuda": [generators[0], generators[1]]}
    checkpoint.set_rng_state(legacy, torch.device("cuda", 1), 1)
    assert torch.equal(restored.pop(1), generators[1])
    # a CPU rank ignores CUDA states and asks torch.cuda nothing
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a: (_ for _ in ()).throw(AssertionError("cuda")))
    checkpoint.set_rng_state(gathered, torch.device("cpu"), 0)
    checkpoint.set_rng_state(legacy, torch.device("cpu"), 1)
    assert "cuda_by_rank" not in checkpoint.rng_state(torch.device("cpu"))
    assert checkpoint.gather_cuda_rng_states(torch.device("cpu"), backend=None) is None
