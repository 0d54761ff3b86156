"""Decoding in blocks gives what decoding whole gave, a file that fails part-way leaves no trace in its shard, a file
too big for the worker is a reject with the figures, and a long file is a task of its own.

The memory these buy is measured in benchmarks/long_recordings.py, not here (speed and memory are never asserted in
tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf
import torch

from pipeline.audio import BLOCK_SECONDS, stream_audio
from pipeline.config import PreprocessConfig
from pipeline.data.sources import SourceFile
from pipeline.layout import RunLayout
from pipeline.preprocess import memory, shards
from pipeline.preprocess.chunking import ChunkedRecording, split_into_chunks
from pipeline.preprocess.run import make_tasks
from pipeline.preprocess.task import BATCH_CHUNKS, Task, run_task
from pipeline.resampling import StreamResampler, resampler

RATE = 16000


def _random_blocks(samples: np.ndarray, rng: np.random.Generator, largest: int) -> list[np.ndarray]:
    cuts = np.cumsum(rng.integers(1, largest, size=len(samples) // 2 + 2))
    return np.split(samples, cuts[cuts < len(samples)])


@pytest.mark.parametrize(("source", "target"), [(48000, 16000), (44100, 16000), (22050, 16000), (8000, 16000)])
def test_resampling_in_blocks_equals_resampling_whole(source, target):
    rng = np.random.default_rng(source)
    for length in (0, 7, 1000, 150_001):
        samples = rng.standard_normal(length).astype(np.float32)
        stream = StreamResampler(source, target)
        parts = [stream.push(block) for block in _random_blocks(samples, rng, 30_000)] + [stream.finish()]
        got = np.concatenate(parts)
        whole = resampler(source, target)(torch.from_numpy(samples)).numpy() if length else np.zeros(0)
        assert got.shape == whole.shape, (length, got.shape, whole.shape)
        np.testing.assert_allclose(got, whole, atol=2e-6)


@pytest.mark.parametrize("config", [PreprocessConfig(chunk_seconds=0.5), PreprocessConfig(chunk_seconds=0.5,
                                    hop_seconds=0.2, last_chunk="pad", min_last_chunk=0.25),
                                    PreprocessConfig(chunk_seconds=0.3, hop_seconds=0.5, silence_threshold_db=-40.0)])
def test_chunks_made_as_blocks_arrive_equal_chunks_of_the_whole_recording(config):
    rng = np.random.default_rng(1)
    level = np.repeat(rng.choice([1e-4, 0.5], size=200), 800)  # loud and silent stretches
    samples = (rng.standard_normal(len(level)) * level).astype(np.float32)
    whole = split_into_chunks(samples, config, RATE)
    recording = ChunkedRecording(config, RATE)
    batches = list(recording.batches(_random_blocks(samples, rng, 20_000), 7))
    assert all(0 < len(b.index) <= 7 for b in batches)
    assert [i for b in batches for i in b.index] == whole.index and recording.total == whole.total
    assert [x for b in batches for x in b.bounds] == whole.bounds
    assert np.array_equal(np.concatenate([b.samples for b in batches]), whole.samples)


def _speech(speech_dir: Path, seconds: float) -> np.ndarray:
    """`seconds` of real speech (the fixture's recordings, repeated)."""
    samples = np.concatenate([sf.read(p, dtype="float32")[0] for p in sorted(speech_dir.rglob("*.wav"))])
    return np.resize(samples, round(seconds * RATE))


@pytest.mark.parametrize("suffix", [".wav", ".m4a"])
def test_a_file_streamed_in_short_blocks_decodes_as_in_one_block(tmp_path, speech_dir, suffix):
    """48 kHz stereo through libsndfile (wav) and through ffmpeg's pipe (AAC in M4A): the block size, and so where
    the resampler's and the chunker's block edges fall, changes nothing."""
    path = tmp_path / f"stereo{suffix}"
    wav = tmp_path / "stereo.wav"
    stereo = np.stack([_speech(speech_dir, 9.0), _speech(speech_dir, 9.0)[::-1]], axis=1)
    sf.write(wav, np.repeat(stereo, 3, axis=0), 48000, subtype="PCM_16")
    if suffix != ".wav":
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "aac", str(path)],
                       check=True)
    short = np.concatenate(list(stream_audio(path, RATE, block_seconds=0.37)))
    whole = np.concatenate(list(stream_audio(path, RATE, block_seconds=1000)))
    assert short.shape == whole.shape and abs(len(whole) - 9.0 * RATE) < 0.1 * RATE
    np.testing.assert_allclose(short, whole, atol=2e-6)


def _task_outputs(run: Path, files: list[SourceFile], config: PreprocessConfig, root: Path) -> dict:
    RunLayout(run).features.folder.mkdir(parents=True)
    summary = run_task(Task(0, tuple(files)), config, RATE, str(run), str(root))
    shard = shards.shard_dir(RunLayout(run).features.folder, 0)
    return {"summary": summary, "logmel": np.load(shard / "logmel.npy"), "chunks": (shard / shards.CHUNKS).read_text(),
            "tar": (run / "images" / "logmel" / "shard-00000.tar").read_bytes()}


def test_a_file_that_fails_part_way_is_cut_back_out_of_its_shard(tmp_path, speech_dir):
    """An 80 s FLAC cut in half decodes its first 20 s block (400 chunks: a batch of 256 written to the shard)
    before libsndfile loses sync: the shard, its tar and its statistics are byte for byte those of the same task
    without that file, and the file is a reject."""
    root = tmp_path / "data"
    root.mkdir()
    sf.write(root / "good a.wav", _speech(speech_dir, 20.0), RATE, subtype="PCM_16")
    sf.write(root / "good b.wav", _speech(speech_dir, 30.0)[::-1], RATE, subtype="PCM_16")
    sf.write(root / "whole.flac", _speech(speech_dir, 80.0), RATE)
    (root / "cut.flac").write_bytes((root / "whole.flac").read_bytes()[: (root / "whole.flac").stat().st_size // 2])
    config = PreprocessConfig(chunk_seconds=0.05, n_mels=16, image_size=8)
    assert BLOCK_SECONDS / config.chunk_seconds > BATCH_CHUNKS
    files = {name: SourceFile(name, "x", "s", "train") for name in ("good a.wav", "cut.flac", "good b.wav")}
    with_cut = _task_outputs(tmp_path / "with", list(files.values()), config, root)
    without = _task_outputs(tmp_path / "without", [files["good a.wav"], files["good b.wav"]], config, root)
    assert [r["path"] for r in with_cut["summary"].rejects] == ["cut.flac"]
    assert "truncated or damaged FLAC audio" in with_cut["summary"].rejects[0]["reason"]
    assert np.array_equal(with_cut["logmel"], without["logmel"]) and len(without["logmel"]) == 1000
    assert with_cut["chunks"] == without["chunks"] and with_cut["tar"] == without["tar"]
    assert with_cut["summary"].train_stats == without["summary"].train_stats


def test_a_file_too_big_for_the_worker_is_a_reject_that_names_the_figures(tmp_path, speech_dir):
    """128 channels at 96 kHz need about 100 MB per second of block; a worker left 40 MB above its resident memory
    and one feature batch rejects that file and still processes the ordinary one."""
    root = tmp_path / "data"
    root.mkdir()
    sf.write(root / "ordinary.wav", _speech(speech_dir, 5.0), RATE, subtype="PCM_16")
    sf.write(root / "array.wav", np.zeros((96000, 128), np.float32) + 0.1, 96000, subtype="PCM_16")
    config = PreprocessConfig(chunk_seconds=1.0, n_mels=16, image_size=8)
    resident = psutil.Process().memory_info().rss
    left = 40e6
    limit_mb = (resident + memory.batch_bytes(config, RATE, BATCH_CHUNKS) + left) / 0.8 / 1e6
    config = PreprocessConfig(chunk_seconds=1.0, n_mels=16, image_size=8, worker_memory_mb=limit_mb)
    files = [SourceFile("ordinary.wav", "x", "s", "train"), SourceFile("array.wav", "x", "s", "train")]
    out = _task_outputs(tmp_path / "run", files, config, root)
    assert out["summary"].chunks == 5
    [reject] = out["summary"].rejects
    assert reject["path"] == "array.wav"
    assert "array.wav: too big for this worker's memory: decoding its 128 channels at 96000 Hz" in reject["reason"]
    assert f"of its {limit_mb:.0f} MB limit" in reject["reason"]


def test_a_long_file_is_a_task_of_its_own_and_the_cut_is_stable(tmp_path):
    sizes = {"a.wav": 10, "b.wav": 300, "c.wav": 20, "d.wav": 30, "e.wav": 5, "f.wav": 90}
    for name, megabytes in sizes.items():
        with open(tmp_path / name, "wb") as f:
            f.truncate(megabytes * 1_000_000)  # sparse: sizes without the disk space
    files = [SourceFile(name, "x", "s", "train") for name in sizes]
    tasks = make_tasks(files, files_per_task=3, task_megabytes=100, root=tmp_path)
    assert sorted(f.path for t in tasks for f in t.files) == sorted(sizes)
    for task in tasks:
        assert len(task.files) <= 3
        assert task.input_bytes == sum(sizes[f.path] for f in task.files) * 1_000_000
        assert task.input_bytes <= 100e6 or len(task.files) == 1
    assert [t.files for t in tasks if any(f.path == "b.wav" for f in t.files)][0] == (files[1],)
    assert make_tasks(files[::-1], 3, 100, tmp_path) == tasks
