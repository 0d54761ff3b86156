"""`pipeline bench --quick` on this machine: the JSON's structure, every figure positive with its notes."""

from __future__ import annotations

import json
import subprocess
import sys

EXPECTED = {"train resnet50 fp32", "train cnn fp32", "features logmel+mfcc", "images jpeg", "images png", "loader"}


def check_record(record: dict, device: str) -> None:
    assert record["kind"] == "pipeline-bench" and record["device"] == device
    assert {"hostname", "cpu_model", "versions", "gpus"} <= set(record["hardware"])
    assert record["settings"]["quick"] and record["settings"]["repeats"] >= 2
    assert {"wall_s", "loadavg_before", "loadavg_after"} <= set(record["busy"])
    for result in record["results"]:
        assert result["min"] > 0 and result["median"] >= result["min"] and result["max"] >= result["median"]
        assert len(result["values"]) == result["repeats"] and result["unit"].endswith("/s")
        assert result["notes"], result["name"]


def run_bench(tmp_path, device: str) -> tuple[dict, str, str]:
    """`pipeline bench --quick --device DEVICE`, checked: its JSON, what it printed, and the JSON's path."""
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "pipeline", "bench", "--quick", "--device", device, "--out",
                          str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    record = json.loads(out.read_text())
    check_record(record, device)
    return record, run.stdout, str(out)


def test_bench_quick_on_cpu_writes_every_figure_with_notes(tmp_path):
    record, stdout, out = run_bench(tmp_path, "cpu")
    assert {r["name"] for r in record["results"]} == EXPECTED
    assert {s["name"] for s in record["skipped"]} == {"train resnet50 bf16", "train cnn bf16"}
    assert all("CUDA only" in s["reason"] for s in record["skipped"])
    assert any("not 224" in note for note in record["notes"])  # CPU images are small, and it says so
    assert "features logmel+mfcc" in stdout and out in stdout
