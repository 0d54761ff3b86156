"""The CUDA path of training: NCCL ranks through `pipeline train`, a 2-GPU DDP run, device choice and its reason,
per-rank CUDA RNG states in checkpoints, and the memory figures. Marked `gpu`, skipped without CUDA
(tests/gpu/conftest.py); the CPU tests pin `train.device: cpu` and do not depend on these."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline.train import checkpoint
from pipeline.train.environment import describe_environment
from pipeline.train.timing import peak_memory_bytes
from tests.gpu.conftest import gpus
from tests.train.conftest import experiment, features  # noqa: F401  (features: the prepared run folder fixture)


def pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, check=False,
                          timeout=600)


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_one_nccl_rank_trains_through_pipeline_train(tmp_path, features):  # noqa: F811
    config = experiment(tmp_path, features, world_sizes=[1], device="cuda", epochs=2)
    result = pipeline("train", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"train: ws1-cuda-bs4 runs on cuda: train.device cuda, 1 rank on 1 of the {gpus()} GPU(s) here" \
        in result.stdout
    folder = tmp_path / "run" / "configs" / "ws1-cuda-bs4"
    found = metrics(folder)
    assert (found["device"], found["world_size"], found["launcher"]) == ("cuda", 1, "torchrun")
    assert found["gpu_model"] == torch.cuda.get_device_name(0) and found["gpu_count"] == gpus()
    assert found["device_reason"].startswith("train.device cuda")
    assert found["peak_memory_bytes"] > 0 and found["samples_per_second"] > 0
    assert "1 ranks joined via torchrun" in (folder / "train.log").read_text()
    report = pipeline("report", str(tmp_path / "run"))
    assert report.returncode == 0, report.stderr
    assert f", GPU {found['gpu_model']}. Versions:" in (tmp_path / "run" / "report.md").read_text()


def test_two_gpus_train_one_ddp_run_whose_ranks_stay_identical(tmp_path, features):  # noqa: F811
    if gpus() < 2:
        pytest.skip(f"needs 2 GPUs, torch sees {gpus()}")
    config = experiment(tmp_path, features, world_sizes=[2], device="cuda", epochs=2)
    result = pipeline("train", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    found = metrics(tmp_path / "run" / "configs" / "ws2-cuda-bs4")
    assert (found["device"], found["world_size"], found["global_batch_size"]) == ("cuda", 2, 8)
    assert found["rank_max_param_difference"] == 0.0
    assert found["mean_allreduce_s"] >= 0 and found["peak_memory_bytes"] > 0


def test_auto_mixes_devices_when_the_largest_sweep_has_more_ranks_than_gpus(tmp_path, features):  # noqa: F811
    """ws1 on the GPU, ws<gpus + 1> on the CPU: each run says why, and the report names the GPU and the mix."""
    ranks = gpus() + 1
    config = experiment(tmp_path, features, world_sizes=[1, ranks], device="auto", epochs=2,
                        skip_oversubscribed=False)
    result = pipeline("train", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (f"train: ws{ranks}-cpu-bs4 runs on cpu: train.device auto and {ranks} ranks need {ranks} GPUs, this "
            f"machine has {gpus()}") in result.stdout
    configs = tmp_path / "run" / "configs"
    assert metrics(configs / "ws1-cuda-bs4")["device_reason"].startswith("train.device auto and a GPU per rank")
    assert metrics(configs / f"ws{ranks}-cpu-bs4")["device_reason"].endswith(f"this machine has {gpus()}")
    report = pipeline("report", str(tmp_path / "run"))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "run" / "report.md").read_text()
    assert f", GPU {torch.cuda.get_device_name(0)}. Versions:" in text
    assert "did not all run on the same device" in text and "Each device is its own speedup baseline" in text


def test_a_named_configuration_with_more_cuda_ranks_than_gpus_is_refused(tmp_path, features):  # noqa: F811
    ranks = gpus() + 1
    config = experiment(tmp_path, features, world_sizes=[1, ranks])
    result = pipeline("train", str(config), "--configuration", f"ws{ranks}-cuda-bs4")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{ranks} cuda ranks need {ranks} GPUs, this machine has {gpus()}" in result.stderr
    assert not (tmp_path / "run" / "configs" / f"ws{ranks}-cuda-bs4" / "train.log").exists()


def small_model(device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Dropout(0.5), torch.nn.Linear(256, 2)).to(device)
    optimizer = torch.optim.Adam(model.parameters())
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


class OneRank:
    """The backend methods `gather_cuda_rng_states` uses, for a process that is the whole job."""

    rank, world_size = 0, 1

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        pass


def test_a_checkpoint_restores_this_ranks_cuda_generator(tmp_path):
    device = torch.device("cuda", 0)
    model, optimizer, scheduler = small_model(device)
    torch.cuda.manual_seed(7)
    torch.rand(3, device=device)
    gathered = checkpoint.gather_cuda_rng_states(device, OneRank())
    assert list(gathered) == [0] and torch.equal(gathered[0], torch.cuda.get_rng_state(device))
    path = tmp_path / "last.pt"
    checkpoint.save(path, checkpoint.state_dict(model, optimizer, scheduler, checkpoint.Progress(), gathered))
    expected = torch.rand(16, device=device)
    torch.cuda.manual_seed(99)
    checkpoint.load_state_dict(checkpoint.read(path), model, optimizer, scheduler)
    assert torch.equal(torch.rand(16, device=device), expected)
    assert list(checkpoint.read(path)["rng"]["cuda_by_rank"]) == [0]


TWO_RANKS = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from pipeline.train import checkpoint
    from pipeline.train.backend import DDPBackend
    from pipeline.train.distributed import from_environment

    env = from_environment()
    device = torch.device("cuda", env.local_rank)
    backend = DDPBackend()
    backend.setup(env, device)
    rank = backend.rank
    model = torch.nn.Linear(4, 2).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    torch.cuda.manual_seed(100 + rank)  # the current device, set by setup: each rank its own generator
    torch.rand(5, device=device)
    states = checkpoint.gather_cuda_rng_states(device, backend)
    path = Path(sys.argv[1])
    if rank == 0:
        checkpoint.save(path, checkpoint.state_dict(model, optimizer, scheduler, checkpoint.Progress(), states))
    backend.barrier()
    expected = torch.rand(8, device=device)
    torch.cuda.manual_seed(999)
    checkpoint.load_state_dict(checkpoint.read(path), model, optimizer, scheduler)
    assert torch.equal(torch.rand(8, device=device), expected), f"rank {rank}: not its own generator"
    both = [torch.zeros(8, device=device) for _ in range(2)]
    dist.all_gather(both, expected)
    assert not torch.equal(both[0], both[1]), "the ranks' generators should differ"
    print(f"rank {rank}: restored its own CUDA generator", flush=True)
    backend.teardown()
""")


def test_two_nccl_ranks_each_restore_their_own_cuda_generator(tmp_path):
    if gpus() < 2:
        pytest.skip(f"needs 2 GPUs, torch sees {gpus()}")
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(tmp_path / "last.pt")], capture_output=True, text=True, timeout=300,
                            check=False, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("restored its own CUDA generator") == 2
    assert sorted(checkpoint.read(tmp_path / "last.pt")["rng"]["cuda_by_rank"]) == [0, 1]


def test_gpu_memory_figures_count_what_the_allocator_holds():
    device = torch.device("cuda", 0)
    torch.cuda.reset_peak_memory_stats(device)
    model, optimizer, _ = small_model(device)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(512, 64, device=device)).sum().backward()
        optimizer.step()
    torch.cuda.synchronize(device)
    allocated, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    assert reserved >= allocated > 0
    assert peak_memory_bytes(device) == reserved  # what the process holds, not only live tensors
    facts = describe_environment(device, threads_per_rank=1, world_size=1)
    assert facts["gpu_model"] == torch.cuda.get_device_name(device) and facts["gpu_count"] == gpus()
