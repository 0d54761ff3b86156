"""Decoding any audio file into mono float32 samples at one sample rate, a block at a time."""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline import ffmpeg_audio
from pipeline.ffmpeg_audio import FfmpegError
from pipeline.resampling import StreamResampler

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus"}
"""Suffixes (compared in lower case) of the files a folder dataset lists as audio; `load_audio` decodes each kind, with
libsndfile or else ffmpeg."""
MPEG = {"MP3", "MPEG"}
"""libsndfile's names of the MPEG audio formats; those without a length header are decoded with ffmpeg."""
MPEG_FRAME = 1152
"""Samples per MPEG layer III frame: the slack allowed between an MP3's declared and decoded length."""


class AudioError(ValueError):
    """A file that cannot be turned into samples; the message says which file and why."""


BLOCK_SECONDS = 20.0
"""Seconds of source audio decoded at a time: long enough that per-call overheads vanish, short enough that a
block of 8 channels at 192 kHz is under 150 MB."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header (or ffprobe) says, before any sample is decoded."""

    rate: int
    channels: int
    kind: str
    """libsndfile's format name (WAV, FLAC, MP3, ...) or "ffmpeg"."""


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode `path` whole, mixed down to mono at `sample_rate` (for short files: demo sources, a prediction); the
    preprocessing streams instead (`stream_audio`)."""
    blocks = list(stream_audio(path, sample_rate))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def stream_audio(path: str | Path, sample_rate: int,
                 block_seconds: float | Callable[[AudioInfo], float] = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Decode `path` a block at a time, mix each block down to mono and resample it to `sample_rate`: mono float32
    blocks whose concatenation is the whole recording, with memory bounded by one block whatever the file's length.

    libsndfile (soundfile) decodes wav/flac/ogg/mp3 in-process; an MP3 without a length header and anything
    libsndfile refuses go through ffmpeg (`pipeline.ffmpeg_audio`). Every way a file can fail is an AudioError
    naming the file and what is wrong with it, so that one bad file is one reject and never a crashed run; an error
    can come after some blocks, and the caller then drops what it made of them. Decoding is strict: a file that ends
    before the length its own header declares (a cut-off copy or download) is refused rather than used as the
    fragment that decodes, because a fragment would enter the dataset with nothing to show that the recording is
    damaged. `block_seconds` may be a function of the file's AudioInfo (which may refuse the file, raising
    AudioError), for a block sized to the memory there is.
    """
    info, source = open_audio(path)
    seconds = block_seconds(info) if callable(block_seconds) else block_seconds
    resample = StreamResampler(info.rate, sample_rate) if info.rate != sample_rate else None
    received = 0
    for block in source(max(1, round(seconds * info.rate))):
        if not np.isfinite(block).all():
            raise AudioError(f"{path}: holds non-finite samples (NaN or infinity), which would poison the feature "
                             "statistics")
        received += len(block)
        mono = block.mean(axis=1, dtype=np.float32)
        yield resample.push(mono) if resample else mono
    if received == 0:
        raise AudioError(f"{path}: contains no samples")
    if resample:
        yield resample.finish()


def open_audio(path: str | Path) -> tuple[AudioInfo, Callable[[int], Iterator[np.ndarray]]]:
    """The file's rate and channels, and a function of a block size (frames) that yields its [frames, channels]
    float32 blocks; from libsndfile where it can, else from ffmpeg."""
    path = Path(path)
    check_readable(path)
    try:
        sound = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        return _ffmpeg_source(path, libsndfile=_libsndfile_reason(err))
    info = AudioInfo(sound.samplerate, sound.channels, sound.format)
    if info.kind in MPEG and not _has_mpeg_length_header(path):
        # Without a length header libsndfile 1.2 ends an MP3 at its own estimate (file size over the first frame's
        # bitrate), for a VBR file often half the audio, and says nothing; ffmpeg decodes the whole stream. Such a
        # file's length is unknown, so a cut-off one cannot be told from a complete one.
        sound.close()
        return _ffmpeg_source(path)
    return info, lambda frames: _sndfile_blocks(path, sound, info, frames)


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


def _sndfile_blocks(path: Path, sound: sf.SoundFile, info: AudioInfo, frames: int) -> Iterator[np.ndarray]:
    declared = sound.frames
    if info.kind in ("WAV", "WAVEX"):
        declared = _wav_declared_frames(path) or declared  # libsndfile clamps a cut-off data chunk to what is there
    read = 0
    with sound:
        while True:
            try:
                block = sound.read(frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as err:
                raise AudioError(f"{path}: truncated or damaged {info.kind} audio: decoding stopped before the "
                                 f"{declared / info.rate:.2f} s its header declares "
                                 f"({_libsndfile_reason(err)})") from err
            if not len(block):
                break
            read += len(block)
            yield block
    if read < declared - (MPEG_FRAME if info.kind in MPEG else 0):
        raise AudioError(f"{path}: truncated {info.kind} audio: {read / info.rate:.2f} s decodable of the "
                         f"{declared / info.rate:.2f} s its header declares")


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


def _ffmpeg_source(path: Path, libsndfile: str = "") -> tuple[AudioInfo, Callable[[int], Iterator[np.ndarray]]]:
    def refused(err: FfmpegError) -> AudioError:
        return AudioError(f"{path}: not decodable audio ({libsndfile + '; ' if libsndfile else ''}ffmpeg: {err})")

    try:
        rate, channels = ffmpeg_audio.probe(path)
    except ffmpeg_audio.FfmpegError as err:
        raise refused(err) from err

    def source(frames: int) -> Iterator[np.ndarray]:
        try:
            yield from ffmpeg_audio.blocks(path, channels, frames)
        except ffmpeg_audio.FfmpegError as err:
            raise refused(err) from err

    return AudioInfo(rate, channels, "ffmpeg"), source


def save_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM wav atomically."""
    from pipeline.io import atomic_write

    atomic_write(path, lambda tmp: sf.write(str(tmp), samples, sample_rate, subtype="PCM_16", format="WAV"))
