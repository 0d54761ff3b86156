"""Measure one GPU node through the pipeline, in one command, inside a time budget.

A GPU allocation is often short and the node offline, so this is two steps:

    python benchmarks/gpu_node.py prepare .gpunode          # here, with the project's setup: data (and wheels)
    python benchmarks/gpu_node.py run OUT --prepared .gpunode   # on the node

`run` does, each step under its own time limit and all of them under `--budget-s`:
  1. installs the prepared wheels when the node's Python lacks the pipeline's dependencies;
  2. the CUDA tests (`pytest -m gpu`, JUnit XML);
  3. `pipeline bench` (synthetic images/s of resnet50 and the cnn in fp32 and bf16, feature chunks/s, image
     encoding, the loader);
  4. `pipeline data manifest`, `preprocess`, `train` and `report` of configs/gpu-node.yaml: resnet50 bf16 at 224
     px on real spectrogram images from the tar shards, then the same steps on synthetic inputs (the data stall);
  5. benchmarks/train_overhead.py: the trainer's instrumentation against a bare loop, same model.
It writes three files to OUT: `gpu_node.log`, `summary.json` (every step's exit status and seconds, and the
headline figures beside the targets the project set for one H200) and `gpu_node.tar.gz` (everything the steps
wrote: JUnit XML, bench and overhead JSON, the run's metrics, logs and report). A step that fails or runs out of
time is recorded and the next one runs. `--device cpu --quick` runs the same steps small on a CPU (the cnn instead of
resnet50), which is how the script itself is tested.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # pipeline.io (standard library only) and the two helpers
from gpu_node_summary import write_summary  # noqa: E402

CONFIG = ROOT / "configs" / "gpu-node.yaml"
# What a CUDA image that already holds torch, numpy, yaml, matplotlib, scipy and pytest lacks of the pipeline's
# dependencies (the lock gives each version; scripts/offline_wheels.py downloads them).
NODE_LACKS = ["dask", "distributed", "dask-jobqueue", "submitit", "soundfile", "cffi", "pycparser", "cryptography",
              "webdataset", "braceexpand", "tornado", "tblib", "zict", "partd", "locket"]
IMPORTS = "import dask.distributed, dask_jobqueue, submitit, soundfile, webdataset, cryptography, yaml, torchaudio"


@dataclass
class Step:
    name: str
    seconds: float
    limit_s: int
    returncode: int | None
    """None: not started, the budget was spent."""
    command: list[str]


class Runner:
    """Runs each step in its own process group under `timeout`-like limits, logging into one file."""

    def __init__(self, log: Path, budget_s: float, environ: dict[str, str]) -> None:
        self.log, self.deadline, self.environ = log, time.monotonic() + budget_s, environ
        self.steps: list[Step] = []

    def say(self, text: str) -> None:
        with self.log.open("a") as out:
            out.write(f"\n=== {time.strftime('%H:%M:%S')} {text}\n")
        print(text, flush=True)

    def __call__(self, name: str, limit_s: int, command: list[str]) -> int | None:
        left = self.deadline - time.monotonic()
        limit = int(min(limit_s, left + 20))
        if limit < 20:
            self.say(f"{name}: skipped, the budget is spent")
            self.steps.append(Step(name, 0.0, limit_s, None, command))
            return None
        self.say(f"{name} (limit {limit} s): {' '.join(command)}")
        started = time.monotonic()
        with self.log.open("a") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=self.environ, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                returncode = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                returncode = _stop(process)
        seconds = round(time.monotonic() - started, 1)
        self.say(f"{name}: exit {returncode} after {seconds} s")
        self.steps.append(Step(name, seconds, limit, returncode, command))
        return returncode


def _stop(process: subprocess.Popen) -> int:
    """SIGTERM to the whole group (training ranks checkpoint on it), SIGKILL 15 s later; 124 like timeout(1)."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break
    return 124


def environment(work: Path) -> dict[str, str]:
    paths = [str(ROOT), str(work / "site"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg",
            "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def install_wheels(run: Runner, prepared: Path, work: Path) -> None:
    """The prepared wheels into work/site, only when the node's Python cannot import the pipeline's needs."""
    if subprocess.run([sys.executable, "-c", IMPORTS], env=run.environ, capture_output=True).returncode == 0:
        run.say("dependencies: all importable")
        return
    wheels = sorted((prepared / "wheels").glob("*.whl"))
    if not wheels:
        run.say(f"dependencies: missing, and no wheels under {prepared / 'wheels'}")
        return
    run("wheels", 120, [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--target", str(work / "site"), *map(str, wheels)])


def experiment_overrides(args: argparse.Namespace, data: Path, run_dir: Path) -> list[str]:
    overrides = [f"run_dir={run_dir}", f"data.root={data}", f"train.device={args.device}"]
    if args.quick:
        overrides += ["preprocess.image_size=32", "preprocess.workers=2", "train.model=cnn", "train.epochs=2",
                      "train.batch_size=8", "train.loader_workers=1", "train.synthetic_steps=4",
                      "train.threads_per_rank=1"]
    return [item for value in overrides for item in ("--set", value)]


def run_steps(args: argparse.Namespace, run: Runner, work: Path) -> None:
    py, device = sys.executable, args.device
    install_wheels(run, args.prepared, work)
    run("machine", 60, [py, str(ROOT / "benchmarks" / "gpu_node_summary.py"), "machine", str(work / "machine.json")])
    data = (args.data or args.prepared / "data").resolve()
    if data.is_dir():  # the tests' speech, where the node lacks the demo's Debian packages (tests/conftest.py)
        run.environ = {**run.environ, "PIPELINE_TEST_SPEECH": str(data)}
    run("gpu_tests", 240 if not args.quick else 120,
        [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "--junitxml", str(work / "gpu_tests.xml"),
         "tests/gpu"])
    bench = [py, "-m", "pipeline", "bench", "--device", device, "--out", str(work / "bench.json")]
    run("bench", 180, bench + (["--quick"] if args.quick else []))
    overrides = experiment_overrides(args, data, work / "run")
    run("manifest", 60, [py, "-m", "pipeline", "data", "manifest", str(CONFIG), *overrides])
    for stage, limit in (("preprocess", 180), ("train", 300)):
        run(stage, limit, [py, "-m", "pipeline", stage, str(CONFIG), *overrides])
    run("report", 90, [py, "-m", "pipeline", "report", str(work / "run")])
    overhead = [py, str(ROOT / "benchmarks" / "train_overhead.py"), "--device", device, "--precision", "bf16",
                "--out", str(work / "train_overhead.json")]
    run("overhead", 120, overhead + (["--repeats", "2", "--steps", "3", "--warmup", "1"] if args.quick else []))


def pack(work: Path, out: Path) -> None:
    """What the steps wrote, less the bulk (shards, images, checkpoints), into one archive."""
    bulky = ("/features/shard-", "/images/", "/checkpoints/", "/site/", "model.pt", "/data/")

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if any(part in f"/{info.name}" for part in bulky) else info

    with tarfile.open(out / "gpu_node.tar.gz", "w:gz") as archive:
        archive.add(work, arcname="gpu_node", filter=keep)


def main() -> None:
    args = parse_args()
    if args.command == "prepare":
        from gpu_node_prepare import prepare

        prepare(args.folder, args.files_per_speaker, NODE_LACKS if args.wheels else [], args.python)
        return
    out, work = args.out.resolve(), args.work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    run = Runner(out / "gpu_node.log", args.budget_s, environment(work))
    started = time.time()
    try:
        run_steps(args, run, work)
    finally:
        steps = [asdict(step) for step in run.steps]
        write_summary(out / "summary.json", work, steps, args.device, args.quick, round(time.time() - started, 1))
        pack(work, out)
    run.say(f"summary: {out / 'summary.json'}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="the demo speech as Ogg (and wheels) for an offline node")
    prepare.add_argument("folder", type=Path)
    prepare.add_argument("--files-per-speaker", type=int, default=None, help="default: all the demo's")
    prepare.add_argument("--wheels", action="store_true", help="also the wheels a torch CUDA image lacks")
    prepare.add_argument("--python", default="3.12", help="the node's Python for those wheels (default 3.12)")
    run = commands.add_parser("run", help="the measurements, on the node")
    run.add_argument("out", type=Path, help="folder for gpu_node.log, summary.json and gpu_node.tar.gz")
    run.add_argument("--prepared", type=Path, default=ROOT / ".gpunode", help="what `prepare` made")
    run.add_argument("--data", type=Path, help="a folder-per-speaker dataset instead of the prepared one")
    run.add_argument("--work", type=Path, default=Path("/tmp/gpu-node"), help="scratch: the run folder, logs")
    run.add_argument("--budget-s", type=float, default=420, help="no step starts after this (default 420)")
    run.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    run.add_argument("--quick", action="store_true", help="small sizes: the script's own test on a CPU")
    return parser.parse_args()


if __name__ == "__main__":
    main()
