"""Shard loaders: WebDataset 1.0.2 vs litdata 0.2.76 on this project's data, with the trainer's own reader beside them.

Which well-kept library should read training data at scale? Both read the same samples, for two kinds:

- `features`: one chunk's float16 [bins, frames] log-mel row -> [1, bins, frames] float32, standardised per bin with
  the training statistics (the formula of `pipeline.train.data.normalise`);
- `images`: the chunk's spectrogram PNG, made from that row exactly as preprocessing makes it
  (`images.colour_indices` + `images.encode(indices, colormap, "png")`), decoded with Pillow to RGB and normalised by
  `pipeline.train.data.image_tensor` to [3, H, W].

Data (built once into `--work`, default `$TMPDIR/shard-loaders-bench`, and reused): `pipeline data demo` builds the
whole demo dataset, `Experiment.load("configs/demo.yaml", overrides={data.root, run_dir})` `.data()` and
`.preprocess()` make its feature shards. From them, per kind: WebDataset tars (`webdataset.TarWriter`, one tar per
feature shard, members `<key>.npy` or `<key>.png` plus `<key>.json`, key `shard-NNNNN_RRRRR`, mtime 0 as the
pipeline's image shards write it), and a litdata dataset
(`litdata.optimize`, the same samples in the same order, chunk_size = the mean shard size, so as many chunks as tars,
though chunk boundaries do not fall on shard boundaries: litdata fills chunks by count). Every chunk of the demo is in
them (all splits). An `uneven` variant (features, shards of 40, 400 and 25 samples; litdata writes it with one optimize
worker per shard, so its chunks are 40, 400 and 25 as well) serves the equal-batches check.

What is measured (every measurement in a fresh subprocess, so memory peaks do not mix):

1. Throughput: one full shuffled pass, batch 32, through the library's loader (`wds.WebLoader` over
   `WebDataset(shardshuffle, split_by_node, split_by_worker).shuffle(1000).decode().batched(32)`;
   `litdata.StreamingDataLoader` over `StreamingDataset(shuffle=True)`) at 0, 1 and 2 loader workers, repeated
   `--repeats` times (default 3). The arms are interleaved, their order rotated every repeat (A, B, A, B...), and the
   litdata/WebDataset ratio is taken per repeat from neighbouring runs. samples/s counts the whole pass from the first
   `iter()` (worker start included); steady samples/s leaves out the first batch; per-worker samples/s divides by
   max(workers, 1); CPU ms per sample counts the process and its ended workers (a figure that machine noise moves
   less than wall time). Load averages before and after each run are recorded.
2. Peak memory of each of those passes: the process's peak RSS (VmHWM), the largest loader worker's
   (getrusage RUSAGE_CHILDREN after the workers ended) and the peak sum over live workers (psutil, polled every
   20 ms). A forked worker's RSS counts the pages it shares with its parent, so the sum overstates what they cost.
3. Random access: 1,000 random indices fetched one by one (litdata `dataset[i]`, the pipeline's map-style dataset);
   WebDataset has none: its cost is a scan from the start of the tars, timed for 20 keys and extrapolated.
4. Mid-epoch resume: stop after `--stop-after` batches and resume (litdata: `StreamingDataLoader.state_dict()`, JSON
   round trip, `load_state_dict()` on a fresh loader; WebDataset: no loader state, so replay the epoch with every
   shuffle seeded and skip the batches), at 0 and 2 workers, and compare the sample order with the uninterrupted
   epoch. WebDataset's default (unseeded) shuffles are replayed twice too, to show whether its order repeats at all.
5. Equal batches per rank on the uneven variant at world sizes 2 and 3, each rank simulated in one process by the
   environment the libraries read (WebDataset's `split_by_node`: RANK and WORLD_SIZE; litdata's `_DistributedEnv`:
   WORLD_SIZE and GLOBAL_RANK, read when the dataset is made), at 0 and 2 workers. Unequal batch counts per rank hang
   DDP at the end of an epoch (webdataset issues #188, #225). Also WebDataset's documented way out (resampled shards
   + `with_epoch`) and litdata with `drop_last=False`.
6. The trainer's own reader as a third column, `pipeline`: `build_dataset(run_dir, kind, "logmel", "train")` (the
   training split only) with a shuffling `torch.utils.data.DataLoader`, batch 32, at 0, 1, 2 and 4 workers, interleaved
   with the others. Which reader that is depends on the working tree: the JSON records the commit, whether the tree
   had changes, the dataset class and a hash of pipeline/train/data.py.
7. WebDataset's tar headers: TarWriter's default mtime (a float) makes tarfile write a PAX header before every
   member; unshuffled feature passes over tars with and without them, alternating, show what that costs a reader.
8. From the image rates per worker: the loader workers one rank needs to feed 3,000 images/s (an H200 on resnet50 in
   bf16), ceil(3000 / per-worker rate), as measured on this CPU.

All files are in the page cache after they are built (local disk, hot), so the numbers are CPU costs, not storage.

```bash
.venv/bin/pip install -e '.[bench]'                     # litdata (webdataset is a dependency of the pipeline)
.venv/bin/python benchmarks/shard_loaders.py             # -> results/benchmarks/shard_loaders.json, ~11 min
                                                         # (+3 min the first time, to build the cache)
.venv/bin/python benchmarks/shard_loaders.py --quick --out "$TMPDIR/shard_loaders_quick.json"   # smoke test, ~4 min
```
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import gc
import hashlib
import io
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from benchlib import REPO, RESULTS, CpuMeter, command_line, environment, now, portable, write_result
from PIL import Image
from torch.utils.data import DataLoader

from pipeline.train.data import image_tensor

LIBRARIES = ("webdataset", "litdata")
KINDS = ("features", "images")
FEATURE = "logmel"
BATCH = 32
SHUFFLE_BUFFER = 1000
SEED = 0
WORKERS = (0, 1, 2)
PIPELINE_WORKERS = (0, 1, 2, 4)
UNEVEN = (40, 400, 25)
WORLD_SIZES = (2, 3)
TARGET_IMAGES_PER_S = 3000
RANDOM_FETCHES = 1000
SCAN_LOOKUPS = 20
DEFAULT_WORK = Path(tempfile.gettempdir()) / "shard-loaders-bench"
RANK_VARIABLES = ("RANK", "GLOBAL_RANK", "WORLD_SIZE")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache folder for the data (reused)")
    parser.add_argument("--out", type=Path, default=RESULTS / "shard_loaders.json")
    parser.add_argument("--quick", action="store_true", help="a small demo, one repeat: a smoke test")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stop-after", type=int, default=30, help="batches before the interruption (resume check)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the tars and litdata folders")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def data_layout(work: Path) -> dict[str, Path]:
    """Every path of the cache folder."""
    layout = {"demo": work / "data", "run": work / "run", "prepared": work / "prepared.json",
              "litdata_cache": work / "litdata-cache", "uneven_wds": work / "uneven" / "webdataset",
              "uneven_litdata": work / "uneven" / "litdata",
              "webdataset_features_default_mtime": work / "webdataset" / "features-default-mtime"}
    for kind in KINDS:
        layout[f"webdataset_{kind}"] = work / "webdataset" / kind
        layout[f"litdata_{kind}"] = work / "litdata" / kind
    return layout


def use_work_caches(work: Path) -> None:
    """Point litdata's caches (streaming and optimize) into the work folder instead of ~/.lightning and /tmp."""
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    os.environ["LITDATA_CACHE_DIR"] = str(work / "litdata-cache")
    os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = str(work / "litdata-optimize" / "chunks")
    os.environ["DATA_OPTIMIZER_DATA_CACHE_FOLDER"] = str(work / "litdata-optimize" / "data")


# ----------------------------------------------------------------------------------------------------------------
# Data: the demo run, then the same samples as WebDataset tars and as litdata chunks


def git_state() -> dict:
    def git(*words: str) -> str:
        return subprocess.run(["git", *words], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def build_run(paths: dict[str, Path], quick: bool) -> dict:
    """The demo dataset and its preprocessed run folder (kept if its feature index exists)."""
    run = paths["run"]
    if (run / "features" / "index.csv").is_file():
        return {"reused": True}
    from pipeline.api import Experiment

    start = time.perf_counter()
    if not (paths["demo"] / "SOURCES.csv").is_file():
        cli = REPO / ".venv" / "bin" / "pipeline"
        cmd = [str(cli)] if cli.is_file() else [sys.executable, "-m", "pipeline"]
        cmd += ["data", "demo", str(paths["demo"])]
        subprocess.run(cmd + (["--max-files-per-speaker", "6"] if quick else []), check=True)
    overrides = {"data.root": str(paths["demo"]), "run_dir": str(run)}
    if quick:
        overrides["preprocess.files_per_task"] = 4
    experiment = Experiment.load(REPO / "configs" / "demo.yaml", overrides=overrides)
    experiment.data()
    experiment.preprocess()
    return {"reused": False, "built_s": round(time.perf_counter() - start, 1), "built_at_git": git_state()}


def shard_groups(run: Path) -> list[tuple[str, list[dict]]]:
    """(shard name, its chunks in row order) for every feature shard of the run, all splits."""
    labels = json.loads((run / "features" / "labels.json").read_text())
    groups: dict[str, list[dict]] = {}
    with open(run / "features" / "index.csv", newline="") as f:
        for row in csv.DictReader(f):
            meta = {"shard": row["shard"], "row": int(row["row"]), "label": row["label"],
                    "label_index": labels.index(row["label"]), "split": row["split"],
                    "key": f"{row['shard']}_{int(row['row']):05d}"}
            groups.setdefault(row["shard"], []).append(meta)
    return [(name, sorted(metas, key=lambda m: m["row"])) for name, metas in sorted(groups.items())]


def uneven_groups(groups: list[tuple[str, list[dict]]], sizes: tuple[int, ...]) -> list[tuple[str, list[dict]]]:
    """Shards of `sizes` samples cut from the run's chunks in order (the uneven variant)."""
    chunks = [meta for _, metas in groups for meta in metas]
    if sum(sizes) > len(chunks):
        sizes = tuple(max(1, s * len(chunks) // sum(sizes)) for s in sizes)
    out, start = [], 0
    for i, size in enumerate(sizes):
        out.append((f"uneven-{i}", chunks[start:start + size]))
        start += size
    return out


def image_settings(run: Path) -> tuple[int, str]:
    """(image_size, colormap) the run was preprocessed with."""
    from pipeline.config import load_config

    config = load_config(run / "config.yaml").preprocess
    return config.image_size, config.colormap


def encoded_samples(run: str, metas: list[dict], kind: str, image: tuple[int, str]):
    """(meta, payload) per chunk: its float16 [bins, frames] row, or its PNG made as preprocessing makes it."""
    from pipeline.preprocess import images

    arrays: dict[str, np.ndarray] = {}
    rows = []
    for meta in metas:
        if meta["shard"] not in arrays:
            arrays[meta["shard"]] = np.load(Path(run) / "features" / meta["shard"] / f"{FEATURE}.npy", mmap_mode="r")
        rows.append(arrays[meta["shard"]][meta["row"]])
    x = np.stack(rows)
    if kind == "features":
        payloads = list(x)
    else:
        size, colormap = image
        indices = images.colour_indices(torch.from_numpy(x), size).numpy()
        payloads = [images.encode(ix, colormap, "png") for ix in indices]
    yield from zip(metas, payloads, strict=True)


def sample_info(meta: dict) -> dict:
    return {k: meta[k] for k in ("label", "label_index", "split", "shard", "row")}


def write_tars(out: Path, groups: list[tuple[str, list[dict]]], kind: str, run: Path, image: tuple[int, str],
               mtime: float | None = 0) -> None:
    """One tar per group in WebDataset's layout: `<key>.npy` or `<key>.png`, and `<key>.json`. Members get mtime 0
    as the pipeline's image shards do (`image_shards.MTIME`); `mtime=None` keeps TarWriter's default, the time of
    writing as a float, which makes tarfile add a PAX header to every member."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    extension = "npy" if kind == "features" else "png"
    for name, metas in groups:
        with wds.TarWriter(str(out / f"{name}.tar"), mtime=mtime) as sink:
            for meta, payload in encoded_samples(str(run), metas, kind, image):
                sink.write({"__key__": meta["key"], extension: payload, "json": sample_info(meta)})


def litdata_items(index: int, groups: list, run: str, kind: str, image: tuple[int, str]):
    """litdata.optimize's function: the samples of group `index` as {"key", "x", "label"}."""
    for meta, payload in encoded_samples(run, groups[index][1], kind, image):
        yield {"key": meta["key"], "x": payload, "label": meta["label_index"]}


def write_litdata(out: Path, groups: list, kind: str, run: Path, image: tuple[int, str], workers: int,
                  chunk_size: int) -> None:
    import litdata as ld

    fn = functools.partial(litdata_items, groups=groups, run=str(run), kind=kind, image=image)
    with contextlib.redirect_stdout(io.StringIO()):
        ld.optimize(fn=fn, inputs=list(range(len(groups))), output_dir=str(out), chunk_size=chunk_size,
                    num_workers=workers, reorder_files=False, keep_data_ordered=True, mode="overwrite",
                    verbose=False)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def litdata_chunks(folder: Path) -> list[int]:
    return [c["chunk_size"] for c in json.loads((folder / "index.json").read_text())["chunks"]]


def png_matches_pipeline(run: Path, metas: list[dict], image: tuple[int, str]) -> dict | None:
    """The PNGs made here vs the pipeline's own image files for the same chunks (when the run has files)."""
    with open(run / "features" / "index.csv", newline="") as f:
        own = {(r["shard"], int(r["row"])): r.get(f"image_{FEATURE}", "") for r in csv.DictReader(f)}
    pairs = [(m, own.get((m["shard"], m["row"]), "")) for m in metas]
    pairs = [(m, run / p) for m, p in pairs if p and "#" not in p and (run / p).is_file()]
    if not pairs:
        return None
    same, differing, worst = 0, [], 0
    made = encoded_samples(str(run), [m for m, _ in pairs], "images", image)
    for (_, payload), (_, path) in zip(made, pairs, strict=True):
        same += payload == path.read_bytes()
        ours = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"), dtype=np.int16)
        theirs = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        differing.append(float((ours != theirs).any(axis=-1).mean()))
        worst = max(worst, int(np.abs(ours - theirs).max()))
    return {"compared": len(pairs), "byte_identical": int(same), "mean_share_of_pixels_differing":
            round(statistics.fmean(differing), 4), "max_channel_difference": worst,
            "why": "made here from the float16 rows stored in the shards; preprocessing renders from the float32 "
                   "features before storing them, so a few pixels differ by a few levels (same size and format)"}


def build_formats(paths: dict[str, Path], groups: list, image: tuple[int, str], chunk_size: int) -> dict:
    """Per kind: the WebDataset tars and the litdata folder of `groups`, with their sizes and build times."""
    kinds = {}
    for kind in KINDS:
        start = time.perf_counter()
        write_tars(paths[f"webdataset_{kind}"], groups, kind, paths["run"], image)
        middle = time.perf_counter()
        write_litdata(paths[f"litdata_{kind}"], groups, kind, paths["run"], image, 1, chunk_size)
        chunks = litdata_chunks(paths[f"litdata_{kind}"])
        kinds[kind] = {
            "webdataset": {"tars": len(groups), "bytes": folder_bytes(paths[f"webdataset_{kind}"]),
                           "build_s": round(middle - start, 1)},
            "litdata": {"chunks": len(chunks), "chunk_samples": {"min": min(chunks), "max": max(chunks)},
                        "bytes": folder_bytes(paths[f"litdata_{kind}"]),
                        "build_s": round(time.perf_counter() - middle, 1)}}
    return kinds


def prepare(paths: dict[str, Path], quick: bool, rebuild: bool) -> dict:
    """Build what the cache lacks; the description of the data (kept in prepared.json)."""
    built = [f"{lib}_{kind}" for lib in LIBRARIES for kind in KINDS]
    built += ["uneven_wds", "uneven_litdata", "webdataset_features_default_mtime"]
    if paths["prepared"].is_file() and all(paths[key].is_dir() for key in built) and not rebuild:
        return json.loads(paths["prepared"].read_text())
    run_info, run = build_run(paths, quick), paths["run"]
    for key in built:
        shutil.rmtree(paths[key], ignore_errors=True)
    groups, image = shard_groups(run), image_settings(run)
    sizes = [len(metas) for _, metas in groups]
    chunk_size = round(statistics.fmean(sizes))
    kinds = build_formats(paths, groups, image, chunk_size)
    write_tars(paths["webdataset_features_default_mtime"], groups, "features", run, image, mtime=None)
    uneven = uneven_groups(groups, UNEVEN)
    write_tars(paths["uneven_wds"], uneven, "features", run, image)
    write_litdata(paths["uneven_litdata"], uneven, "features", run, image, len(uneven),
                  max(len(metas) for _, metas in uneven))
    splits = [meta["split"] for _, metas in groups for meta in metas]
    shape = np.load(run / "features" / groups[0][0] / f"{FEATURE}.npy", mmap_mode="r").shape[1:]
    info = {"run": run_info, "chunks": sum(sizes),
            "chunks_per_split": {s: splits.count(s) for s in sorted(set(splits))}, "feature_shards": len(groups),
            "samples_per_shard": {"min": min(sizes), "median": statistics.median(sizes), "max": max(sizes)},
            "feature": FEATURE, "feature_row_shape": list(shape), "image_size": image[0], "colormap": image[1],
            "litdata_chunk_size": chunk_size, "kinds": kinds, "tar_member_mtime": 0,
            "uneven": {"webdataset_tar_samples": [len(metas) for _, metas in uneven],
                       "litdata_chunk_samples": litdata_chunks(paths["uneven_litdata"])},
            "pngs_vs_pipeline_image_files": png_matches_pipeline(run, groups[0][1], image)}
    paths["prepared"].write_text(json.dumps(info, indent=1))
    return info


# ----------------------------------------------------------------------------------------------------------------
# Loaders: the same samples through each library, and the trainer's own reader


def feature_stats(run: Path) -> dict:
    return json.loads((run / "features" / "stats.json").read_text())[FEATURE]


class FeatureTensor:
    """float16 [bins, frames] -> [1, bins, frames] float32, standardised per bin (`pipeline.train.data.normalise`)."""

    def __init__(self, stats: dict) -> None:
        self.mean = torch.tensor(stats["mean"], dtype=torch.float32).view(-1, 1)
        self.std = torch.tensor(stats["std"], dtype=torch.float32).view(-1, 1)

    def __call__(self, row: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(row, dtype=np.float32))
        return ((x - self.mean) / self.std).unsqueeze(0)


def png_tensor(data: bytes) -> torch.Tensor:
    """PNG bytes -> [3, H, W] float, as the trainer decodes an image (Pillow, RGB, `image_tensor`)."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"))
    return image_tensor(pixels)


class Sample:
    """A decoded sample -> (tensor, label index, key), for both libraries."""

    def __init__(self, kind: str, stats: dict) -> None:
        self.kind, self.features = kind, FeatureTensor(stats)

    def webdataset(self, sample: tuple) -> tuple:
        x, info, key = sample  # (.npy array or decoded image tensor, .json, __key__)
        return (self.features(x) if self.kind == "features" else x), info["label_index"], key

    def __call__(self, item: dict) -> tuple:  # a litdata item
        x = self.features(item["x"]) if self.kind == "features" else png_tensor(item["x"])
        return x, item["label"], item["key"]


def wds_dataset(tars: list[Path], kind: str, stats: dict, shuffle: bool, seed: int | None = None,
                epoch_batches: int | None = None):
    """WebDataset's pipeline: shard shuffle, split by rank and worker, sample shuffle, decode, map, batch.
    `epoch_batches`: resampled shards and `with_epoch` (the documented way to equal batches per rank)."""
    import webdataset as wds

    urls = [str(t) for t in tars]
    resampled = epoch_batches is not None
    ds = wds.WebDataset(urls, shardshuffle=len(urls) if shuffle and not resampled else False, seed=seed,
                        resampled=resampled, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker,
                        empty_check=False)
    if shuffle:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed)
    decoders = [] if kind == "features" else [wds.handle_extension("png", png_tensor)]
    sample = Sample(kind, stats)
    ds = ds.decode(*decoders).to_tuple("npy" if kind == "features" else "png", "json", "__key__")
    ds = ds.map(sample.webdataset).batched(BATCH, partial=True)
    return ds.with_epoch(epoch_batches) if resampled else ds


def wds_loader(tars: list[Path], kind: str, stats: dict, workers: int, shuffle: bool = True,
               seed: int | None = None, epoch_batches: int | None = None):
    import webdataset as wds

    return wds.WebLoader(wds_dataset(tars, kind, stats, shuffle, seed, epoch_batches), batch_size=None,
                         num_workers=workers)


def litdata_dataset(folder: Path, kind: str, stats: dict, shuffle: bool = False, drop_last: bool | None = None):
    import litdata as ld

    return ld.StreamingDataset(str(folder), shuffle=shuffle, seed=SEED, drop_last=drop_last,
                               transform=Sample(kind, stats))


def litdata_loader(folder: Path, kind: str, stats: dict, workers: int, shuffle: bool = True,
                   drop_last: bool | None = None):
    import litdata as ld

    return ld.StreamingDataLoader(litdata_dataset(folder, kind, stats, shuffle, drop_last), batch_size=BATCH,
                                  num_workers=workers)


def pipeline_dataset(run: Path, kind: str):
    from pipeline.train.data import build_dataset

    dataset, _ = build_dataset(run, kind, FEATURE, "train")
    return dataset


def make_loader(library: str, kind: str, workers: int, paths: dict[str, Path], stats: dict):
    """The shuffling loader of one arm, batch 32."""
    if library == "webdataset":
        return wds_loader(sorted(paths[f"webdataset_{kind}"].glob("*.tar")), kind, stats, workers)
    if library == "litdata":
        return litdata_loader(paths[f"litdata_{kind}"], kind, stats, workers)
    return DataLoader(pipeline_dataset(paths["run"], kind), batch_size=BATCH, shuffle=True, num_workers=workers,
                      generator=torch.Generator().manual_seed(SEED))


# ----------------------------------------------------------------------------------------------------------------
# Measurements, each run in a fresh subprocess (`--child SPEC`)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """This process's peak RSS since it started (VmHWM). Not getrusage's ru_maxrss: Linux keeps that across exec,
    so a child would report its parent's peak whenever the parent's was higher."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Peak RSS of this process and of its loader workers while the block runs.

    The process: VmHWM. The largest worker: getrusage(RUSAGE_CHILDREN) once the workers have ended (forked, not
    exec'd, so theirs start from their own RSS).
    All workers together: the sum of their RSS, polled with psutil every 20 ms (if psutil is installed).
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.workers_sum_mib, self.live_workers = interval, 0.0, 0
        self._stop = threading.Event()
        try:
            import psutil

            self._me = psutil.Process()
        except ImportError:
            self._me = None
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while self._me is not None and not self._stop.wait(self.interval):
            total, count = 0, 0
            for child in self._me.children(recursive=True):
                with contextlib.suppress(Exception):
                    total, count = total + child.memory_info().rss, count + 1
            self.workers_sum_mib = max(self.workers_sum_mib, total / 2**20)
            self.live_workers = max(self.live_workers, count)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def record(self) -> dict:
        return {"process_peak_rss_mib": round(peak_rss_mib(), 1),
                "largest_worker_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
                "workers_peak_rss_sum_mib": round(self.workers_sum_mib, 1) if self._me is not None else None,
                "live_workers_seen": self.live_workers}


def cpu_seconds() -> float:
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                           resource.RUSAGE_CHILDREN)))


def timed_pass(loader) -> dict:
    """One full pass over `loader`: samples, batches, and the times of the first and last batch."""
    start, samples, batches, first = time.perf_counter(), 0, 0, None
    for batch in loader:
        samples, batches = samples + len(batch[1]), batches + 1
        if first is None:
            first = (time.perf_counter(), samples)
    end = time.perf_counter()
    steady = (samples - first[1]) / (end - first[0]) if first and end > first[0] else None
    return {"samples": samples, "batches": batches, "first_batch_s": round(first[0] - start, 4),
            "pass_s": round(end - start, 4), "samples_per_s": samples / (end - start), "steady_samples_per_s": steady}


def child_pass(spec: dict, paths: dict[str, Path]) -> dict:
    """Throughput and peak memory of one shuffled pass through one arm."""
    torch.set_num_threads(1)
    stats, workers = feature_stats(paths["run"]), spec["workers"]
    baseline, load, cpu = rss_mib(), os.getloadavg(), cpu_seconds()
    with PeakMemory() as memory:
        start = time.perf_counter()
        loader = make_loader(spec["library"], spec["kind"], workers, paths, stats)
        built = time.perf_counter() - start
        result = timed_pass(loader)
        dataset_class = type(getattr(loader, "dataset", None)).__name__
        del loader
        gc.collect()
    result.update(build_s=round(built, 4), per_worker_samples_per_s=result["samples_per_s"] / max(workers, 1),
                  cpu_ms_per_sample=1000 * (cpu_seconds() - cpu) / max(result["samples"], 1),
                  rss_before_loader_mib=round(baseline, 1), loadavg_before=[round(v, 2) for v in load],
                  loadavg_after=[round(v, 2) for v in os.getloadavg()], **memory.record())
    if spec["library"] == "pipeline":
        result["dataset_class"] = dataset_class
    return result


def child_random_access(spec: dict, paths: dict[str, Path]) -> dict:
    """`RANDOM_FETCHES` random indices fetched one by one (litdata, pipeline); WebDataset: the cost of a scan."""
    torch.set_num_threads(1)
    library, kind, stats = spec["library"], spec["kind"], feature_stats(paths["run"])
    if library == "webdataset":
        return wds_scan_cost(sorted(paths[f"webdataset_{kind}"].glob("*.tar")), spec["fetches"])
    start = time.perf_counter()
    dataset = (litdata_dataset(paths[f"litdata_{kind}"], kind, stats) if library == "litdata"
               else pipeline_dataset(paths["run"], kind))
    dataset[0]
    opened = time.perf_counter() - start
    indices = np.random.default_rng(SEED).integers(0, len(dataset), spec["fetches"])
    times = []
    for i in indices:
        t = time.perf_counter()
        dataset[int(i)]
        times.append(time.perf_counter() - t)
    ms = sorted(1000 * t for t in times)
    return {"random_access": True, "how": "dataset[i]" if library == "litdata" else "map-style dataset[i]",
            "dataset_len": len(dataset), "fetches": len(times), "open_and_first_fetch_s": round(opened, 4),
            "total_s": round(sum(times), 4), "fetches_per_s": len(times) / sum(times),
            "per_fetch_ms": {"median": statistics.median(ms), "p95": ms[int(0.95 * (len(ms) - 1))], "max": ms[-1]}}


def wds_scan_cost(tars: list[Path], fetches: int) -> dict:
    """WebDataset has no index: finding one sample means reading the tars from the start until its key."""
    import webdataset as wds

    urls = [str(t) for t in tars]
    start = time.perf_counter()
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    scan = time.perf_counter() - start
    wanted = [keys[int(i)] for i in np.random.default_rng(SEED).integers(0, len(keys), SCAN_LOOKUPS)]
    times = []
    for key in wanted:
        t = time.perf_counter()
        next(s for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False) if s["__key__"] == key)
        times.append(time.perf_counter() - t)
    return {"random_access": False,
            "why": "WebDataset streams tars front to back and keeps no index of members, so dataset[i] does not exist",
            "what_it_would_take": "a scan from the first tar until the key (or an index of member offsets built "
                                  "outside WebDataset, e.g. pipeline.preprocess.image_shards.member_table)",
            "samples": len(keys), "full_scan_s": round(scan, 4), "lookups_by_scan_measured": len(times),
            "mean_lookup_by_scan_ms": 1000 * statistics.fmean(times),
            f"estimated_s_for_{fetches}_fetches_one_by_one": round(fetches * statistics.fmean(times), 2)}


def batch_keys(loader, limit: int | None = None) -> list[list[str]]:
    """The sample keys of each batch, in order (the first `limit` batches, or the whole epoch)."""
    out = []
    for batch in loader:
        out.append(list(batch[2]))
        if limit is not None and len(out) >= limit:
            break
    return out


def litdata_resume(folder: Path, kind: str, stats: dict, workers: int, stop_after: int) -> dict:
    """Uninterrupted epoch vs stop after `stop_after` batches, state_dict, JSON round trip, load_state_dict."""
    full = batch_keys(litdata_loader(folder, kind, stats, workers))
    loader = litdata_loader(folder, kind, stats, workers)
    head = batch_keys(loader, stop_after)
    state = loader.state_dict()
    del loader
    text = json.dumps(state)
    resumed = litdata_loader(folder, kind, stats, workers)
    start = time.perf_counter()
    resumed.load_state_dict(json.loads(text))
    iterator = iter(resumed)
    tail = [list(next(iterator)[2])]
    first = time.perf_counter() - start
    tail += batch_keys(iterator)
    return {"how": "StreamingDataLoader.state_dict() after the interruption, JSON round trip, load_state_dict() on a "
                   "fresh StreamingDataset + StreamingDataLoader, then iterate",
            "state_json_bytes": len(text), "time_to_first_batch_after_resume_s": round(first, 4),
            "resumed_order_equals_uninterrupted": head == full[:stop_after] and tail == full[stop_after:],
            "batches_uninterrupted": len(full), "batches_before_stop": len(head), "batches_after_resume": len(tail),
            "samples_missing_after_resume": len(set(sum(full[stop_after:], [])) - set(sum(tail, []))),
            "samples_repeated_after_resume": len(set(sum(tail, [])) & set(sum(head, [])))}


def wds_resume(tars: list[Path], kind: str, stats: dict, workers: int, stop_after: int) -> dict:
    """No loader state: replay the epoch with every shuffle seeded and skip `stop_after` batches."""
    seeded = wds_loader(tars, kind, stats, workers, seed=SEED)
    full = batch_keys(seeded)
    second_epoch = batch_keys(seeded)
    start = time.perf_counter()
    iterator = iter(wds_loader(tars, kind, stats, workers, seed=SEED))
    for _ in range(stop_after):
        next(iterator)
    skipped = time.perf_counter() - start
    tail = [list(next(iterator)[2])]
    first = time.perf_counter() - start
    tail += batch_keys(iterator)
    epoch_start = time.perf_counter()
    unseeded = [batch_keys(wds_loader(tars, kind, stats, workers), stop_after) for _ in range(2)]
    return {"how": f"no loader state: a fresh WebLoader with every shuffle seeded (WebDataset(seed={SEED}), "
                   f".shuffle({SHUFFLE_BUFFER}, seed={SEED})) replays the epoch and the first {stop_after} batches "
                   "are read, decoded and dropped",
            "replay_skip_s": round(skipped, 4), "time_to_first_batch_after_resume_s": round(first, 4),
            "resumed_order_equals_uninterrupted": tail == full[stop_after:],
            "batches_uninterrupted": len(full), "batches_after_resume": len(tail),
            "default_unseeded_shuffle_repeats_its_order": unseeded[0] == unseeded[1],
            "seeded_second_epoch_repeats_the_first": second_epoch == full,
            "unseeded_two_replays_s": round(time.perf_counter() - epoch_start, 4),
            "note": "with fixed seeds every epoch repeats the same order (the shuffles' RNGs are re-seeded at each "
                    "iter()), so an exact replay and a fresh order per epoch need the caller to derive the seeds "
                    "from the epoch"}


def child_resume(spec: dict, paths: dict[str, Path]) -> dict:
    torch.set_num_threads(1)
    kind, workers, stats = spec["kind"], spec["workers"], feature_stats(paths["run"])
    start = time.perf_counter()
    if spec["library"] == "litdata":
        result = litdata_resume(paths[f"litdata_{kind}"], kind, stats, workers, spec["stop_after"])
    else:
        tars = sorted(paths[f"webdataset_{kind}"].glob("*.tar"))
        result = wds_resume(tars, kind, stats, workers, spec["stop_after"])
    return {"workers": workers, "stop_after_batches": spec["stop_after"], **result,
            "wall_s": round(time.perf_counter() - start, 2)}


@contextlib.contextmanager
def simulated_rank(rank: int, world_size: int):
    """Rank and world size as both libraries read them without a process group (see the module docstring)."""
    saved = {name: os.environ.get(name) for name in RANK_VARIABLES}
    os.environ.update(RANK=str(rank), GLOBAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def rank_counts(make, world_size: int) -> dict:
    """Batches and samples each simulated rank gets in one epoch from the loader `make()` builds."""
    batches, samples, seen = [], [], []
    for rank in range(world_size):
        with simulated_rank(rank, world_size):
            keys = batch_keys(make())
        batches.append(len(keys))
        samples.append(sum(map(len, keys)))
        seen += sum(keys, [])
    return {"batches_per_rank": batches, "samples_per_rank": samples, "equal_batches": len(set(batches)) == 1,
            "distinct_samples_over_ranks": len(set(seen)), "samples_drawn_over_ranks": len(seen)}


def child_equal_batches(spec: dict, paths: dict[str, Path]) -> dict:
    """Per variant, world size and worker count: the batches of each rank on the uneven shards."""
    torch.set_num_threads(1)
    stats, folder = feature_stats(paths["run"]), paths["uneven_litdata"]
    tars = sorted(paths["uneven_wds"].glob("*.tar"))
    total = sum(litdata_chunks(folder))
    variants = {
        "webdataset": {
            "split_by_node": lambda ws, w: wds_loader(tars, "features", stats, w, shuffle=False),
            "resampled_with_epoch": lambda ws, w: wds_loader(
                tars, "features", stats, w, epoch_batches=math.ceil(total / ws / BATCH / max(w, 1)))},
        "litdata": {
            "default_drop_last": lambda ws, w: litdata_loader(folder, "features", stats, w, shuffle=False),
            "drop_last_false": lambda ws, w: litdata_loader(folder, "features", stats, w, shuffle=False,
                                                            drop_last=False)},
    }[spec["library"]]
    out = {}
    for name, make in variants.items():
        out[name] = {f"world_size_{ws}": {f"workers_{w}": rank_counts(functools.partial(make, ws, w), ws)
                                          for w in spec["workers"]} for ws in WORLD_SIZES}
    return {"samples": total, **out}


def child_tar_headers(spec: dict, paths: dict[str, Path]) -> dict:
    """WebDataset, features, 0 workers, no shuffle: tars with mtime 0 vs TarWriter's default (a PAX header per
    member), alternating, `repeats` passes each."""
    torch.set_num_threads(1)
    stats = feature_stats(paths["run"])
    variants = {"mtime_0": paths["webdataset_features"], "default_mtime": paths["webdataset_features_default_mtime"]}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    cpu_ms: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(spec["repeats"]):
        for name in (list(variants) if repeat % 2 == 0 else list(variants)[::-1]):
            loader = wds_loader(sorted(variants[name].glob("*.tar")), "features", stats, 0, shuffle=False)
            cpu = time.process_time()
            done = timed_pass(loader)
            rates[name].append(done["samples_per_s"])
            cpu_ms[name].append(1000 * (time.process_time() - cpu) / done["samples"])
    ratio = [d / z for d, z in zip(rates["default_mtime"], rates["mtime_0"], strict=True)]
    cpu_ratio = [d / z for d, z in zip(cpu_ms["default_mtime"], cpu_ms["mtime_0"], strict=True)]
    return {"how": "unshuffled passes, 0 workers, alternating the two tar sets; the same samples and members",
            "samples_per_s": {name: three(values) for name, values in rates.items()},
            "cpu_ms_per_sample": {name: three(values) for name, values in cpu_ms.items()},
            "default_mtime_over_mtime_0": three(ratio), "cpu_default_mtime_over_mtime_0": three(cpu_ratio)}


CHILDREN = {"pass": child_pass, "tar_headers": child_tar_headers, "random_access": child_random_access,
            "resume": child_resume, "equal_batches": child_equal_batches}


def run_child_main(text: str) -> None:
    """`--child SPEC`: one measurement in this fresh process; its result is the last line of stdout."""
    spec = json.loads(text)
    work = Path(spec["work"])
    use_work_caches(work)
    result = CHILDREN[spec["task"]](spec, data_layout(work))
    print(json.dumps(result))


# ----------------------------------------------------------------------------------------------------------------
# The parent: interleaved runs, summaries, the JSON


def scrub(text: str, work: Path) -> str:
    """`text` without absolute paths of this machine (for error messages in the JSON)."""
    for path, name in ((work, portable(work)), (REPO, "."), (Path(sys.prefix), "$VIRTUAL_ENV")):
        text = text.replace(str(path), name)
    return text


def run_child(spec: dict, work: Path, timeout: float = 600) -> dict:
    """Run one measurement in a fresh interpreter; its JSON result, or {"error": ...}."""
    words = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps({**spec, "work": str(work)})]
    start = time.perf_counter()
    try:
        done = subprocess.run(words, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = round(time.perf_counter() - start, 2)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": scrub((done.stderr or done.stdout).strip()[-1500:], work), "returncode": done.returncode}
    try:
        return {**json.loads(lines[-1]), "child_wall_s": wall}
    except json.JSONDecodeError:
        return {"error": scrub(done.stdout[-1500:], work)}


def three(values: list[float]) -> dict | None:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "values": values}


def arms(workers: int, worker_counts: list[int]) -> list[str]:
    """The arms measured at `workers` loader workers: both libraries at WORKERS, the pipeline at PIPELINE_WORKERS."""
    libraries = [lib for lib in LIBRARIES if workers in WORKERS]
    return libraries + (["pipeline"] if workers in PIPELINE_WORKERS else [])


def throughput_runs(work: Path, repeats: int, worker_counts: list[int], skip: set[tuple[str, str]]) -> list[dict]:
    """Every arm x kind x worker count once per repeat; within a (kind, workers) cell the arms run back to back
    and their order rotates every repeat, so neighbours share the machine's state. `skip`: (arm, kind) not run."""
    runs = []
    for repeat in range(repeats):
        for kind in KINDS:
            for workers in worker_counts:
                cell = arms(workers, worker_counts)
                order = cell[repeat % len(cell):] + cell[:repeat % len(cell)]
                for position, library in enumerate(order):
                    if (library, kind) in skip:
                        continue
                    spec = {"task": "pass", "library": library, "kind": kind, "workers": workers}
                    result = run_child(spec, work)
                    runs.append({**spec, "repeat": repeat, "position_in_cell": position, **result})
                    rate = result.get("samples_per_s")
                    print(f"repeat {repeat} {kind:8s} workers {workers} {library:10s} "
                          + (f"{rate:8.0f} samples/s" if rate else f"error: {result.get('error', '')[-300:]}"),
                          flush=True)
    return runs


def summarise_cell(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0].get("error") if runs else "not run"}
    fields = ("samples_per_s", "steady_samples_per_s", "per_worker_samples_per_s", "first_batch_s", "build_s",
              "cpu_ms_per_sample", "process_peak_rss_mib", "largest_worker_peak_rss_mib", "workers_peak_rss_sum_mib",
              "rss_before_loader_mib")
    out = {field: three([r.get(field) for r in ok]) for field in fields}
    out["samples_per_pass"] = ok[0]["samples"]
    out["batches_per_pass"] = ok[0]["batches"]
    out["repeats"] = len(ok)
    out["loadavg_1m_before_each"] = [r["loadavg_before"][0] for r in ok]
    if "dataset_class" in ok[0]:
        out["dataset_class"] = ok[0]["dataset_class"]
    return out


def ratios(runs: list[dict], worker_counts: list[int]) -> dict:
    """litdata / webdataset per repeat, from the neighbouring runs of the same cell."""
    out = {}
    for kind in KINDS:
        for workers in worker_counts:
            cell = {(r["repeat"], r["library"]): r for r in runs if r["kind"] == kind and r["workers"] == workers
                    and "error" not in r}
            repeats = sorted({rep for rep, _ in cell})
            row = {}
            for field in ("samples_per_s", "steady_samples_per_s", "cpu_ms_per_sample"):
                row[field] = three([cell[(rep, "litdata")][field] / cell[(rep, "webdataset")][field]
                                    for rep in repeats if (rep, "litdata") in cell and (rep, "webdataset") in cell])
            out[f"{kind}_workers_{workers}"] = row
    return out


def workers_needed(results: dict) -> dict:
    """ceil(3000 / per-worker images/s), from the 1-worker median and from the 2-worker median / 2."""
    out = {"target_images_per_s": TARGET_IMAGES_PER_S, "measured_on": "this CPU (see machine), 128x128 PNGs",
           "cores_per_rank_by_cpu_time": "3000 x CPU seconds per image (process and workers together): the cores "
                                         "a rank's loading needs if every worker had one, less moved by other "
                                         "processes than wall-clock rates"}
    for library in (*LIBRARIES, "pipeline"):
        row = {}
        for workers in (1, 2):
            cell = results.get(library, {}).get("images", {}).get("throughput", {}).get(f"workers_{workers}", {})
            rate = (cell.get("per_worker_samples_per_s") or {}).get("median")
            cpu = (cell.get("cpu_ms_per_sample") or {}).get("median")
            if rate:
                row[f"from_{workers}_worker_runs"] = {
                    "per_worker_images_per_s": round(rate, 1),
                    "workers_per_rank": math.ceil(TARGET_IMAGES_PER_S / rate), "cpu_ms_per_image": round(cpu, 3),
                    "cores_per_rank_by_cpu_time": round(TARGET_IMAGES_PER_S * cpu / 1000, 2)}
        out[library] = row
    return out


def pipeline_reader(run: Path) -> dict:
    """Which reader the `pipeline` column measured: the tree's commit and state, and pipeline/train/data.py."""
    import pipeline.train.data as data

    source = Path(data.__file__).read_bytes()
    with open(run / "features" / "index.csv", newline="") as f:
        images = [r.get(f"image_{FEATURE}", "") for r in csv.DictReader(f) if r["split"] == "train"]
    return {"function": f'pipeline.train.data.build_dataset(run_dir, kind, "{FEATURE}", "train")',
            "split": "train", "git": git_state(), "data_py_sha256": hashlib.sha256(source).hexdigest(),
            "data_py_docstring_first_line": (data.__doc__ or "").strip().splitlines()[0],
            "run_images": ("tar shards" if images and all("#" in p for p in images) else
                           "one file per chunk" if images and all(images) else "none")}


def machine_record(load_before: tuple[float, ...]) -> dict:
    record = environment(1)
    versions = record.setdefault("versions", {})
    for name in ("webdataset", "litdata", "numpy", "pillow", "psutil"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["torch"] = torch.__version__
    return {"cpu_count": os.cpu_count(), "cpu_model": record.get("cpu_model"), "loadavg_before": list(load_before),
            "loadavg_after": [round(v, 2) for v in os.getloadavg()], "python": sys.version.split()[0],
            "versions": versions, "git": git_state(), "environment": record}


def other_measurements(work: Path, quick: bool, stop_after: int) -> dict:
    """Random access, resume and equal batches, each in a fresh subprocess."""
    fetches = 100 if quick else RANDOM_FETCHES
    workers = [0] if quick else [0, 2]
    out: dict = {"random_access": {}, "resume": {}, "equal_batches": {}}
    for kind in KINDS:
        for library in ("litdata", "pipeline", "webdataset"):
            spec = {"task": "random_access", "library": library, "kind": kind, "fetches": fetches}
            out["random_access"][(library, kind)] = run_child(spec, work)
        for library in LIBRARIES:
            for w in workers:
                spec = {"task": "resume", "library": library, "kind": kind, "workers": w, "stop_after": stop_after}
                out["resume"][(library, kind, w)] = run_child(spec, work)
    out["tar_headers"] = run_child({"task": "tar_headers", "repeats": 2 if quick else 8}, work)
    for library in LIBRARIES:
        out["equal_batches"][library] = run_child({"task": "equal_batches", "library": library, "workers": workers},
                                                  work)
    print("random access, resume and equal batches: done", flush=True)
    return out


def assemble(runs: list[dict], others: dict, worker_counts: list[int], reader: dict) -> dict:
    """results[library][kind] = {throughput, random_access, resume}; results[library]["equal_batches"]."""
    results: dict = {}
    for library in (*LIBRARIES, "pipeline"):
        entry: dict = {"reader": reader} if library == "pipeline" else {}
        for kind in KINDS:
            cells = {f"workers_{w}": summarise_cell([r for r in runs if (r["library"], r["kind"], r["workers"])
                                                     == (library, kind, w)])
                     for w in worker_counts if library in arms(w, worker_counts)}
            entry[kind] = {"throughput": cells, "random_access": others["random_access"].get((library, kind))}
            if library != "pipeline":
                entry[kind]["resume"] = {f"workers_{w}": v for (lib, k, w), v in others["resume"].items()
                                         if (lib, k) == (library, kind)}
        if library != "pipeline":
            entry["equal_batches"] = others["equal_batches"][library]
        results[library] = entry
    results["webdataset"]["features"]["tar_header_cost"] = others["tar_headers"]
    if reader["run_images"] == "none":
        results["pipeline"]["images"] = {"skipped": "the run has no image files or image tars"}
    return results


def notes_for(results: dict, ratio: dict, info: dict, reader: dict) -> list[str]:
    notes = [
        f"Data: the whole demo, {info['chunks']} chunks in {info['feature_shards']} feature shards "
        f"({info['samples_per_shard']['min']}-{info['samples_per_shard']['max']} chunks each), all splits, in both "
        f"libraries' formats; the pipeline column reads the training split only "
        f"({info['chunks_per_split'].get('train')} chunks), as the trainer does. Rates are per pass, so the "
        "different sizes matter only through per-pass start-up (first_batch_s).",
        "Ratios (`ratios`) are litdata / WebDataset from the two runs of the same repeat and cell, which ran back to "
        "back; quote those, not ratios of medians taken at different times. cpu_ms_per_sample < 1 means litdata "
        "spent less CPU per sample.",
        f"The pipeline column measured {reader['data_py_docstring_first_line']!r} (dataset classes in "
        f"`dataset_class`), at commit {reader['git']['commit']}, working tree "
        f"{'with uncommitted changes' if reader['git']['dirty'] else 'clean'}: the reader was being rewritten while "
        "this ran, so data_py_sha256 pins the file measured.",
        "Images are 128x128 (the demo's image_size); a resnet50 at 224x224 decodes about 3x the pixels per image, "
        "so the workers_per_rank figures are a lower bound for that input size, and they assume every worker has a "
        "core of its own, as measured here with 1 worker on 2 cores.",
        "The files were in the page cache (written just before, local disk): this measures the CPU side of each "
        "library. On a cluster file system the read pattern matters too: both read shards sequentially, litdata "
        "memory-maps its chunks in place for a local path (no copy into its cache).",
    ]
    headers = (results["webdataset"]["features"].get("tar_header_cost") or {}).get("default_mtime_over_mtime_0")
    if headers:
        notes.append(f"Tars written with TarWriter's default mtime (a PAX header per member) read at "
                     f"{headers['median']:.2f}x the rate of the mtime-0 tars measured above (min {headers['min']:.2f}, "
                     f"max {headers['max']:.2f}): pass TarWriter(mtime=...) a fixed integer, as the pipeline does.")
    for kind in KINDS:
        parts = []
        for workers in WORKERS:
            cell = ratio.get(f"{kind}_workers_{workers}", {})
            rate, cpu = cell.get("samples_per_s"), cell.get("cpu_ms_per_sample")
            if rate and cpu:
                parts.append(f"{workers} workers: samples/s x{rate['median']:.2f} ({rate['min']:.2f}-"
                             f"{rate['max']:.2f}), CPU per sample x{cpu['median']:.2f} ({cpu['min']:.2f}-"
                             f"{cpu['max']:.2f})")
        if parts:
            notes.append(f"litdata / WebDataset, {kind}, median (min-max) of the paired repeats: " + "; ".join(parts)
                         + ".")
    notes += [
        "On 2 shared cores the wall-clock rates at 1 and 2 workers are often below the 0-worker rate: the worker, the "
        "main process and other engineers' processes compete for the same cores, and each batch crosses a process "
        "boundary. CPU per sample is the steadier figure, and cores_per_rank_by_cpu_time the steadier sizing.",
        "A loader worker's RSS (about 310-370 MiB here) is mostly pages it shares with its parent (the interpreter, "
        "torch); the sum over workers counts them once per worker.",
    ]
    return notes


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = args.work.resolve() / ("quick" if args.quick else "")
    use_work_caches(work)
    if args.child:
        run_child_main(args.child)
        return
    paths, started, load_before, meter = data_layout(work), now(), os.getloadavg(), CpuMeter()
    info = prepare(paths, args.quick, args.rebuild)
    repeats = 1 if args.quick else args.repeats
    worker_counts = [0, 1] if args.quick else sorted(set(WORKERS) | set(PIPELINE_WORKERS))
    stop_after = 1 if args.quick else args.stop_after
    reader = pipeline_reader(paths["run"])
    skip = {("pipeline", "images")} if reader["run_images"] == "none" else set()
    runs = throughput_runs(work, repeats, worker_counts, skip)
    others = other_measurements(work, args.quick, stop_after)
    ratio = ratios(runs, [w for w in worker_counts if w in WORKERS])
    results = assemble(runs, others, worker_counts, reader)
    load = meter.stop()
    result = {
        "benchmark": "shard_loaders", "measured_at": started, "runtime_s": load["wall_s"], "command": command_line(),
        "machine": machine_record(load_before),
        "method": __doc__.strip(),
        "parameters": {"work": portable(work), "quick": args.quick, "repeats": repeats, "batch_size": BATCH,
                       "worker_counts": {"libraries": list(WORKERS), "pipeline": list(PIPELINE_WORKERS)},
                       "shuffle_buffer_webdataset": SHUFFLE_BUFFER, "seed": SEED, "stop_after_batches": stop_after,
                       "uneven_shard_samples": list(UNEVEN), "world_sizes": list(WORLD_SIZES),
                       "random_fetches": 100 if args.quick else RANDOM_FETCHES, "scan_lookups": SCAN_LOOKUPS,
                       "torch_threads": 1},
        "data": info, "machine_load": load, "results": results, "ratios_litdata_over_webdataset": ratio,
        "workers_to_feed_3000_images_per_s": workers_needed(results), "runs": runs,
    }
    write_result(args.out, result, notes_for(results, ratio, info, reader), load, "shard_loaders", repeats)


if __name__ == "__main__":
    main()
