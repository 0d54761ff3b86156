"""benchmarks/gpu_node.py, the one command a GPU node runs, checked on this CPU with `--device cpu --quick`.

Every step runs for real (the CUDA tests collect and skip, bench, manifest, preprocess, train, report, overhead),
so what is checked is the plumbing a GPU run depends on: steps, limits, the summary's figures read from what the
steps wrote, and the archive. The GPU figures themselves only a GPU run gives.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["machine", "gpu_tests", "bench", "manifest", "preprocess", "train", "report", "overhead"]


def test_quick_cpu_run_records_every_step_and_the_figures_it_measured(tmp_path, speech_dir):
    out, work = tmp_path / "out", tmp_path / "work"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_node.py"), "run", str(out), "--device", "cpu",
                    "--quick", "--data", str(speech_dir), "--work", str(work), "--budget-s", "400"],
                   cwd=ROOT, check=True, timeout=600)
    assert sorted(path.name for path in out.iterdir()) == ["gpu_node.log", "gpu_node.tar.gz", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert [(step["name"], step["returncode"]) for step in summary["steps"]] == [(name, 0) for name in STEPS]

    assert summary["machine"]["cuda_available"] is False
    tests = summary["gpu_tests"]
    assert tests["tests"] >= 6 and tests["skipped"] == tests["tests"] and tests["failed"] == []
    run = summary["run"]
    assert (run["name"], run["model"], run["device"]) == ("ws1-cpu-bs8", "cnn", "cpu")
    metrics = json.loads((work / "run" / "configs" / "ws1-cpu-bs8" / "metrics.json").read_text())
    assert run["samples_per_second"] == pytest.approx(metrics["samples_per_second"], rel=1e-6)
    assert summary["preprocess"]["chunks"] == sum(json.loads(
        (work / "run" / "features" / "summary.json").read_text())["chunks_per_split"].values())
    for name, figure in summary["headline"].items():
        assert figure["value"] is not None and figure["value"] == figure["value"], name
        assert figure["met"] is None, f"{name}: a CPU run is reported, not judged"
    assert summary["headline"]["features_chunks_per_s"]["value"] == summary["bench"]["features logmel+mfcc"]

    with tarfile.open(out / "gpu_node.tar.gz") as archive:
        names = archive.getnames()
    assert "gpu_node/run/configs/ws1-cpu-bs8/metrics.json" in names and "gpu_node/gpu_tests.xml" in names
    assert not [name for name in names if "/images/" in name or "/shard-" in name or "checkpoints/" in name]


def test_a_spent_budget_starts_no_step_and_the_summary_says_so(tmp_path):
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_node.py"), "run", str(out), "--device", "cpu",
                    "--quick", "--data", str(tmp_path / "nothing"), "--work", str(tmp_path / "work"),
                    "--budget-s", "0"], cwd=ROOT, check=True, timeout=120)
    summary = json.loads((out / "summary.json").read_text())
    assert [step["returncode"] for step in summary["steps"]] == [None] * len(STEPS)
    assert all(figure["value"] is None and figure["met"] is None for figure in summary["headline"].values())
    assert "gpu_tests.xml" in summary["gpu_tests"]["missing"]
