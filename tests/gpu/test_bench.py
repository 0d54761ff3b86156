"""`pipeline bench --quick` on CUDA: every figure of the CPU test plus bf16 training, and the GPU recorded."""

from __future__ import annotations

from tests.test_bench import EXPECTED, run_bench


def test_bench_quick_on_cuda_has_bf16_and_the_gpu(tmp_path):
    record, _, _ = run_bench(tmp_path, "cuda")
    assert {r["name"] for r in record["results"]} == EXPECTED | {"train resnet50 bf16", "train cnn bf16"}
    assert record["skipped"] == []
    assert record["hardware"]["gpus"] and record["hardware"]["gpu_memory_gib"] > 0
