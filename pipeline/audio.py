"""Decoding any audio file into mono float32 samples at one sample rate."""

from __future__ import annotations

import os
import stat
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as T

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus"}
"""Suffixes (compared in lower case) of the files a folder dataset lists as audio; `load_audio` decodes each kind, with
libsndfile or else ffmpeg."""
MPEG = {"MP3", "MPEG"}
"""libsndfile's names of the MPEG audio formats; those without a length header are decoded with ffmpeg."""
MPEG_FRAME = 1152
"""Samples per MPEG layer III frame: the slack allowed between an MP3's declared and decoded length."""


class AudioError(ValueError):
    """A file that cannot be turned into samples; the message says which file and why."""


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode `path`, mix it down to mono and resample it to `sample_rate`.

    libsndfile (soundfile) decodes wav/flac/ogg/mp3 in-process; an MP3 without a length header and anything
    libsndfile refuses go through ffmpeg via pydub. Every way a file can fail is an AudioError naming the file and
    what is wrong with it, so that one bad file is one reject and never a crashed run. Decoding is strict: a file
    that ends before the length its own header declares (a cut-off copy or download) is refused rather than used as
    the fragment that decodes, because a fragment would enter the dataset with nothing to show that the recording is
    damaged.
    """
    path = Path(path)
    check_readable(path)
    samples, rate = _decode(path)
    if samples.size == 0:
        raise AudioError(f"{path}: contains no samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{path}: holds non-finite samples (NaN or infinity), which would poison the feature "
                         "statistics")
    mono = samples.mean(axis=1)
    if rate != sample_rate:
        mono = _resampler(rate, sample_rate)(torch.from_numpy(mono)).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)


def check_readable(path: Path) -> None:
    """Raise AudioError unless `path` is a non-empty regular file this process can open.

    Checked before any decoder sees the file: the decoders' own messages for these cases are vague ("Invalid data
    found"), and opening a FIFO named like audio would block a worker forever.
    """
    if path.is_symlink() and not path.exists():
        raise AudioError(f"{path}: dangling symbolic link to {os.readlink(path)} (the target does not exist)")
    try:
        info = path.stat()
    except OSError as err:
        raise AudioError(f"{path}: cannot be read ({err.strerror})") from err
    if stat.S_ISDIR(info.st_mode):
        raise AudioError(f"{path}: is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise AudioError(f"{path}: not a regular file (a FIFO, socket or device), so it is not read")
    if info.st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise AudioError(f"{path}: cannot be opened for reading ({err.strerror})") from err


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """[frames, channels] float32 samples and their rate, from libsndfile where it can, else from ffmpeg."""
    try:
        sound = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        return _load_with_ffmpeg(path, libsndfile=_libsndfile_reason(err))
    with sound:
        kind, rate, declared = sound.format, sound.samplerate, sound.frames
        if kind in MPEG and not _has_mpeg_length_header(path):
            samples = None
        else:
            try:
                samples = sound.read(dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as err:
                raise AudioError(f"{path}: truncated or damaged {kind} audio: decoding stopped before the "
                                 f"{declared / rate:.2f} s its header declares ({_libsndfile_reason(err)})") from err
    if samples is None:
        # Without a length header libsndfile 1.2 ends an MP3 at its own estimate (file size over the first frame's
        # bitrate), for a VBR file often half the audio, and says nothing; ffmpeg decodes the whole stream. Such a
        # file's length is unknown, so a cut-off one cannot be told from a complete one.
        return _load_with_ffmpeg(path)
    if kind in ("WAV", "WAVEX"):
        declared = _wav_declared_frames(path) or declared  # libsndfile clamps a cut-off data chunk to what is there
    if len(samples) < declared - (MPEG_FRAME if kind in MPEG else 0):
        raise AudioError(f"{path}: truncated {kind} audio: {len(samples) / rate:.2f} s decodable of the "
                         f"{declared / rate:.2f} s its header declares")
    return samples, rate


def _has_mpeg_length_header(path: Path) -> bool:
    """Whether the first MPEG frame holds a Xing/Info or VBRI header, which gives the exact length of the stream
    (LAME and ffmpeg write one by default). The tags are looked for near the start, after any ID3v2 tag."""
    with open(path, "rb") as f:
        head = f.read(10)
        if head[:3] == b"ID3" and len(head) == 10:  # a synchsafe size: 7 bits per byte
            f.seek(10 + (head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9]))
        else:
            f.seek(0)
        start = f.read(4096)
    return any(tag in start for tag in (b"Xing", b"Info", b"VBRI"))


def _libsndfile_reason(err: Exception) -> str:
    reason = str(getattr(err, "error_string", None) or err)
    return "libsndfile: " + reason.removeprefix("Error : ").rstrip(".")


STREAMED_WAV_SIZE = 0x7FFF0000
"""A data chunk size at or above this (or 0) is a placeholder of a writer that streamed the file (ffmpeg and sox
write 0xFFFFFFFF, espeak-ng 0x7FFFF000), not a length to check the file against."""


def _wav_declared_frames(path: Path) -> int | None:
    """Frames the data chunk of a RIFF/WAVE header declares, or None where the header declares no usable length."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            return None
        block_align = 0
        while len(header := f.read(8)) == 8:
            chunk, size = struct.unpack("<4sI", header)
            if chunk == b"data":
                return size // block_align if block_align and 0 < size < STREAMED_WAV_SIZE else None
            skip = size + (size & 1)  # chunks are padded to an even length
            if chunk == b"fmt " and size >= 14:
                block_align = struct.unpack("<H", f.read(14)[12:14])[0]
                skip -= 14
            f.seek(skip, os.SEEK_CUR)
    return None


@lru_cache(maxsize=16)
def _resampler(source_rate: int, target_rate: int) -> T.Resample:
    """Cached because building the polyphase kernel costs more than applying it to a short file."""
    return T.Resample(source_rate, target_rate)


def _load_with_ffmpeg(path: Path, libsndfile: str = "") -> tuple[np.ndarray, int]:
    from pydub import AudioSegment
    from pydub.exceptions import CouldntDecodeError

    try:
        segment = AudioSegment.from_file(str(path))
    except (CouldntDecodeError, IndexError, OSError) as err:
        raise AudioError(f"{path}: not decodable audio ({libsndfile + '; ' if libsndfile else ''}"
                         f"ffmpeg: {_ffmpeg_reason(err, path)})") from err
    data = np.array(segment.get_array_of_samples(), dtype=np.float32)
    data = data.reshape(-1, segment.channels) / float(1 << (8 * segment.sample_width - 1))
    return data, segment.frame_rate


def _ffmpeg_reason(err: Exception, path: Path) -> str:
    """ffmpeg's own complaint: the last line of its output that pydub quotes, without the file name it repeats."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(err).__name__
    return reason.removeprefix(f"{path}: ")[:200]


def save_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM wav atomically."""
    from pipeline.io import atomic_write

    atomic_write(path, lambda tmp: sf.write(str(tmp), samples, sample_rate, subtype="PCM_16", format="WAV"))
