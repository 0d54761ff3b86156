"""Preprocessing per core: the seed method vs the pipeline, side by side on the same real audio.

Issue target ("Preprocessing at cluster scale"): the pipeline makes >= 8x the seed method's chunks/s on one core,
end to end (chunk + MFCC + log-mel + both images).

Both sides get the same source files: `--files-per-speaker` files of each of the demo's four speakers, evenly
spaced over each speaker's sorted files, taken from `--data-root` (data/demo; if it is missing it is built there with
`pipeline.data.demo.build_demo(root, 16000, max_files_per_speaker=N)`). Building the dataset, writing the manifest
and reading the files once into the page cache happen before any timing, for both sides.

- seed: `seed_method.seed_method` on every file (see benchmarks/seed_method.py: pydub `make_chunks` at 3 s and a
  wav export per chunk; per chunk `librosa.load` at 22,050 Hz, `librosa.feature.mfcc(n_mfcc=13)` drawn with
  `specshow` on a default pyplot figure saved as JPEG (seed 001), and a mel spectrogram on a 0.72 in x 400 dpi
  axis-less figure saved as PNG (seed 000; per chunk by default, `--mel-unit file` for one per source file)).
- pipeline: the real stage, `pipeline.preprocess.run.preprocess(config, executor=None)` (serial, in-process: no
  Dask) on a config written as YAML and loaded with `pipeline.config.load_config`; its manifest is written once by
  `pipeline.stages.data_stage(config)` before the repeats. The settings are `PIPELINE_PREPROCESS` below (the one
  place to change them, or `--set preprocess.KEY=VALUE`): 3 s chunks whose last, shorter chunk is zero-padded as
  long as it holds 3 ms (pydub's `make_chunks` keeps a last chunk of any length, so both sides cut the same number
  of chunks), log-mel and MFCC features, and one image per chunk for each of the two features, 288 x 288 px
  (seed 000's 0.72 in x 400 dpi) PNG.

Each run is a fresh process pinned to one core (`os.sched_setaffinity`, `--core`, default the last core this process
may use) with OMP/MKL/OpenBLAS/numba threads and `torch.set_num_threads` at 1. The process imports its modules
(librosa's lazily loaded submodules, pyplot, torch, torchaudio, and the modules the pipeline imports lazily) before
the clock starts; the import time is recorded (`import_s`) but not counted on either side. Everything after that is
counted: for the pipeline, the config load, manifest reading, feature extractor construction (once per task), first-
call warm-up, features, images, shards, index, statistics and the gallery figure; for the seed method, every figure
and file, including librosa's first-call costs. A repeat runs both sides once on the same files, alternating which
goes first; every run starts from empty output folders, after `sync` has written the previous run's files to
disk (else one side pays for the other's writeback). chunks/s/core = chunks written / wall seconds of the run;
the ratio pipeline/seed is taken per repeat (paired), and the JSON gives its mean, std, min and max over
`--repeats`, with the CPU seconds each run used (to show it had its core) and how busy other processes kept the
machine.

Writes results/benchmarks/preprocess_vs_seed.json (see `--out`). Needs the `bench` extra (librosa).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results" / "benchmarks"
DEFAULT_DATA_ROOT = REPO / "data" / "demo"
DEFAULT_WORK_DIR = Path("/tmp/pipeline-bench/preprocess_vs_seed")
TARGET = 8.0
ISSUE = ("Preprocessing at cluster scale: pipeline chunks/s per core >= 8x the seed method's, end to end (chunk + "
         "MFCC + log-mel + both images), one core each, same real audio")
ISSUE_SEED_RATE = "The issue quotes the seed method at about 40-46 items/s/core on the project's machines"
SAMPLE_RATE = 16000
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

PIPELINE_PREPROCESS = {
    "chunk_seconds": 3.0,                   # seed 001's 3 s chunks
    "last_chunk": "pad",                    # pydub's make_chunks keeps the last, shorter chunk ...
    "min_last_chunk": 0.001,                # ... of any length: pad every remainder of >= 3 ms
    "n_mfcc": 13,                           # seed 001
    "images": True,
    "image_features": ["logmel", "mfcc"],   # both images, as the seed side draws both
    "image_size": 288,                      # seed 000: 0.72 in x 400 dpi
    "image_format": "png",
    "export_chunks": False,                 # the pipeline's chunks are rows into their source (seed 001 wrote wavs)
    "device": "cpu",                        # one core, never a GPU
    "workers": 1,
}
"""The pipeline side's `preprocess:` section (also used by preprocess_scaling.py). Other keys keep the pipeline's
defaults (64 mel bands, n_fft 400, hop 160, 64 files per task, colormap magma)."""


def thread_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(dict.fromkeys(THREAD_ENV, "1"))
    env["MPLBACKEND"] = "Agg"
    return env


def select_sources(data_root: Path, per_speaker: int | None) -> list[dict]:
    """`per_speaker` files of each speaker folder (all with None), evenly spaced over its sorted files; builds the
    demo dataset in `data_root` first if it is not there."""
    data_root = Path(data_root)
    if not (data_root / "SOURCES.csv").is_file():
        from pipeline.data.demo import build_demo

        print(f"building the demo dataset in {data_root} ({per_speaker or 'all'} files per speaker)", flush=True)
        build_demo(data_root, SAMPLE_RATE, max_files_per_speaker=per_speaker)
    sources = []
    for folder in sorted(p for p in data_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(folder.glob("*.wav"))
        if per_speaker is not None and len(files) > per_speaker:
            files = [files[i * len(files) // per_speaker] for i in range(per_speaker)]
        sources += [{"path": str(f.resolve()), "label": folder.name, "speaker": folder.name} for f in files]
    if len({s["label"] for s in sources}) < 2:
        sys.exit(f"{data_root}: needs at least two speaker folders with .wav files")
    return sources


def audio_seconds(sources: list[dict]) -> float:
    import soundfile as sf

    return sum(sf.info(s["path"]).duration for s in sources)


def warm_page_cache(sources: list[dict]) -> None:
    for s in sources:
        Path(s["path"]).read_bytes()


def write_config(work_dir: Path, sources: list[dict], name: str) -> Path:
    """A CSV manifest of `sources` and an experiment YAML whose `preprocess:` is PIPELINE_PREPROCESS."""
    import csv

    work_dir.mkdir(parents=True, exist_ok=True)
    manifest = work_dir / "sources.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
        writer.writeheader()
        writer.writerows(sources)
    config = {"name": name, "run_dir": str(work_dir / "pipeline_run"),
              "data": {"source": "csv", "manifest": str(manifest), "sample_rate": SAMPLE_RATE},
              "preprocess": dict(PIPELINE_PREPROCESS)}
    path = work_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def clear_run_dir(run_dir: Path) -> None:
    """Everything the preprocessing made, so that the next run starts from empty folders (the manifest stays)."""
    for child in Path(run_dir).iterdir():
        if child.name not in ("manifest.csv", "config.yaml"):
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def folder_stats(root: Path) -> dict:
    """Files and bytes under `root` by suffix."""
    stats: dict[str, dict] = {}
    for path in Path(root).rglob("*"):
        if path.is_file():
            entry = stats.setdefault(path.suffix.lstrip(".") or "(none)", {"files": 0, "bytes": 0})
            entry["files"] += 1
            entry["bytes"] += path.stat().st_size
    return dict(sorted(stats.items()))


def image_shapes(root: Path) -> dict:
    """Size and mode of one image of each kind under `root` (read after the run), in files or in the pipeline's
    tar shards (`images/<feature>/shard-NNNNN.tar`)."""
    import io

    from PIL import Image

    from pipeline.preprocess.image_shards import member_table, read_member

    shapes = {}
    for path in sorted(Path(root).rglob("*")):
        parts = path.relative_to(root).parts
        if path.suffix == ".tar":
            member = next((m for m in member_table(path) if m.endswith((".png", ".jpg"))), None)
            if member is not None:
                key = "/".join(parts[:2]) + f"/*.tar/*{Path(member).suffix}"
                with Image.open(io.BytesIO(read_member(path, member))) as image:
                    shapes.setdefault(key, {"size": list(image.size), "mode": image.mode})
        elif path.suffix in (".png", ".jpg") and path.parent.name != "gallery":
            key = "/".join(parts[:2] if parts[0] == "images" else parts[:1]) + f"/*{path.suffix}"
            if key not in shapes:
                with Image.open(path) as image:
                    shapes[key] = {"size": list(image.size), "mode": image.mode}
    return shapes


# ----------------------------------------------------------------------------------------------------------------
# One timed run, in a fresh process pinned to one core.

def _imports(side: str) -> None:
    """What each side imports before the clock starts (module imports are excluded on both sides)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import PIL.Image  # noqa: F401
    if side == "seed":
        import librosa.core.audio  # noqa: F401  (librosa loads its submodules lazily, on first attribute access)
        import librosa.core.spectrum  # noqa: F401
        import librosa.display  # noqa: F401
        import librosa.feature.spectral  # noqa: F401
        import librosa.filters  # noqa: F401
        import pydub  # noqa: F401
        import seed_method  # noqa: F401
    else:
        import torch

        import pipeline.preprocess.gallery  # noqa: F401
        import pipeline.preprocess.run  # noqa: F401
        import pipeline.preprocess.task  # noqa: F401
        torch.set_num_threads(1)


def _time_calls(names: tuple[str, ...]) -> dict[str, list[float]]:
    """Wall seconds of each call of these functions of pipeline.preprocess.run (measurement only: each is wrapped,
    not changed), to split a pipeline run into its tasks, its gallery figure and the rest."""
    import functools

    import pipeline.preprocess.run as run

    timers: dict[str, list[float]] = {}
    for name in names:
        original = getattr(run, name, None)
        if original is None:
            continue
        times = timers.setdefault(name, [])

        @functools.wraps(original)
        def timed(*args, _original=original, _times=times, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                _times.append(time.perf_counter() - start)

        setattr(run, name, timed)
    return timers


def worker(side: str, spec_path: Path) -> None:
    """Run one side once and print one line `RESULT {json}`."""
    started = time.perf_counter()
    spec = json.loads(Path(spec_path).read_text())
    _imports(side)
    import_s = time.perf_counter() - started
    per_file: list[float] = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    if side == "seed":
        from seed_method import seed_method

        counts = {"chunks": 0, "mfcc_images": 0, "mel_images": 0}
        for source in spec["sources"]:
            f0 = time.perf_counter()
            made = seed_method(source["path"], spec["seed_out"], mel_unit=spec["mel_unit"],
                               prefix=f"{source['label']}__{Path(source['path']).stem}")
            per_file.append(time.perf_counter() - f0)
            for key, value in made.items():
                counts[key] += value
        extra: dict = {"first_file_s": per_file[0] if per_file else None,
                       "rest_chunks_per_s": ((counts["chunks"] - spec["first_file_chunks"]) / sum(per_file[1:])
                                             if len(per_file) > 1 else None)}
    else:
        from pipeline.config import load_config
        from pipeline.preprocess.run import preprocess

        timers = _time_calls(("run_task", "write_galleries"))
        config = load_config(spec["config"], spec["overrides"])
        summary = preprocess(config, executor=None)
        counts = {"chunks": summary.chunks, "files": summary.files, "rejected_files": summary.rejected_files}
        extra = {"pipeline_summary_seconds": summary.runs[-1].seconds,
                 **{f"{name}_s": sum(times) for name, times in timers.items()},
                 "tasks": len(timers.get("run_task", []))}
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    result = {"side": side, "seconds": seconds, "cpu_seconds": cpu, "chunks_per_second": counts["chunks"] / seconds,
              "import_s": import_s, "affinity": sorted(os.sched_getaffinity(0)),
              "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **counts, **extra}
    print("RESULT " + json.dumps(result), flush=True)


def run_side(side: str, spec_path: Path, core: int) -> dict:
    """One run of `side` in a fresh process on `core`; returns its RESULT."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--spec", str(spec_path)]
    proc = subprocess.run(command, env=thread_env(), capture_output=True, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, {core}), check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{side} run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ----------------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files-per-speaker", type=int, default=100,
                        help="source files per speaker (4 speakers; about 1.6 chunks per file in the demo)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats; each runs both sides once")
    parser.add_argument("--mel-unit", choices=["chunk", "file"], default="chunk",
                        help="seed 000's mel PNG per chunk (same images as the pipeline) or per source file")
    parser.add_argument("--core", type=int, default=None, help="CPU core both sides are pinned to (default: last)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help="folder-per-speaker dataset (built here with build_demo if missing)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="scratch folder for both outputs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the pipeline side's config, e.g. preprocess.image_format=jpeg")
    parser.add_argument("--keep-outputs", action="store_true", help="leave the last repeat's outputs in --work-dir")
    parser.add_argument("--out", type=Path, default=RESULTS / "preprocess_vs_seed.json")
    parser.add_argument("--worker", choices=["seed", "pipeline"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def library_versions() -> dict:
    versions = {}
    for name in ("librosa", "pydub", "matplotlib", "soxr", "scipy", "numba", "soundfile", "torchaudio", "dask",
                 "distributed", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.spec)
        return
    try:
        metadata.version("librosa")
    except metadata.PackageNotFoundError:
        sys.exit("librosa is missing: the seed method needs the bench extra (.venv/bin/pip install -e '.[bench]')")
    from benchlib import CpuMeter, command_line, environment, now, portable, portable_command, spread, write_result

    from pipeline.config import load_config
    from pipeline.stages import data_stage

    core = args.core if args.core is not None else max(os.sched_getaffinity(0))
    work = args.work_dir
    if work.exists():
        shutil.rmtree(work)
    sources = select_sources(args.data_root, args.files_per_speaker)
    config_path = write_config(work, sources, "preprocess_vs_seed")
    config = load_config(config_path, args.overrides)
    data_stage(config)  # the manifest, once, outside the timing
    warm_page_cache(sources)
    seconds_of_audio = audio_seconds(sources)
    seed_out = work / "seed_out"
    # The seed side's chunks of the first file, to report its rate without the first file (librosa's warm-up).
    from pydub import AudioSegment
    from pydub.utils import make_chunks
    first_file_chunks = len(make_chunks(AudioSegment.from_file(sources[0]["path"], "wav"), 3000))
    spec = {"sources": sources, "seed_out": str(seed_out), "mel_unit": args.mel_unit, "config": str(config_path),
            "overrides": args.overrides, "first_file_chunks": first_file_chunks}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    print(f"preprocess_vs_seed: {len(sources)} files ({seconds_of_audio / 60:.1f} min of audio), {args.repeats} "
          f"repeats, both sides on core {core}", flush=True)

    started, meter = now(), CpuMeter()
    repeats, outputs = [], {}
    for r in range(args.repeats):
        order = ("seed", "pipeline") if r % 2 == 0 else ("pipeline", "seed")
        runs = {}
        for side in order:
            if seed_out.exists():
                shutil.rmtree(seed_out)
            clear_run_dir(Path(config.run_dir))
            os.sync()  # each side starts without the previous run's files still being written back to disk
            runs[side] = run_side(side, spec_path, core)
            if r == args.repeats - 1:
                folder = seed_out if side == "seed" else Path(config.run_dir)
                outputs[side] = {"files_by_suffix": folder_stats(folder), "image_shapes": image_shapes(folder)}
        ratio = runs["pipeline"]["chunks_per_second"] / runs["seed"]["chunks_per_second"]
        repeats.append({"order": list(order), "seed": runs["seed"], "pipeline": runs["pipeline"], "ratio": ratio})
        print(f"  repeat {r + 1}/{args.repeats} ({' then '.join(order)}): seed "
              f"{runs['seed']['chunks_per_second']:.1f} chunks/s ({runs['seed']['chunks']} chunks, "
              f"{runs['seed']['seconds']:.1f} s), pipeline {runs['pipeline']['chunks_per_second']:.1f} chunks/s "
              f"({runs['pipeline']['chunks']} chunks, {runs['pipeline']['seconds']:.1f} s); ratio {ratio:.2f}",
              flush=True)
    load = meter.stop()
    if not args.keep_outputs:
        shutil.rmtree(work)

    def stats(side: str, key: str) -> dict:
        return spread([rep[side][key] for rep in repeats])

    ratio = spread([rep["ratio"] for rep in repeats])
    seed_rate, pipe_rate = stats("seed", "chunks_per_second"), stats("pipeline", "chunks_per_second")
    seed_chunks, pipe_chunks = repeats[0]["seed"]["chunks"], repeats[0]["pipeline"]["chunks"]
    pre = config.preprocess
    seed_images = repeats[0]["seed"]["mfcc_images"] + repeats[0]["seed"]["mel_images"]
    result = {
        "benchmark": "preprocess_vs_seed", "issue": ISSUE, "target_ratio": TARGET,
        "measured_at": started, "runtime_s": load["wall_s"],
        "command": command_line(),
        "environment": {**environment(1), "bench_versions": library_versions()},
        "parameters": {"files_per_speaker": args.files_per_speaker, "files": len(sources),
                       "speakers": sorted({s["label"] for s in sources}),
                       "audio_seconds": round(seconds_of_audio, 1), "data_root": portable(args.data_root),
                       "repeats": args.repeats, "core": core, "threads": 1, "mel_unit": args.mel_unit,
                       "pipeline_config": {"preprocess": {**PIPELINE_PREPROCESS},
                                           "overrides": portable_command(args.overrides)},
                       "pipeline_config_resolved": {**dataclasses.asdict(config.preprocess),
                                                    "scheduler_file": portable(config.preprocess.scheduler_file or "")
                                                    or None},
                       "sources": [str(Path(s["path"]).relative_to(args.data_root.resolve()))
                                   if Path(s["path"]).is_relative_to(args.data_root.resolve())
                                   else portable(s["path"])
                                   for s in sources]},
        "method": __doc__.strip(),
        "machine_load": load,
        "seed_chunks_per_second": seed_rate,
        "pipeline_chunks_per_second": pipe_rate,
        "ratio_pipeline_over_seed": ratio,
        "ratio_of_means": pipe_rate["mean"] / seed_rate["mean"],
        "meets_target": ratio["mean"] >= TARGET, "every_repeat_meets_target": ratio["min"] >= TARGET,
        "chunks": {"seed": seed_chunks, "pipeline": pipe_chunks},
        "seed_images_per_second": spread([(rep["seed"]["mfcc_images"] + rep["seed"]["mel_images"])
                                          / rep["seed"]["seconds"] for rep in repeats]),
        "seed_first_file_s": stats("seed", "first_file_s"),
        "seed_chunks_per_second_after_first_file": stats("seed", "rest_chunks_per_s")
        if len(sources) > 1 else None,
        "cpu_over_wall": {side: spread([rep[side]["cpu_seconds"] / rep[side]["seconds"] for rep in repeats])
                          for side in ("seed", "pipeline")},
        "import_s_not_counted": {side: stats(side, "import_s") for side in ("seed", "pipeline")},
        "pipeline_breakdown_s": {key: stats("pipeline", key) for key in ("run_task_s", "write_galleries_s")
                                 if key in repeats[0]["pipeline"]},
        "pipeline_chunks_per_second_tasks_only": spread([rep["pipeline"]["chunks"] / rep["pipeline"]["run_task_s"]
                                                         for rep in repeats])
        if "run_task_s" in repeats[0]["pipeline"] else None,
        "outputs_last_repeat": outputs,
        "repeats": repeats,
    }
    notes = [
        f"Pipeline / seed chunks per second on one core: {ratio['mean']:.2f} (std {ratio['std']:.2f}, min "
        f"{ratio['min']:.2f}, max {ratio['max']:.2f} over {ratio['n']} paired repeats); target {TARGET:g}: "
        f"{'met' if ratio['mean'] >= TARGET else 'missed'} on the mean, "
        f"{'met' if ratio['min'] >= TARGET else 'missed'} by the worst repeat. Seed method "
        f"{seed_rate['mean']:.1f} chunks/s/core ({seed_rate['min']:.1f}-{seed_rate['max']:.1f}), pipeline "
        f"{pipe_rate['mean']:.1f} ({pipe_rate['min']:.1f}-{pipe_rate['max']:.1f}).",
        f"The seed method made {seed_images / seed_chunks:.2f} images per chunk (mel unit: {args.mel_unit}), "
        f"{result['seed_images_per_second']['mean']:.1f} images/s/core. {ISSUE_SEED_RATE}: compare with chunks/s "
        "or images/s as that figure meant, on the same kind of machine.",
        f"Chunks cut: seed {seed_chunks}, pipeline {pipe_chunks} (pydub keeps a last chunk of any length, the "
        "pipeline pads a last chunk of >= 3 ms); each side's rate uses its own count.",
        "Module imports are not counted on either side (import_s_not_counted); the seed's first file carries "
        "librosa's first-call costs (seed_first_file_s), and each pipeline run builds its feature extractor per task "
        "and draws its gallery figure, all inside the timed run.",
        f"Outputs differ in kind, as the methods do: the seed side writes a wav and a 640 x 480 JPEG (MFCC, default "
        f"pyplot figure, coolwarm) per chunk and a 288 x 288 PNG (mel, magma) per {args.mel_unit}; the pipeline "
        f"writes float16 feature shards and, per chunk, one {pre.image_size} x {pre.image_size} "
        f"{pre.image_format.upper()} for each of {', '.join(pre.image_features) if pre.images else 'no feature'} "
        f"(colormap {pre.colormap}), and "
        f"{'a wav per chunk' if pre.export_chunks else 'no chunk wavs (preprocess.export_chunks: false)'}.",
    ]
    breakdown = result["pipeline_breakdown_s"]
    if "run_task_s" in breakdown and "write_galleries_s" in breakdown:
        tasks_s, gallery_s = breakdown["run_task_s"]["mean"], breakdown["write_galleries_s"]["mean"]
        total_s = stats("pipeline", "seconds")["mean"]
        notes.append(
            f"A pipeline run of {pipe_chunks} chunks took {total_s:.2f} s: {tasks_s:.2f} s in its tasks (chunks, "
            f"features, images, shards; {result['pipeline_chunks_per_second_tasks_only']['mean']:.1f} chunks/s), "
            f"{gallery_s:.2f} s drawing the gallery figures (a fixed cost per run, whatever its size) and "
            f"{total_s - tasks_s - gallery_s:.2f} s for the rest (manifest, index, statistics). The fixed costs weigh "
            "less as runs grow: --files-per-speaker sets the run size.")
    write_result(args.out, result, notes, load, "preprocess_vs_seed", len(repeats))


if __name__ == "__main__":
    main()
