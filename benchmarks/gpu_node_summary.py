"""`summary.json` of benchmarks/gpu_node.py: each step's outcome, and the headline figures beside their targets.

Every figure is read from what a step wrote (JUnit XML, `pipeline bench`'s JSON, the run's report `scaling.json`,
train_overhead.py's JSON); a step that did not write its file leaves its figures out, with the reason. Standard
library only at import (pipeline.io is too): the orchestrator may run before the node has the pipeline's
dependencies.
`python benchmarks/gpu_node_summary.py machine OUT.json` records the machine (torch, CUDA, the GPU, nvidia-smi).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from pipeline.io import atomic_write_text  # standard library only, like `import pipeline`

# The targets the project set for one H200 (issue "GPU-ready"): what a GPU run is judged against.
TARGETS = {
    "resnet50_bf16_images_per_s": (">=", 3000.0, "resnet50 bf16 at 224 px through pipeline train, real images "
                                   "from the tar shards, optimizer steps only (step samples/s)"),
    "features_chunks_per_s": (">=", 10000.0, "log-mel + MFCC chunks/s on the GPU (pipeline bench)"),
    "data_stall": (">=", 0.95, "real-data step time over synthetic-data step time, same model (report's "
                   "real_over_synthetic): 1 means the loader never made the GPU wait"),
    "instrumentation_overhead": ("<", 0.02, "the trainer's instrumented step against a bare loop, same model "
                                 "(train_overhead.py's median overhead)"),
}


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tests_outcome(junit: Path) -> dict:
    try:
        root = ElementTree.parse(junit).getroot()
    except (OSError, ElementTree.ParseError) as err:
        return {"missing": f"{junit.name}: {err}"}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return {**counts, "failed": failed}


def bench_figures(bench: dict | None) -> dict:
    if bench is None:
        return {}
    return {result["name"]: result["median"] for result in bench.get("results", [])}


def run_figures(scaling: dict | None) -> dict:
    """The resnet50 configuration's row of the run's report (one configuration: the first)."""
    if not scaling or not scaling.get("configurations"):
        return {}
    row = scaling["configurations"][0]
    keys = ("name", "model", "precision", "device", "global_batch_size", "samples_per_second",
            "step_samples_per_second", "synthetic_samples_per_second", "real_over_synthetic", "data_share",
            "step_ms", "peak_memory_mb", "flags")
    return {key: row.get(key) for key in keys}


def preprocess_figures(summary: dict | None) -> dict:
    """The whole preprocessing stage's rate (decode, features, JPEG images, shards) from features/summary.json."""
    if not summary or not summary.get("runs"):
        return {}
    last = summary["runs"][-1]
    return {"chunks": last["chunks"], "seconds": last["seconds"], "workers": last["workers"],
            "chunks_per_second": last["chunks"] / last["seconds"] if last["seconds"] else None}


def headline(bench: dict, run: dict, overhead: dict | None, judged: bool) -> dict:
    figures = {
        "resnet50_bf16_images_per_s": run.get("step_samples_per_second"),
        "features_chunks_per_s": bench.get("features logmel+mfcc"),
        "data_stall": run.get("real_over_synthetic"),
        "instrumentation_overhead": (overhead or {}).get("overhead", {}).get("median"),
    }
    verdicts = {}
    for name, value in figures.items():
        operator, target, meaning = TARGETS[name]
        met = None if value is None or not judged else (value >= target if operator == ">=" else value < target)
        verdicts[name] = {"value": value, "target": f"{operator} {target:g}", "met": met, "meaning": meaning}
    return verdicts


def write_summary(out: Path, work: Path, steps: list[dict], device: str, quick: bool, wall_s: float) -> None:
    """The targets are one GPU's at full size: a CPU or `--quick` run (the script's own test) is reported, not
    judged (`met` is None)."""
    bench = _json(work / "bench.json")
    run = run_figures(_json(work / "run" / "scaling.json"))
    overhead = _json(work / "train_overhead.json")
    summary = {
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": device, "quick": quick, "wall_s": wall_s,
        "machine": _json(work / "machine.json"), "steps": steps,
        "headline": headline(bench_figures(bench), run, overhead, judged=device == "cuda" and not quick),
        "gpu_tests": tests_outcome(work / "gpu_tests.xml"),
        "bench": bench_figures(bench), "run": run,
        "preprocess": preprocess_figures(_json(work / "run" / "features" / "summary.json")),
        "overhead": None if overhead is None else {key: overhead.get(key) for key in
                                                   ("parameters", "overhead", "ratio_instrumented_to_bare",
                                                    "cadence", "machine_load")},
    }
    atomic_write_text(out, json.dumps(summary, indent=1, default=str) + "\n")


def machine(out: Path) -> None:
    import torch

    record = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "cuda_available": torch.cuda.is_available(), "gpus": []}
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        record["gpus"].append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                               "capability": f"{props.major}.{props.minor}"})
    if record["cuda_available"]:
        record.update(cudnn=torch.backends.cudnn.version(), nccl=".".join(map(str, torch.cuda.nccl.version())))
    query = "name,driver_version,memory.total,compute_mode,clocks.max.sm,power.limit"
    try:
        smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True, text=True,
                             timeout=30)
        record["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        record["nvidia_smi"] = f"not run: {err}"
    atomic_write_text(out, json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    if sys.argv[1:2] != ["machine"] or len(sys.argv) != 3:
        raise SystemExit("usage: gpu_node_summary.py machine OUT.json")
    machine(Path(sys.argv[2]))
