"""Decoding through ffmpeg as a stream: what libsndfile cannot read (AAC, Opus, M4A, MP3 without a length header).

ffprobe names the first audio stream's rate and channel count; ffmpeg then writes that stream as interleaved
32-bit floats to a pipe, read a block at a time, so a long file never sits whole in memory (pydub, used before,
read ffmpeg's entire output into one buffer). ffmpeg's complaints go to a temporary file rather than a pipe, so a
chatty decoder cannot fill a pipe nobody reads and stall.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class FfmpegError(Exception):
    """ffmpeg or ffprobe refused the file; the message is its own last line of complaint."""


def probe(path: Path) -> tuple[int, int]:
    """(sample rate, channels) of the first audio stream of `path`."""
    command = ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=sample_rate,channels",
               "-of", "json", str(path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FfmpegError(f"ffprobe could not run ({err})") from err
    if done.returncode != 0:
        raise FfmpegError(last_line(done.stderr, path) or f"ffprobe exit status {done.returncode}")
    streams = json.loads(done.stdout or "{}").get("streams") or []
    if not streams or not streams[0].get("sample_rate") or not streams[0].get("channels"):
        raise FfmpegError("no audio stream")
    return int(streams[0]["sample_rate"]), int(streams[0]["channels"])


def blocks(path: Path, channels: int, frames: int) -> Iterator[np.ndarray]:
    """[frames, channels] float32 blocks of the first audio stream, at its own rate; raises FfmpegError if ffmpeg
    stops with an error. Closing the iterator early stops ffmpeg."""
    command = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le",
               "-acodec", "pcm_f32le", "pipe:1"]
    frame_bytes = 4 * channels
    with tempfile.TemporaryFile() as complaints:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=complaints, stdin=subprocess.DEVNULL)
        try:
            while data := _read_exactly(process.stdout, frames * frame_bytes):
                usable = len(data) - len(data) % frame_bytes
                yield np.frombuffer(data[:usable], dtype="<f4").reshape(-1, channels)
            status = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
        if status != 0:
            complaints.seek(0)
            text = complaints.read().decode(errors="replace")
            raise FfmpegError(last_line(text, path) or f"ffmpeg exit status {status}")


def _read_exactly(stream, size: int) -> bytes:
    """Up to `size` bytes: fewer only at the end of the stream (a pipe's read returns what is there)."""
    parts, got = [], 0
    while got < size and (part := stream.read(size - got)):
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def last_line(text: str, path: Path) -> str:
    """ffmpeg's own complaint: the last line of what it printed, without the file name it repeats."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix(f"{path}: ")[:200] if lines else ""
