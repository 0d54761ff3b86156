"""Which GPU a rank takes: its local rank when it sees its node's GPUs, device 0 when SLURM bound it to one."""

from __future__ import annotations

import pytest

from pipeline.train.distributed import device_index, from_environment


@pytest.mark.parametrize(("local_rank", "local_world_size", "visible", "expected"), [
    (0, 1, 1, 0),  # one rank, one GPU
    (3, 4, 4, 3),  # torchrun or --gres=gpu:4 / --gpus-per-node=4: every rank sees the node's GPUs
    (0, 4, 4, 0),
    (3, 4, 1, 0),  # --gpus-per-task=1 or --gpu-bind=single:1: each task sees only its own GPU
    (1, 2, 1, 0),
])
def test_the_device_follows_what_the_rank_sees(local_rank, local_world_size, visible, expected):
    assert device_index(local_rank, local_world_size, visible) == expected


@pytest.mark.parametrize(("local_rank", "local_world_size", "visible"), [
    (1, 2, 0),  # no GPU at all
    (2, 4, 2),  # two GPUs for four ranks: two ranks would share one, which NCCL refuses
    (0, 2, 4),  # more GPUs than ranks: which one is this rank's is a guess
    (4, 4, 4),  # a local rank beyond the node's ranks
])
def test_any_other_binding_is_refused_with_the_numbers(local_rank, local_world_size, visible, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-x")
    with pytest.raises(RuntimeError, match=rf"local rank {local_rank} of {local_world_size} ranks on this node "
                                           rf"sees {visible} GPU\(s\) \(CUDA_VISIBLE_DEVICES='GPU-x'\)"):
        device_index(local_rank, local_world_size, visible)


def test_srun_tasks_bound_to_one_gpu_each_take_device_0():
    """Rank 3 of 8 on 2 nodes under `srun --gpus-per-task=1`: local rank 3 of 4, one visible GPU."""
    env = from_environment({"SLURM_PROCID": "7", "SLURM_NTASKS": "8", "SLURM_NNODES": "2", "SLURM_LOCALID": "3",
                            "SLURM_JOB_NODELIST": "gpu01", "SLURM_JOB_ID": "12"})
    assert (env.local_rank, env.local_world_size) == (3, 4)
    assert device_index(env.local_rank, env.local_world_size, 1) == 0
    assert device_index(env.local_rank, env.local_world_size, 4) == 3
