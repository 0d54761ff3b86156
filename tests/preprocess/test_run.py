"""The preprocessing stage on real speech: serial and on a real Dask LocalCluster, resume, bad files."""

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.preprocess.cluster import dask_executor
from pipeline.preprocess.image_shards import read_member, split_reference
from pipeline.preprocess.run import preprocess
from pipeline.report.sections import work_done
from pipeline.stages import data_stage
from tests.conftest import tiny_experiment


def prepared(tmp_path: Path, speech_dir: Path, **sections):
    config = load_config(tiny_experiment(tmp_path, speech_dir, **sections))
    data_stage(config)
    return config


def read_index(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "features" / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def open_image(run: Path, reference: str) -> Image.Image:
    """The image an index entry names: a member of an image shard (the default layout)."""
    tar, member = split_reference(reference)
    return Image.open(io.BytesIO(read_member(run / tar, member)))


def test_serial_run_writes_shards_index_images_and_stats(tmp_path, speech_dir):
    config = prepared(tmp_path, speech_dir)
    summary = preprocess(config)
    run = Path(config.run_dir)
    index = read_index(run)
    assert summary.chunks == len(index) > 20
    assert summary.tasks == 5  # 20 files, 4 per task
    splits_of_file = {}
    for row in index:
        splits_of_file.setdefault(row["path"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_of_file.values())
    shard = run / "features" / index[0]["shard"]
    mfcc = np.load(shard / "mfcc.npy")
    assert mfcc.shape[1:] == (13, 101)
    image = open_image(run, index[0]["image_logmel"])
    assert image.size == (32, 32) and image.mode == "P" and image.format == "PNG"  # the colormap is its palette
    assert index[0]["image_logmel"].startswith(f"images/logmel/{index[0]['shard']}.tar#")
    assert sorted(p.name for p in (run / "images" / "logmel").iterdir()) == [f"shard-{k:05d}.tar" for k in range(5)]
    assert index[0]["image_mfcc"] == index[0]["audio"] == ""  # not asked for
    stats = (run / "features" / "stats.json").read_text()
    assert '"logmel"' in stats and '"mfcc"' in stats


def test_dask_cluster_gives_the_same_outputs_as_serial(tmp_path, speech_dir):
    serial = prepared(tmp_path / "a", speech_dir)
    preprocess(serial)
    clustered = prepared(tmp_path / "b", speech_dir)
    with dask_executor(clustered.preprocess) as executor:
        summary = preprocess(clustered, executor)
    assert summary.runs[-1].workers == clustered.preprocess.workers
    a, b = Path(serial.run_dir) / "features", Path(clustered.run_dir) / "features"
    assert (a / "index.csv").read_text() == (b / "index.csv").read_text()
    for shard in sorted(p.name for p in a.glob("shard-*")):
        assert np.array_equal(np.load(a / shard / "logmel.npy"), np.load(b / shard / "logmel.npy"))


def test_rerun_skips_complete_shards_and_redoes_missing_ones(tmp_path, speech_dir):
    config = prepared(tmp_path, speech_dir)
    preprocess(config)
    features = Path(config.run_dir) / "features"
    index_before = (features / "index.csv").read_text()
    lost = features / "shard-00002"
    shutil.rmtree(lost)  # as if the run died before this task finished
    kept = {p: p.stat().st_mtime_ns for p in features.glob("shard-*/logmel.npy")}
    preprocess(config)
    assert (lost / "logmel.npy").is_file()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert (features / "index.csv").read_text() == index_before
    summary = preprocess(config)  # nothing left to do
    tasks = summary.tasks
    assert [(r.tasks, r.chunks > 0) for r in summary.runs] == [(tasks, True), (1, True), (0, False)]
    assert summary.tasks_without_record == 0
    text = work_done(summary)
    assert f"run 1 of 3: {tasks} tasks" in text and "run 2 of 3: 1 tasks" in text and "run 3" not in text
    assert "1 later run(s) found every shard complete and did no work" in text


def test_bad_files_are_rejected_with_a_reason_and_left_untouched(tmp_path, speech_dir):
    data = tmp_path / "speech"
    shutil.copytree(speech_dir, data)
    bad = {
        "not audio.wav": b"this is not a wav file",
        "empty 'quoted'.wav": b"",
        "truncated ünï.wav": (data / "cs-m" / sorted(p.name for p in (data / "cs-m").glob("*.wav"))[0])
        .read_bytes()[:60],
    }
    for name, content in bad.items():
        (data / "cs-m" / name).write_bytes(content)
    config = prepared(tmp_path, data)
    summary = preprocess(config)
    with open(Path(config.run_dir) / "features" / "rejects.csv", newline="") as f:
        rejects = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert set(bad) <= set(rejects)
    assert all(rejects[name] for name in bad)
    assert summary.rejected_files == len(rejects)
    for name, content in bad.items():
        assert (data / "cs-m" / name).read_bytes() == content


def test_both_images_as_jpeg_chunk_wavs_and_a_gallery_per_feature(tmp_path, speech_dir):
    config = prepared(tmp_path, speech_dir, preprocess={"image_features": ["logmel", "mfcc"], "image_format": "jpeg",
                                                        "export_chunks": True, "hop_seconds": 0.5})
    preprocess(config)
    run = Path(config.run_dir)
    index = read_index(run)
    row = index[1]
    assert float(row["start_s"]) == 0.5 and float(row["end_s"]) == 1.5  # overlapping 1 s chunks every 0.5 s
    for feature in ("logmel", "mfcc"):
        assert row[f"image_{feature}"].startswith(f"images/{feature}/{row['shard']}.tar#")
        assert row[f"image_{feature}"].endswith(".jpg")
        with open_image(run, row[f"image_{feature}"]) as image:
            assert image.format == "JPEG" and image.size == (32, 32)
    import soundfile as sf

    chunk, rate = sf.read(run / row["audio"], dtype="float32")
    source, _ = sf.read(Path(config.data.root) / row["path"], dtype="float32", start=8000, stop=24000)
    assert rate == 16000 and np.allclose(chunk, source, atol=1 / 32768)
    for feature in ("logmel", "mfcc"):
        with Image.open(run / "gallery" / f"{feature}.png") as gallery:
            assert gallery.size[0] > 400 and len(np.unique(np.asarray(gallery.convert("L")))) > 50  # drawn, not blank


def test_rerun_with_other_settings_is_refused_and_names_them(tmp_path, speech_dir):
    config = prepared(tmp_path, speech_dir)
    preprocess(config)
    changed = load_config(tiny_experiment(tmp_path, speech_dir, preprocess={"n_mels": 40, "workers": 1}))
    with pytest.raises(ValueError, match=r"made with other settings, inputs or code \(settings.n_mels: 32 -> 40\)"):
        preprocess(changed)


def test_rerun_after_the_manifest_or_the_code_changed_is_refused(tmp_path, speech_dir):
    """Task k is a fixed part of the manifest's files, so complete shards of another manifest would be the wrong
    files."""
    config = prepared(tmp_path, speech_dir)
    preprocess(config)
    manifest = Path(config.run_dir) / "manifest.csv"
    original = manifest.read_text()
    lines = original.splitlines(keepends=True)
    manifest.write_text("".join(lines[:-1]))  # one source file fewer
    with pytest.raises(ValueError, match=r"manifest_sha256: '[0-9a-f]+' -> '[0-9a-f]+'"):
        preprocess(config)
    manifest.write_text(original)
    fingerprint = Path(config.run_dir) / "features" / "fingerprint.json"
    made_with = json.loads(fingerprint.read_text())
    made_with["code"]["source_sha256"] = "0123456789abcdef"  # as if another version of the package made them
    fingerprint.write_text(json.dumps(made_with))
    with pytest.raises(ValueError, match=r"code.source_sha256: '0123456789abcdef' -> "):
        preprocess(config)
