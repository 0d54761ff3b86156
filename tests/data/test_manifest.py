from collections import Counter

import pytest

from pipeline.config import SplitConfig
from pipeline.data.manifest import build_manifest, read_manifest, write_manifest


def test_every_class_gets_every_split_and_split_is_reproducible(speech_dir, tmp_path):
    rows = build_manifest(speech_dir, SplitConfig(val=0.2, test=0.2, seed=3))
    assert Counter((r.label, r.split) for r in rows) == Counter(
        {(label, split): n for label in ("cs-m", "cs-v", "nl-m", "nl-v")
         for split, n in (("train", 3), ("val", 1), ("test", 1))})
    write_manifest(rows, tmp_path / "m.csv")
    assert read_manifest(tmp_path / "m.csv") == rows
    assert build_manifest(speech_dir, SplitConfig(val=0.2, test=0.2, seed=3)) == rows
    assert build_manifest(speech_dir, SplitConfig(val=0.2, test=0.2, seed=4)) != rows


def test_needs_two_classes(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="at least two class folders"):
        build_manifest(tmp_path, SplitConfig())
