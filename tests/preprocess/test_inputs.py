"""Every input the preprocessing meets on a real dataset, through `data_stage` + `preprocess` (serial) once.

Good files: real speech as wav (16-bit and float), flac, ogg and mp3 at 8, 22.05, 44.1 and 48 kHz, mono and stereo,
in a folder-per-class layout with speaker sub-folders, plus awkward names (spaces, quotes, non-ASCII, a leading dash,
an upper-case suffix, a name near the 255-byte limit) directly in the class folders. Each must give the chunks its
duration holds at 16 kHz, with images.

Bad files, in the same folders: each must be a line of rejects.csv whose reason says what is wrong, counted in the
summary, without crashing the run, and the input folder must come out byte-identical with nothing added to it.
"""

import csv
import hashlib
import io
import json
import math
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from pipeline.config import ExperimentConfig, load_config
from pipeline.preprocess.image_shards import read_member, sample_key, split_reference
from pipeline.preprocess.run import preprocess
from pipeline.records import PreprocessSummary
from pipeline.stages import data_stage
from tests.conftest import tiny_experiment

RATE = 16000
"""data.sample_rate of tiny_experiment: every file is resampled to it."""
CLASSES = {1: "one channel", 2: "two channels"}
"""Class folder by channel count (names with a space: they become image folders too)."""
RATES = (8000, 22050, 44100, 48000)
ENCODINGS = {
    "wav 16-bit": (".wav", ["-c:a", "pcm_s16le"]),
    "wav float": (".wav", ["-c:a", "pcm_f32le"]),
    "flac": (".flac", ["-c:a", "flac"]),
    "ogg vorbis": (".ogg", ["-c:a", "libvorbis"]),
    "mp3": (".mp3", ["-c:a", "libmp3lame"]),
}
VBR_MP3_WITHOUT_XING = ["-c:a", "libmp3lame", "-q:a", "2", "-write_xing", "0"]
"""libsndfile 1.2 decodes such a file only up to its length estimate (file size over the first frame's bitrate),
which a loud first frame makes far too short; pipeline.audio decodes an MP3 without a length header with
ffmpeg."""
DURATIONS = (1.2, 2.8, 1.8, 2.2)
"""Seconds; each remainder is far from the 0.5 s (min_last_chunk) that decides whether a padded last chunk is kept."""
ODD_NAMES = {
    "Žluťoučký kůň \"x\" 'y'.wav": ["-c:a", "pcm_s16le"],
    "two  spaces, a comma.flac": ["-c:a", "flac"],
    "it's \"quoted\" (mp3).mp3": ["-c:a", "libmp3lame"],
    "-dash %d $HOME;ls.ogg": ["-c:a", "libvorbis"],
    "UPPER CASE.WAV": ["-c:a", "pcm_s16le"],
    "ž" * 120 + ".wav": ["-c:a", "pcm_s16le"],  # 244 bytes of the 255 a name may have
}


def expected_chunks(seconds: float) -> int:
    """1 s chunks without overlap; with `last_chunk: pad` the rest gets a chunk if it is at least half a chunk."""
    whole = math.floor(seconds)
    return whole + (seconds - whole >= 0.5)


def expected_end(seconds: float) -> float:
    """Where the last chunk ends: at the end of the audio if the rest got a padded chunk, else at a whole second."""
    return seconds if expected_chunks(seconds) > math.floor(seconds) else math.floor(seconds)


def ffmpeg(source: Path, target: Path, seconds: float, rate: int, channels: int, codec: list[str]) -> None:
    """Encode the first `seconds` of mono `source`; two channels carry it at full level each (ffmpeg's own upmix
    would lower it by 3 dB), so that the mono mix-down must give back the source."""
    target.parent.mkdir(parents=True, exist_ok=True)
    layout = ["-af", "pan=stereo|c0=c0|c1=c0"] if channels == 2 else ["-ac", "1"]
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-t", str(seconds),
                    "-ar", str(rate), *layout, *codec, str(target)], check=True)


def speech_source(speech_dir: Path, target: Path) -> Path:
    """A few seconds of real speech (16 kHz mono), long enough for the longest duration."""
    recordings = sorted(speech_dir.rglob("*.wav"))
    samples = np.concatenate([sf.read(p, dtype="float32")[0] for p in recordings[:6]])
    assert len(samples) > 4 * RATE
    sf.write(target, samples, RATE, subtype="PCM_16")
    return target


@dataclass(frozen=True)
class Good:
    seconds: float
    exact: bool
    """Whether the decoded length is the encoded one (an MP3 without a LAME header keeps the encoder's delay)."""
    reference: str
    """Path (relative to the data root) of the 16-bit wav of the same rate, cut and speech: its features are what
    this file's should be."""


def make_good_files(data: Path, source: Path) -> dict[str, Good]:
    """Every encoding x rate x channel count, under <class>/<encoding>/ (a speaker sub-folder), and the odd names,
    by their path relative to `data` (as the manifest and index name them)."""
    good = {}
    n = 0
    for rate in RATES:
        for channels, label in CLASSES.items():
            reference = data / CLASSES[1] / "wav 16-bit" / f"{rate} Hz {DURATIONS[0]} s.wav"
            for encoding, (suffix, codec) in ENCODINGS.items():
                seconds = DURATIONS[0] if (encoding, channels) == ("wav 16-bit", 1) else DURATIONS[n % len(DURATIONS)]
                n += 1
                target = data / label / encoding / f"{rate} Hz {seconds} s{suffix}"
                ffmpeg(source, target, seconds, rate, channels, codec)
                good[target.relative_to(data).as_posix()] = Good(seconds, True, reference.relative_to(data).as_posix())
    speech, _ = sf.read(source, dtype="float32")
    click = np.random.default_rng(1).uniform(-0.5, 0.5, RATE // 20).astype(np.float32)
    loud_start = data.parent / "speech after a click.wav"
    sf.write(loud_start, np.concatenate([click, speech]), RATE, subtype="PCM_16")
    for rate in (22050, 44100):
        target = data / CLASSES[1] / "mp3 vbr" / f"{rate} Hz without Xing header.mp3"
        ffmpeg(loud_start, target, DURATIONS[1], rate, 1, VBR_MP3_WITHOUT_XING)
        good[target.relative_to(data).as_posix()] = Good(DURATIONS[1], False, "")
    for i, (name, codec) in enumerate(ODD_NAMES.items()):
        target = data / CLASSES[1 + i % 2] / name
        ffmpeg(source, target, DURATIONS[i % len(DURATIONS)], 44100, 1 + i % 2, codec)
        good[target.relative_to(data).as_posix()] = Good(DURATIONS[i % len(DURATIONS)], "mp3" not in name, "")
    return good


def make_bad_files(folder: Path, source: Path) -> dict[str, str]:
    """Bad files in a class folder; returns each one's name and a pattern its reject reason must match.

    A truncated file (a flac, wav or mp3 cut in half, as an interrupted copy or download leaves it) is rejected, not
    used as the part that still decodes: its header declares the full length, and a silent fragment would enter the
    dataset with nothing to show that the recording is damaged. rejects.csv says how much of it was there. (Where
    the header declares no length, an Ogg or an MP3 without a Xing header, a cut-off file cannot be told from a
    shorter one and its part is used.)
    """
    speech, _ = sf.read(source, dtype="float32")
    whole = folder / "whole" / "x.flac"
    ffmpeg(source, whole, 3.2, 44100, 2, ["-c:a", "flac"])
    (folder / "truncated.flac").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    whole.parent.rmdir()
    wav = folder / "whole.wav"
    sf.write(wav, speech[: 3 * RATE], RATE, subtype="PCM_16")
    (folder / "truncated.wav").write_bytes(wav.read_bytes()[: wav.stat().st_size // 2])
    wav.unlink()
    mp3 = folder / "whole.mp3"
    ffmpeg(source, mp3, 2.8, 22050, 2, ["-c:a", "libmp3lame"])  # with the Xing header LAME writes
    (folder / "truncated.mp3").write_bytes(mp3.read_bytes()[: mp3.stat().st_size // 2])
    mp3.unlink()
    (folder / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(8000))
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "not audio.ogg").write_text("just some text, not Ogg Vorbis\n" * 20)
    sf.write(folder / "too short.wav", speech[: int(0.3 * RATE)], RATE, subtype="PCM_16")
    nan = speech[:RATE].copy()
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, RATE, subtype="FLOAT")
    (folder / "dangling link.flac").symlink_to("no such recording.flac")
    (folder / "a folder.wav").mkdir()
    os.mkfifo(folder / "fifo.wav")
    return {
        "truncated.flac": r"truncated or damaged FLAC audio: decoding stopped before the 3\.20 s its header declares",
        "truncated.wav": r"truncated WAV audio: 1\.50 s decodable of the 3\.00 s its header declares",
        "truncated.mp3": r"truncated MP3 audio: 1\.\d\d s decodable of the 2\.80 s its header declares",
        "corrupt.wav": r"not decodable audio \(libsndfile: Format not recognised; ffmpeg: Invalid data",
        "empty.mp3": r"empty file \(0 bytes\)",
        "not audio.ogg": r"not decodable audio \(libsndfile: .*; ffmpeg: ",
        "too short.wav": r"shorter than one chunk \(0\.30 s\)",
        "nan.wav": r"non-finite samples \(NaN or infinity\)",
        "dangling link.flac": r"dangling symbolic link to no such recording\.flac",
        "a folder.wav": r"is a directory, not an audio file",
        "fifo.wav": r"not a regular file \(a FIFO",
    }


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` without following links or opening FIFOs: content hash and mtime of files, target
    of links, kind of the rest."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                found[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                found[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mtime_ns)
            else:
                found[str(path)] = ("dir" if stat.S_ISDIR(info.st_mode) else "other", stat.S_IFMT(info.st_mode))
    return found


@dataclass
class InputsRun:
    config: ExperimentConfig
    data: Path
    good: dict[str, Good]
    bad: dict[str, str]
    before: dict[str, tuple]
    summary: PreprocessSummary


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, speech_dir) -> InputsRun:
    root = tmp_path_factory.mktemp("inputs")
    data = root / "data"
    source = speech_source(speech_dir, root / "speech.wav")
    good = make_good_files(data, source)
    bad = make_bad_files(data / CLASSES[1], source)
    before = snapshot(data)
    config = load_config(tiny_experiment(root, data))
    data_stage(config)
    summary = preprocess(config)
    return InputsRun(config, data, good, bad, before, summary)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def chunks_by_file(run: InputsRun) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for row in read_csv(Path(run.config.run_dir) / "features" / "index.csv"):
        found.setdefault(row["path"], []).append(row)
    return found


def test_every_format_rate_and_channel_count_gives_the_chunks_its_duration_holds(inputs):
    chunks = chunks_by_file(inputs)
    assert len(inputs.good) == len(RATES) * len(CLASSES) * len(ENCODINGS) + 2 + len(ODD_NAMES)
    for path, good in inputs.good.items():
        rows = chunks.get(path, [])
        assert [int(r["chunk"]) for r in rows] == list(range(expected_chunks(good.seconds))), path
        end = float(rows[-1]["end_s"])  # a padded last chunk ends where the decoded audio does
        assert end == pytest.approx(expected_end(good.seconds), abs=1e-3 if good.exact else 0.1), path
    assert set(chunks) == set(inputs.good)
    assert inputs.summary.chunks == sum(expected_chunks(g.seconds) for g in inputs.good.values())


def test_every_format_decodes_to_the_same_speech(inputs):
    """Each file's log-mel is that of the 16-bit mono wav at the same rate (an error in sample scaling, channel
    mix-down or resampling would shift or smear it), up to what the lossy codecs leave out."""
    features = Path(inputs.config.run_dir) / "features"
    shards = {p.name: np.load(p / "logmel.npy").astype(np.float32) for p in features.glob("shard-*")}
    assert all(a.shape[1:] == (32, 101) and np.isfinite(a).all() for a in shards.values())
    chunks = chunks_by_file(inputs)

    def first_chunk(path: str) -> np.ndarray:
        row = chunks[path][0]
        return shards[row["shard"]][int(row["row"])]

    compared = 0
    for path, good in inputs.good.items():
        if good.reference and good.reference != path:
            lossy = Path(path).suffix in (".ogg", ".mp3")
            difference = np.abs(first_chunk(path) - first_chunk(good.reference))
            loud = first_chunk(good.reference) > first_chunk(good.reference).max() - 30  # codecs drop quiet bins
            assert np.median(difference[loud]) < (2.0 if lossy else 0.01), path
            compared += 1
    assert compared == len(RATES) * (len(CLASSES) * len(ENCODINGS) - 1)


def test_awkward_file_names_work_end_to_end_with_their_images(inputs):
    """Names with spaces, quotes, non-ASCII letters, dots and over 100 bytes (beyond a plain tar header's name
    field) are members of the image shards, under keys WebDataset splits at the right dot."""
    chunks = chunks_by_file(inputs)
    run = Path(inputs.config.run_dir)
    odd = [p for p in inputs.good if Path(p).name in ODD_NAMES]
    assert sorted(Path(p).name for p in odd) == sorted(ODD_NAMES)
    for path in [*odd, f"{CLASSES[1]}/wav 16-bit/{RATES[0]} Hz {DURATIONS[0]} s.wav"]:  # the last: dots in its stem
        assert chunks[path], path
        for row in chunks[path]:
            tar, member = split_reference(row["image_logmel"])
            assert tar == f"images/logmel/{row['shard']}.tar", row["image_logmel"]
            assert member.startswith(sample_key(Path(path).stem[:20])) and member.count(".") == 1, member
            with Image.open(io.BytesIO(read_member(run / tar, member))) as picture:
                assert picture.size == (32, 32)
    manifest = {r["path"] for r in read_csv(run / "manifest.csv")}
    # relative to the data root; bad entries keep their own name, the dangling link too
    assert manifest == set(inputs.good) | {f"{CLASSES[1]}/{name}" for name in inputs.bad}


def test_bad_files_are_rejected_with_what_went_wrong(inputs):
    rejects = read_csv(Path(inputs.config.run_dir) / "features" / "rejects.csv")
    by_name = {Path(r["path"]).name: r for r in rejects}
    assert len(by_name) == len(rejects) == len(inputs.bad)
    assert set(by_name) == set(inputs.bad)
    for name, pattern in inputs.bad.items():
        reason = by_name[name]["reason"]
        assert re.search(pattern, reason), (name, reason)
    summary = json.loads((Path(inputs.config.run_dir) / "features" / "summary.json").read_text())
    assert summary["rejected_files"] == inputs.summary.rejected_files == len(inputs.bad)
    assert summary["files"] == len(inputs.good) + len(inputs.bad)


def test_inputs_are_left_byte_identical_and_nothing_is_added(inputs):
    assert snapshot(inputs.data) == inputs.before
    assert {Path(p).name for p in inputs.before} >= set(inputs.bad)


def test_cli_names_the_rejected_count_and_where_the_reasons_are(inputs):
    """`pipeline preprocess` on the finished run: every shard is complete, so this is the CLI's summary alone."""
    config_path = Path(inputs.config.run_dir).parent / "tiny.yaml"
    result = subprocess.run([sys.executable, "-m", "pipeline", "preprocess", str(config_path),
                             "--set", "preprocess.workers=1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rejects = Path(inputs.config.run_dir) / "features" / "rejects.csv"
    assert f"{len(inputs.bad)} files rejected (reasons in {rejects})" in result.stdout
    assert snapshot(inputs.data) == inputs.before
