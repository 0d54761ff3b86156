"""ASVspoof 2019-style protocols: real speech as <FILE>.flac, the protocol's columns, its errors, a speaker split."""

import shutil
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from pipeline.config import DataConfig, SplitConfig, load_config
from pipeline.data.asvspoof import asvspoof_sources, read_protocol
from pipeline.data.manifest import manifest_for
from pipeline.preprocess.run import preprocess
from pipeline.stages import data_stage
from tests.conftest import tiny_experiment

SPEAKERS = ("LA_0001", "LA_0002", "LA_0003")
WAV_ONLY = "LA_T_0000005"
"""Stored only as .wav: the fallback when there is no .flac."""
BOTH = "LA_T_0000006"
"""Stored as .flac and as .wav: the .flac is the one used."""


def protocol_lines() -> list[str]:
    """Two bona fide and two spoofed utterances per speaker, each spoof from its own attack system."""
    lines, n = [], 0
    for speaker in SPEAKERS:
        for key in ("bonafide", "bonafide", "spoof", "spoof"):
            n += 1
            system = "-" if key == "bonafide" else f"A{n:02d}"
            lines.append(f"{speaker} LA_T_{n:07d} - {system} {key}")
    return lines


@pytest.fixture(scope="module")
def audio_root(tmp_path_factory, speech_dir) -> Path:
    """The audio folder of the protocol: real recorded speech, as the challenge ships it (FLAC)."""
    root = tmp_path_factory.mktemp("asvspoof") / "flac"
    root.mkdir()
    recordings = sorted(speech_dir.rglob("*.wav"))
    for recording, line in zip(recordings, protocol_lines(), strict=False):
        name = line.split()[1]
        samples, rate = sf.read(recording)
        if name != WAV_ONLY:
            sf.write(root / f"{name}.flac", samples, rate)
        if name in (WAV_ONLY, BOTH):
            shutil.copy(recording, root / f"{name}.wav")
    return root


def write_protocol(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def test_protocol_columns_give_label_speaker_system_and_audio(tmp_path, audio_root):
    lines = protocol_lines()
    # tabs, runs of spaces and blank lines are whitespace like any other
    text = "\n".join([lines[0].replace(" ", "\t"), "", *(line.replace(" - ", "   -   ") for line in lines[1:]), ""])
    protocol = write_protocol(tmp_path / "ASVspoof2019.LA.cm.train.trn.txt", text)
    entries = read_protocol(protocol, audio_root)
    assert [(e.speaker, e.file, e.system, e.key) for e in entries] == [tuple(line.split()[i] for i in (0, 1, 3, 4))
                                                                      for line in lines]
    assert [e.line for e in entries][:3] == [1, 3, 4]
    paths = {e.file: Path(e.path) for e in entries}
    assert paths[WAV_ONLY] == Path(f"{WAV_ONLY}.wav")  # relative to the audio folder
    assert paths[BOTH] == Path(f"{BOTH}.flac")
    assert all((audio_root / p).is_file() and not p.parent.name for p in paths.values())
    rows = asvspoof_sources(protocol, audio_root)
    assert Counter((r.label, r.speaker) for r in rows) == Counter(
        {(key, speaker): 2 for key in ("bonafide", "spoof") for speaker in SPEAKERS})
    assert {r.split for r in rows} == {""}


def test_speaker_split_holds_each_voice_out_in_both_classes(tmp_path, audio_root):
    protocol = write_protocol(tmp_path / "p.txt", "\n".join(protocol_lines()) + "\n")
    config = DataConfig(source="asvspoof", root=str(audio_root), protocol=str(protocol),
                        split=SplitConfig(val=0.2, test=0.2, by="speaker"))
    rows = manifest_for(config)
    splits_of_speaker: dict[str, set[str]] = {}
    for r in rows:
        splits_of_speaker.setdefault(r.speaker, set()).add(r.split)
    assert all(len(s) == 1 for s in splits_of_speaker.values())
    # three speakers, each heard in both classes: one per split, so every split holds both classes
    assert Counter((r.split, r.label) for r in rows) == Counter(
        {(split, key): 2 for split in ("train", "val", "test") for key in ("bonafide", "spoof")})
    assert manifest_for(config) == rows
    by_file = manifest_for(DataConfig(source="asvspoof", root=str(audio_root), protocol=str(protocol),
                                      split=SplitConfig(val=0.2, test=0.2, by="file")))
    assert sorted(r.path for r in by_file) == sorted(r.path for r in rows)


GOOD = "LA_0001 LA_T_0000001 - - bonafide\n"
SPOOF = "LA_0001 LA_T_0000003 - A03 spoof\n"


@pytest.mark.parametrize(("text", "message"), [
    ("LA_0001 LA_T_0000001 - bonafide\n" + SPOOF,
     r"line 1: expected 5 whitespace-separated columns \(SPEAKER FILE - SYSTEM KEY\), found 4: "
     r"'LA_0001 LA_T_0000001 - bonafide'"),
    (GOOD + "LA_0001 LA_T_0000003 - A03 spoof extra\n", r"line 2: expected 5 .*found 6: '.*spoof extra'"),
    (GOOD + "LA_0001 LA_T_0000003 - A03 Spoof\n", r"line 2: KEY \(column 5\) is 'Spoof', expected bonafide or spoof"),
    (GOOD + "\n" + "LA_0001 LA_T_0000003 - A03 genuine\n", r"line 3: KEY \(column 5\) is 'genuine'"),
    (GOOD + "LA_0001 LA_T_9999999 - A03 spoof\n",
     r"line 2: FILE 'LA_T_9999999': no audio file .*flac/LA_T_9999999\.flac \(nor \.wav\)"),
    (GOOD + SPOOF + GOOD.replace("bonafide", "spoof"), r"line 3: FILE 'LA_T_0000001' is already listed on line 1"),
    (GOOD + "LA_0001 ../flac/LA_T_0000003 - A03 spoof\n", r"line 2: FILE \(column 2\) is '\.\./flac/LA_T_0000003'"),
    (GOOD.encode() + b"LA_0001 LA_T_\xff - A03 spoof\n", r"line 2: not UTF-8 text"),
    ("", r"no protocol lines \(empty file\)"),
    ("\n  \n", r"no protocol lines \(empty file\)"),
    (GOOD + "LA_0001 LA_T_0000002 - - bonafide\n",
     r"needs at least two labels \(bonafide and spoof\), found only 'bonafide' on all 2 lines"),
])
def test_protocol_errors_name_the_file_the_line_and_the_value(tmp_path, audio_root, text, message):
    protocol = write_protocol(tmp_path / "bad protocol.txt", text)
    with pytest.raises(ValueError, match=rf"bad protocol\.txt: {message}"):
        read_protocol(protocol, audio_root)


def test_protocol_and_audio_folder_must_exist(tmp_path, audio_root):
    with pytest.raises(ValueError, match="data.source is asvspoof but data.protocol names no protocol file"):
        manifest_for(DataConfig(source="asvspoof", root=str(audio_root)))
    with pytest.raises(FileNotFoundError, match=r"missing\.txt: protocol file not found"):
        manifest_for(DataConfig(source="asvspoof", root=str(audio_root), protocol=str(tmp_path / "missing.txt")))
    protocol = write_protocol(tmp_path / "p.txt", GOOD + SPOOF)
    with pytest.raises(FileNotFoundError, match=r"nowhere: audio folder of .*p\.txt not found \(data\.root\)"):
        read_protocol(protocol, tmp_path / "nowhere")


def test_preprocess_an_asvspoof_experiment(tmp_path, audio_root):
    protocol = write_protocol(tmp_path / "p.txt", "\n".join(protocol_lines()) + "\n")
    config = load_config(tiny_experiment(tmp_path, audio_root, data={"source": "asvspoof", "protocol": str(protocol)}))
    assert config.data.protocol == str(protocol)
    data_stage(config)
    summary = preprocess(config)
    assert summary.labels == ["bonafide", "spoof"]
    assert summary.files == len(protocol_lines()) and summary.rejected_files == 0
    assert summary.chunks >= summary.files
    features = Path(config.run_dir) / "features"
    index = (features / "index.csv").read_text()
    assert f"{WAV_ONLY}.wav" in index and f"{BOTH}.flac" in index and f"{BOTH}.wav" not in index
