"""The spoof dataset, built for real from the Debian packages (TTS engines and Fish Fillets), at a tiny size."""

import csv
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.config import SplitConfig
from pipeline.data.manifest import build_manifest
from pipeline.data.spoof import (
    INSTALL_HINT,
    PACKAGES,
    PEAK,
    SOURCE_COLUMNS,
    VOICES,
    build_spoof,
    clean_text,
    dialogue_lines,
    missing_packages,
)

NATURAL = {"cs-m", "cs-v", "nl-m", "nl-v"}


@pytest.fixture(scope="module")
def spoof_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 recordings per actor and 2 lines per voice: 8 natural and 42 synthetic files."""
    return build_spoof(tmp_path_factory.mktemp("spoof") / "data", 16000, files_per_speaker=2, sentences_per_voice=2)


def test_labels_speakers_and_sources(spoof_dir):
    with open(spoof_dir / "SOURCES.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == SOURCE_COLUMNS
    assert not [r for r in rows if r["skipped"]]
    assert Counter(r["label"] for r in rows) == {"natural": 8, "synthetic": 2 * len(VOICES)}
    speakers = {label: {p.name for p in (spoof_dir / label).iterdir()} for label in ("natural", "synthetic")}
    assert speakers == {"natural": NATURAL, "synthetic": {v.speaker for v in VOICES}}
    assert {r["engine"] for r in rows if r["label"] == "synthetic"} == {"espeak-ng", "flite", "festival"}
    assert Counter(r["language"] for r in rows if r["label"] == "synthetic") == {"cs": 14, "nl": 14, "en": 14}
    assert all(r["text"] for r in rows if r["label"] == "synthetic")
    for r in rows:
        assert Path(r["file"]).parts[:2] == (r["label"], r["speaker"])


def test_every_file_is_mono_16k_at_one_peak_and_band_limited(spoof_dir):
    files = sorted(spoof_dir.rglob("*.wav"))
    assert len(files) == 8 + 2 * len(VOICES)
    for path in files:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), path
        samples, _ = sf.read(str(path))
        assert abs(np.abs(samples).max() - PEAK) < 1e-3, path
        assert 0.3 < len(samples) / 16000 < 20, path
        power = np.abs(np.fft.rfft(samples)) ** 2
        freqs = np.fft.rfftfreq(len(samples), 1 / 16000)
        assert power[freqs > 7200].sum() < 1e-6 * power.sum(), path  # nothing above the common 7 kHz band


def test_rerun_is_a_no_op(spoof_dir):
    before = {p: p.stat().st_mtime_ns for p in spoof_dir.rglob("*")}
    started = time.perf_counter()
    assert build_spoof(spoof_dir, 16000, files_per_speaker=2, sentences_per_voice=2) == spoof_dir
    assert time.perf_counter() - started < 1
    assert {p: p.stat().st_mtime_ns for p in spoof_dir.rglob("*")} == before
    assert [p.name for p in spoof_dir.parent.iterdir()] == [spoof_dir.name]  # no temporary build folder left


def test_speaker_split_holds_whole_voices_out(spoof_dir):
    rows = build_manifest(spoof_dir, SplitConfig(val=0.2, test=0.2, seed=1, by="speaker"))
    splits = {}
    for r in rows:
        splits.setdefault(r.speaker, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values())
    speakers = Counter((r.label, r.split) for r in {(r.label, r.speaker, r.split): r for r in rows}.values())
    assert speakers == {("natural", "train"): 2, ("natural", "val"): 1, ("natural", "test"): 1,
                        ("synthetic", "train"): 13, ("synthetic", "val"): 4, ("synthetic", "test"): 4}


def test_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "other.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a complete spoof dataset"):
        build_spoof(tmp_path)


def test_dialogue_text_and_package_check():
    lines = dialogue_lines("cs")
    assert len(lines) > 1000 and all("-m-" in x.id or "-v-" in x.id for x in lines)
    assert lines[0].text == "Co je to za divnou loď?"
    assert clean_text(r'Adresář C:\\WINDOWS a \"citace\"… – konec\n') == "Adresář C: WINDOWS a citace... - konec"
    assert missing_packages(["flite", "no-such-package-spoof"]) == ["no-such-package-spoof"]
    assert all(p in INSTALL_HINT for p in PACKAGES) and {v.package for v in VOICES} <= set(PACKAGES)
