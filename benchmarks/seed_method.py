"""The seeds' preprocessing, re-implemented from their text as the baseline of `preprocess_vs_seed.py`.

Not a benchmark itself: `seed_method(source, out_dir)` processes one source file the way seeds 001 and 000 describe,
and `preprocess_vs_seed.py` times it against the pipeline. Needs the `bench` extra (`pip install -e .[bench]`, i.e.
librosa); run alone on a few files with

    .venv/bin/python benchmarks/seed_method.py OUT_DIR FILE.wav [FILE.wav ...]

What the seeds say, and what is done here:

Seed 001 (001_1f2e9f91a142785f.txt, "4. Model Procedure", steps 2 and 3, and "3.1 MFCC"):
- "the one-minute wav audio files have been split into 3-second chunks using pydub package, which were then saved as
  wav file"; its listing `split_audio_file` does `AudioSegment.from_file(filepath, "wav")`, `make_chunks(myaudio,
  chunk_length_ms)` and `chunk.export(chunk_name, format="wav")` for every chunk. Done as written (3000 ms). The
  listing also prints every chunk name; that print is left out. `make_chunks` keeps the last, shorter chunk.
- "using Librosa package the Mel-Frequency Cepstral Coefficients are extracted for all the wav files ... represented
  as a pyplot which is then saved as an image in jpg format for every audio chunk file"; "3.1": `librosa.load()`,
  `librosa.feature.mfcc()` with 13 coefficients, plotted with `librosa.display.specshow()`. Done per chunk file:
  `librosa.load(chunk)` at librosa's default 22,050 Hz (the chunks are 16 kHz, so librosa resamples them with its
  default soxr_hq), `librosa.feature.mfcc(y=y, sr=sr, n_mfcc=13)`, a pyplot figure of matplotlib's default size
  (6.4 x 4.8 in at 100 dpi: 640 x 480 px) with `specshow` and its defaults (colormap chosen by librosa: `coolwarm`
  for MFCCs, which have both signs), saved as `.jpg`. The seed names no figure size, colorbar, title or axis labels,
  so none are added.

Seed 000 (000_8a810145f8e62476.txt, "Conversion of audio signal into spectrograms"):
- "the program reads the audio signal, its sampling rate and creates a matplotlib canvas of 0.72 inches and 400 dpi
  without axes. Spectrogram is generated using the melspectrogram method from the librosa library." Done as a
  0.72 x 0.72 in figure at 400 dpi (288 x 288 px) whose single axes fill it and are switched off, showing
  `librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr), ref=np.max)` with `specshow` (librosa's default
  colormap for all-negative data: `magma`), saved as PNG. The dB conversion is an assumption (the seed says only
  "melspectrogram"; without it the picture is nearly uniform). The seed does not say which format; PNG as the
  issue says.
- Per file or per chunk: seed 000 does not chunk at all. It draws one spectrogram per ASVspoof recording ("The input
  method takes the file name"), and each of those recordings is a single short utterance. In this benchmark the
  unit of work is the chunk (the pipeline draws its images per chunk, and the issue's target counts "chunk + MFCC +
  log-mel + both images"), so by default (`mel_unit="chunk"`) the mel PNG is drawn per 3 s chunk, from the same
  `librosa.load` of the chunk as the MFCC: both sides then make the same two images per chunk. `mel_unit="file"`
  is the literal reading: one mel PNG per source file, from `librosa.load(source)`; it makes fewer images when
  files are longer than one chunk, so the baseline gets faster per chunk.

Choices that favour the baseline (so a speed-up measured against it is not inflated): each chunk is loaded once
and both figures are drawn from that load (two separate seed scripts would each load it); the mel figure is saved
without `bbox_inches="tight"` (a second layout pass); nothing is printed per chunk.

Figures use matplotlib's Agg backend through pyplot (as the seeds' notebooks do) and are closed after saving.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import librosa  # noqa: E402
import librosa.display  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pydub import AudioSegment  # noqa: E402
from pydub.utils import make_chunks  # noqa: E402

CHUNK_MS = 3000
"""Seed 001: 3-second chunks (it also tried 5 and 10 s)."""
N_MFCC = 13
"""Seed 001: "In general number of coefficients to be extracted for the audio file is 13"."""
MEL_FIGURE_INCHES = 0.72
MEL_DPI = 400
"""Seed 000: "a matplotlib canvas of 0.72 inches and 400 dpi without axes" (288 x 288 px)."""


def mfcc_jpeg(y: np.ndarray, sr: int, path: Path) -> None:
    """Seed 001: 13 MFCCs of the chunk, drawn with specshow on a default pyplot figure, saved as JPEG."""
    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=N_MFCC)
    fig = plt.figure()
    librosa.display.specshow(mfcc, sr=sr)
    fig.savefig(path)
    plt.close(fig)


def mel_png(y: np.ndarray, sr: int, path: Path) -> None:
    """Seed 000: mel spectrogram (dB) on a 0.72 in x 400 dpi axis-less figure, saved as PNG."""
    fig = plt.figure(figsize=(MEL_FIGURE_INCHES, MEL_FIGURE_INCHES), dpi=MEL_DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    mel = librosa.feature.melspectrogram(y=y, sr=sr)
    librosa.display.specshow(librosa.power_to_db(mel, ref=np.max), sr=sr, ax=ax)
    fig.savefig(path, dpi=MEL_DPI)
    plt.close(fig)


def seed_method(source: str | Path, out_dir: str | Path, mel_unit: str = "chunk", chunk_ms: int = CHUNK_MS,
                prefix: str | None = None) -> dict[str, int]:
    """Chunk one source file, export the chunks as wav, then draw the MFCC JPEG and the mel PNG.

    Writes `out_dir/chunks/<stem>_chunk<i>.wav`, `out_dir/mfcc/<stem>_chunk<i>.jpg` and
    `out_dir/mel/<stem>_chunk<i>.png` (`mel_unit="chunk"`) or `out_dir/mel/<stem>.png` (`mel_unit="file"`).
    Returns how many chunks and images it wrote. `prefix` replaces `<stem>` (source files of different folders
    can share a stem).
    """
    if mel_unit not in ("chunk", "file"):
        raise ValueError(f"mel_unit must be 'chunk' or 'file', got {mel_unit!r}")
    source, out_dir = Path(source), Path(out_dir)
    folders = {name: out_dir / name for name in ("chunks", "mfcc", "mel")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    prefix = prefix or source.stem

    # Seed 001, step 2: pydub chunks, each exported as a wav file.
    audio = AudioSegment.from_file(str(source), "wav")
    chunk_paths = []
    for i, chunk in enumerate(make_chunks(audio, chunk_ms)):
        chunk_path = folders["chunks"] / f"{prefix}_chunk{i}.wav"
        chunk.export(str(chunk_path), format="wav")
        chunk_paths.append(chunk_path)

    # Seed 001, step 3 (and seed 000 per chunk): librosa.load of every chunk file, MFCC JPEG, mel PNG.
    for chunk_path in chunk_paths:
        y, sr = librosa.load(str(chunk_path))
        mfcc_jpeg(y, sr, folders["mfcc"] / f"{chunk_path.stem}.jpg")
        if mel_unit == "chunk":
            mel_png(y, sr, folders["mel"] / f"{chunk_path.stem}.png")
    mel_images = len(chunk_paths)
    if mel_unit == "file":
        y, sr = librosa.load(str(source))
        mel_png(y, sr, folders["mel"] / f"{prefix}.png")
        mel_images = 1
    return {"chunks": len(chunk_paths), "mfcc_images": len(chunk_paths), "mel_images": mel_images}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        sys.exit(__doc__.split("\n\n")[1])
    out_dir, files = Path(argv[0]), argv[1:]
    for source in files:
        print(source, seed_method(source, out_dir))


if __name__ == "__main__":
    main()
