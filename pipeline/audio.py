"""Decoding any audio file into mono float32 samples at one sample rate."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as T

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus"}


class AudioError(ValueError):
    """A file that cannot be turned into samples; the message says which file and why."""


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode `path`, mix it down to mono and resample it to `sample_rate`.

    libsndfile (soundfile) decodes wav/flac/ogg/mp3 in-process; anything it refuses goes through ffmpeg via pydub.
    """
    path = Path(path)
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        samples, rate = _load_with_ffmpeg(path)
    if samples.size == 0:
        raise AudioError(f"{path}: contains no samples")
    mono = samples.mean(axis=1)
    if rate != sample_rate:
        mono = _resampler(rate, sample_rate)(torch.from_numpy(mono)).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)


@lru_cache(maxsize=16)
def _resampler(source_rate: int, target_rate: int) -> T.Resample:
    """Cached because building the polyphase kernel costs more than applying it to a short file."""
    return T.Resample(source_rate, target_rate)


def _load_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    from pydub import AudioSegment
    from pydub.exceptions import CouldntDecodeError

    try:
        segment = AudioSegment.from_file(str(path))
    except (CouldntDecodeError, IndexError, OSError) as err:
        raise AudioError(f"{path}: not decodable audio ({str(err).splitlines()[0][:200]})") from err
    data = np.array(segment.get_array_of_samples(), dtype=np.float32)
    data = data.reshape(-1, segment.channels) / float(1 << (8 * segment.sample_width - 1))
    return data, segment.frame_rate


def save_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM wav atomically."""
    from pipeline.io import atomic_write

    atomic_write(path, lambda tmp: sf.write(str(tmp), samples, sample_rate, subtype="PCM_16", format="WAV"))
