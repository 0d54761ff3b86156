"""The spoof dataset: natural speech against synthesized speech (seed 000's task), from Debian packages only.

`natural` is the Fish Fillets voice actors of the demo (`pipeline.data.demo`: Czech and Dutch, four speakers);
`synthetic` is text-to-speech of the same game's dialogue lines (`script/<level>/dialogs_<lang>.lua` of
`fillets-ng-data`, only the lines of the two fish, the same lines the actors speak) by three engines: espeak-ng
(formant and Klatt variants), flite (its built-in English voices) and festival (Czech diphone voices and English
diphone and HTS voices). Each voice is one speaker, and speaks the lines of its language, chosen by a seeded
shuffle. Layout: `<root>/<label>/<speaker>/<level>__<line id>.wav`, so the speaker is the sub-folder of the class
folder (see `pipeline.data.manifest.speaker_of`) and `split.by: speaker` holds whole voices out.

What the detector must not be able to use instead of the voice itself:

- sample rate and channels: every file is decoded to mono at `sample_rate` with `pipeline.audio.load_audio`. Flite's
  8 kHz `kal` voice is left out (it would be band-limited to 4 kHz), and so is any voice below `sample_rate`.
- codec: the recordings are 22.05 kHz Ogg Vorbis at about 40 kb/s; every synthesized line goes through the same
  channel (resampled to 22.05 kHz, encoded to Ogg Vorbis at that bitrate, decoded) before the common steps.
- bandwidth: every file is low-passed to 7 kHz (`BAND_HZ`), below the band edge of the narrowest voice, so the
  top of the spectrum is empty for both classes alike.
- silence and loudness: every file, natural or synthetic, has its leading and trailing silence trimmed (10 ms frames
  more than 40 dB below the loudest frame, keeping 50 ms) and is scaled to the same peak level (`PEAK`, -1 dBFS).
- duration and content: both classes say lines of the same dialogue, and the engines speak `STRETCH` times slower
  than their default, which brings the mean length of a synthetic line to that of a recorded one (about 3 s).
- language (not fully): the recordings are Czech and Dutch; the voices are a third Czech, a third Dutch and a third
  English (flite and festival have no Dutch voice and flite no Czech one), so English speech is always synthetic.
  A per-language breakdown is possible from the `language` column of `SOURCES.csv`.

The build is all-or-nothing: files are written into a temporary folder beside `root` that is renamed to `root` once
`SOURCES.csv` (the list of files, sources, texts and skipped lines) is complete, so `SOURCES.csv` in `root` marks a
complete dataset and a rerun does nothing.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from pipeline.audio import AudioError, load_audio, save_wav
from pipeline.data.demo import PACKAGES as RECORDING_PACKAGES
from pipeline.data.demo import DemoFile, MissingPackagesError, find_recordings
from pipeline.io import atomic_write_csv

SCRIPT_DIR = Path("/usr/share/games/fillets-ng/script")
"""Where `fillets-ng-data` installs the game's dialogue, one folder per level."""
CODEC_RATE = 22050
"""Sample rate of the recordings' Ogg Vorbis files, and of the channel that synthetic speech is passed through."""
VORBIS_LEVEL = 0.7
"""libsndfile compression level giving the recordings' nominal Vorbis bitrate (40 kb/s mono at 22.05 kHz)."""
PEAK = 10 ** (-1 / 20)
"""Peak amplitude of every output file (-1 dBFS)."""
STRETCH = 1.15
"""Every engine speaks this much slower than its default, so that synthetic lines last as long as the actors'."""
BAND_HZ = 7000.0
"""Every file is low-passed to this band (a cosine roll-off over the 500 Hz below it), under every source's own band
edge: flite's voices and festival's kal stop between 7.2 and 7.7 kHz, the recordings go on to 8 kHz at 16 kHz."""
SILENCE_DB = -40.0
"""Frames this far below the loudest frame count as silence at the ends of a file."""
LABELS = ("natural", "synthetic")
SOURCE_COLUMNS = ["file", "label", "speaker", "engine", "language", "line", "text", "source", "skipped"]


@dataclass(frozen=True)
class Voice:
    speaker: str
    """Folder name, `<engine>-<voice>`."""
    engine: str
    """`espeak-ng`, `flite` or `festival`."""
    name: str
    """The engine's own voice name (espeak-ng: `<language>+<variant>`)."""
    language: str
    """Language of the lines it speaks: `cs`, `nl` or `en`."""
    native_rate: int
    """Rate of the engine's output for this voice."""
    package: str
    """Debian package that provides it."""


VOICES = (
    *(Voice(f"espeak-cs-{v}", "espeak-ng", f"cs+{v}", "cs", 22050, "espeak-ng") for v in ("m4", "f3", "klatt2")),
    *(Voice(f"festival-{v}", "festival", f"czech_{v}", "cs", rate, f"festvox-czech-{v}")
      for v, rate in (("dita", 32000), ("machac", 32000), ("krb", 32000), ("ph", 44100))),
    *(Voice(f"espeak-nl-{v}", "espeak-ng", f"nl+{v}", "nl", 22050, "espeak-ng")
      for v in ("m1", "m2", "m3", "m6", "f2", "f4", "klatt3")),
    *(Voice(f"flite-{v}", "flite", v, "en", 16000, "flite") for v in ("kal16", "slt", "rms", "awb")),
    Voice("festival-kal", "festival", "kal_diphone", "en", 16000, "festvox-kallpc16k"),
    Voice("festival-ked", "festival", "ked_diphone", "en", 16000, "festvox-kdlpc16k"),
    Voice("festival-slt-hts", "festival", "cmu_us_slt_arctic_hts", "en", 32000, "festvox-us-slt-hts"),
)
"""Twenty-one voices, seven per language."""

PACKAGES = ["fillets-ng-data", *RECORDING_PACKAGES.values(), "festival",
            *dict.fromkeys(v.package for v in VOICES if v.package != "festival")]
INSTALL_HINT = "apt-get install -y --no-install-recommends " + " ".join(PACKAGES)
FESTIVAL_ENCODING = {"cs": "iso-8859-2", "en": "latin-1"}
"""Festival reads bytes; its Czech voices expect ISO 8859-2."""


@dataclass(frozen=True)
class Line:
    level: str
    id: str
    """Dialogue id, also the recording's file stem, e.g. `let-m-oko`."""
    text: str

    @property
    def stem(self) -> str:
        return f"{self.level}__{self.id}"


def missing_packages(packages: list[str] = PACKAGES) -> list[str]:
    """The packages of `packages` that dpkg does not list as installed."""
    try:
        result = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *packages],
                                capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return list(packages)
    installed = {p for p, _, status in (line.partition(" ") for line in result.stdout.splitlines())
                 if status == "installed"}
    return [p for p in packages if p not in installed]


def require_packages() -> None:
    missing = missing_packages()
    if missing:
        raise MissingPackagesError(
            f"the spoof dataset needs the Debian package(s) {', '.join(missing)}; install them with: {INSTALL_HINT}")


_STRING = r'"((?:[^"\\]|\\.)*)"'
_DIALOG = re.compile(r"dialogId\(\s*" + _STRING + r"\s*,\s*(?:" + _STRING + r"|nil)\s*,\s*" + _STRING
                     + r"\s*\)(?:\s*dialogStr\(\s*" + _STRING + r"\s*\))?")
_TYPOGRAPHY = str.maketrans({"“": "", "”": "", "„": "", "\"": "", "»": "", "«": "", "’": "'", "‘": "'",
                             "–": "-", "—": "-", "…": "...", "\\": " ", "\n": " "})


def clean_text(text: str) -> str:
    """A dialogue string as plain text a TTS engine reads safely: Lua escapes resolved, no quotes or backslashes."""
    text = re.sub(r"\\(.)", lambda m: " " if m.group(1) == "n" else m.group(1), text)
    return " ".join(text.translate(_TYPOGRAPHY).split())


def dialogue_lines(language: str, script_dir: Path = SCRIPT_DIR, min_words: int = 2) -> list[Line]:
    """The lines of the two fish (ids with `-m-` or `-v-`) in `language` with `min_words` words, by level and id.

    English is the `dialogId` text itself; other languages are the `dialogStr` translation that follows it.
    """
    lines = {}
    for path in sorted(Path(script_dir).glob(f"*/dialogs_{language}.lua")):
        for match in _DIALOG.finditer(path.read_text(encoding="utf-8", errors="replace")):
            line_id, _, english, translated = match.groups()
            text = clean_text(english if language == "en" else translated or "")
            if ("-m-" in line_id or "-v-" in line_id) and len(re.findall(r"\w+", text)) >= min_words:
                lines[(path.parent.name, line_id)] = Line(path.parent.name, line_id, text)
    return [lines[key] for key in sorted(lines)]


def trim_silence(samples: np.ndarray, sample_rate: int, threshold_db: float = SILENCE_DB,
                 margin_s: float = 0.05) -> np.ndarray:
    """Cut the leading and trailing 10 ms frames that are `threshold_db` below the loudest frame, keeping a margin."""
    frame = max(1, sample_rate // 100)
    n = len(samples) // frame
    if n == 0:
        return samples
    rms = np.sqrt(np.mean(samples[:n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (threshold_db / 20))
    margin = int(margin_s * sample_rate)
    return samples[max(0, loud[0] * frame - margin):min(len(samples), (loud[-1] + 1) * frame + margin)]


def band_limit(samples: np.ndarray, sample_rate: int, cutoff: float = BAND_HZ, width: float = 500.0) -> np.ndarray:
    """Zero-phase low-pass in the frequency domain: unity below `cutoff - width`, a cosine roll-off to 0 at `cutoff`."""
    if cutoff >= sample_rate / 2 or samples.size == 0:
        return samples
    freqs = np.fft.rfftfreq(len(samples), 1 / sample_rate)
    gain = 0.5 + 0.5 * np.cos(np.pi * np.clip((freqs - (cutoff - width)) / width, 0, 1))
    return np.fft.irfft(np.fft.rfft(samples) * gain, n=len(samples)).astype(np.float32)


def condition(samples: np.ndarray, sample_rate: int, what: object) -> np.ndarray:
    """The steps every file goes through: low-pass to `BAND_HZ`, trim the silent ends and scale to `PEAK`."""
    samples = trim_silence(band_limit(samples, sample_rate), sample_rate)
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak < 1e-4:
        raise AudioError(f"{what}: silent")
    return (samples * (PEAK / peak)).astype(np.float32)


def _convert_natural(job: tuple[list[tuple[DemoFile, str]], Path, int]) -> list[dict]:
    """Decode, condition and write a batch of recordings; one SOURCES row each."""
    files, out_dir, sample_rate = job
    rows = []
    for demo_file, text in files:
        target = Path(LABELS[0]) / demo_file.relative_output
        row = {"file": target.as_posix(), "label": LABELS[0], "speaker": demo_file.speaker, "engine": "",
               "language": demo_file.speaker.split("-")[0],
               "line": f"{demo_file.source.parent.parent.name}/{demo_file.source.stem}", "text": text,
               "source": str(demo_file.source), "skipped": ""}
        try:
            save_wav(out_dir / target, condition(load_audio(demo_file.source, sample_rate), sample_rate,
                                                 demo_file.source), sample_rate)
        except AudioError as err:
            row.update(file="", skipped=str(err))
        rows.append(row)
    return rows


def _synthesize(voice: Voice, lines: list[Line], work: Path) -> dict[str, tuple[Path | None, str]]:
    """Raw TTS output of each line (by stem): the wav written, or None and why not."""
    out: dict[str, tuple[Path | None, str]] = {}
    problems: dict[str, str | None] = {}
    if voice.engine == "festival":
        # One process for all lines (its start-up dominates). A line that crashes it stops the rest, so the lines
        # it missed get one process each, unless the first three of them all fail again: then the voice is broken.
        error = _festival(voice, lines, work)
        for line in lines:
            if not (work / f"{line.stem}.wav").is_file():
                if len(problems) < 3 or any(p is None for p in problems.values()):
                    error = _festival(voice, [line], work)
                problems[line.stem] = None if (work / f"{line.stem}.wav").is_file() else error
    for line in lines:
        wav = work / f"{line.stem}.wav"
        if voice.engine in ("espeak-ng", "flite"):
            text_file = work / f"{line.stem}.txt"
            text_file.write_text(line.text + "\n", encoding="utf-8")
            command = (["espeak-ng", "-v", voice.name, "-s", str(round(175 / STRETCH)), "-b", "1",
                        "-f", str(text_file), "-w", str(wav)]
                       if voice.engine == "espeak-ng" else
                       ["flite", "-voice", voice.name, "--setf", f"duration_stretch={STRETCH}",
                        "-f", str(text_file), "-o", str(wav)])
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            problem = " ".join(result.stderr.split())[-200:] or f"exit status {result.returncode}"
        else:
            problem = f"festival wrote no audio: {problems.get(line.stem) or ''}"
        out[line.stem] = (wav, "") if wav.is_file() and wav.stat().st_size > 44 else (None, problem)
    return out


def _festival(voice: Voice, lines: list[Line], work: Path) -> str:
    """Synthesize `lines` in one festival process; returns the end of its error output."""
    encoding = FESTIVAL_ENCODING[voice.language]
    script = [f"(voice_{voice.name})", f"(Parameter.set 'Duration_Stretch {STRETCH})"]
    if voice.name.endswith("_hts"):  # HTS voices ignore Duration_Stretch; their engine has a speed option
        script.append(f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {1 / STRETCH:.4f}))))')
    for line in lines:
        text = line.text.encode(encoding, errors="ignore").decode(encoding)
        wav = (work / f"{line.stem}.wav").as_posix()
        script.append(f'(set! u (Utterance Text "{text}"))(utt.synth u)(utt.save.wave u "{wav}" \'riff)')
    path = work / "script.scm"
    path.write_bytes("\n".join(script).encode(encoding, errors="ignore"))
    result = subprocess.run(["festival", "--batch", str(path)], capture_output=True, check=False, timeout=600)
    return " ".join(result.stderr.decode(errors="replace").split())[-200:] or f"exit status {result.returncode}"


def _through_codec(raw: Path, work: Path, sample_rate: int) -> np.ndarray:
    """Pass TTS output through the recordings' channel: 22.05 kHz Ogg Vorbis at their bitrate, then `sample_rate`."""
    samples = load_audio(raw, CODEC_RATE)
    peak = float(np.abs(samples).max())
    if peak < 1e-4:
        raise AudioError(f"{raw.name}: silent")
    encoded = work / "codec.ogg"
    sf.write(str(encoded), samples * (0.5 / peak), CODEC_RATE, format="OGG", subtype="VORBIS",
             compression_level=VORBIS_LEVEL)
    return load_audio(encoded, sample_rate)


def _convert_voice(job: tuple[Voice, list[Line], Path, int]) -> list[dict]:
    """Synthesize, pass through the codec, condition and write every line of one voice; one SOURCES row each."""
    voice, lines, out_dir, sample_rate = job
    rows = []
    with tempfile.TemporaryDirectory(prefix="spoof-tts-") as tmp:
        work = Path(tmp)
        raw = _synthesize(voice, lines, work)
        for line in lines:
            target = Path(LABELS[1]) / voice.speaker / f"{line.stem}.wav"
            row = {"file": target.as_posix(), "label": LABELS[1], "speaker": voice.speaker, "engine": voice.engine,
                   "language": voice.language, "line": f"{line.level}/{line.id}", "text": line.text,
                   "source": f"{voice.engine} {voice.name}", "skipped": ""}
            wav, problem = raw[line.stem]
            try:
                if wav is None:
                    raise AudioError(f"{voice.engine} {voice.name}: {problem}")
                samples = condition(_through_codec(wav, work, sample_rate), sample_rate, wav.name)
                save_wav(out_dir / target, samples, sample_rate)
            except AudioError as err:
                row.update(file="", skipped=str(err))
            rows.append(row)
    return rows


def is_built(root: Path) -> bool:
    """Whether `root` holds a complete spoof dataset (its SOURCES.csv is written last)."""
    return (Path(root) / "SOURCES.csv").is_file()


def plan(sample_rate: int, files_per_speaker: int, sentences_per_voice: int, seed: int,
         voices: tuple[Voice, ...] = VOICES) -> tuple[list[tuple[DemoFile, str]], list[tuple[Voice, list[Line]]]]:
    """Which recordings (with their transcript) and which lines per voice go into the dataset, deterministically."""
    recordings: dict[str, list[DemoFile]] = {}
    for f in find_recordings():
        recordings.setdefault(f.speaker, []).append(f)
    lines = {lang: dialogue_lines(lang) for lang in sorted({v.language for v in voices})}
    transcripts = {lang: {(x.level, x.id): x.text for x in dialogue_lines(lang, min_words=0)}
                   for lang in RECORDING_PACKAGES}
    natural = []
    for speaker, files in sorted(recordings.items()):
        chosen = random.Random(f"{seed}:{speaker}").sample(files, min(files_per_speaker, len(files)))
        natural += [(f, transcripts[speaker.split("-")[0]].get((f.source.parent.parent.name, f.source.stem), ""))
                    for f in sorted(chosen, key=lambda f: str(f.source))]
    synthetic = []
    for voice in voices:
        if voice.native_rate < sample_rate:
            continue
        pool = lines[voice.language]
        chosen = random.Random(f"{seed}:{voice.speaker}").sample(pool, min(sentences_per_voice, len(pool)))
        synthetic.append((voice, sorted(chosen, key=lambda x: x.stem)))
    return natural, synthetic


def build_spoof(out_dir: Path, sample_rate: int = 16000, files_per_speaker: int = 250,
                sentences_per_voice: int = 48, workers: int = 2, seed: int = 0) -> Path:
    """Write the natural vs synthetic dataset into `out_dir`; does nothing if it is already complete.

    The default sizes give about a thousand files per class (four speakers times `files_per_speaker` recordings,
    twenty-one voices times `sentences_per_voice` lines), a few minutes of audio per voice.
    """
    out_dir = Path(out_dir)
    if is_built(out_dir):
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir}: exists but is not a complete spoof dataset (no SOURCES.csv); "
                         "remove it to rebuild")
    require_packages()
    natural, synthetic = plan(sample_rate, files_per_speaker, sentences_per_voice, seed)
    if not synthetic:
        raise ValueError(f"no voice reaches sample_rate {sample_rate}; use at most 16000")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        # slowest jobs first (festival voices, then the rest), recordings in batches that keep both workers busy
        jobs = [(_convert_voice, (voice, lines, tmp, sample_rate))
                for voice, lines in sorted(synthetic, key=lambda s: s[0].engine != "festival")]
        jobs += [(_convert_natural, (natural[i:i + 50], tmp, sample_rate)) for i in range(0, len(natural), 50)]
        with ProcessPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = [pool.submit(function, args) for function, args in jobs]
            rows = [row for future in futures for row in future.result()]
        rows.sort(key=lambda r: (r["label"], r["speaker"], r["line"]))
        atomic_write_csv(tmp / "SOURCES.csv", rows, SOURCE_COLUMNS)
        os.chmod(tmp, 0o755)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir
