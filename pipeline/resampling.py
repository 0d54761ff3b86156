"""Resampling a recording block by block, with the same output as resampling it whole.

torchaudio's `Resample` takes a whole waveform. Its polyphase filter is one convolution of stride `orig` (the
source rate over the two rates' gcd) whose kernel spans `2 * width + orig` input samples, applied to the input
padded with `width` zeros in front and `width + orig` behind; each stride gives `new` output samples. So output
frames whose input lies inside the samples received so far can be computed as blocks arrive, and only the last
`2 * width + orig` or so samples need to be kept between blocks: memory no longer grows with the file's length,
and the output equals the whole-file resampling up to the float rounding of the convolution.
"""

from __future__ import annotations

from functools import lru_cache
from math import ceil, gcd

import numpy as np
import torch
import torchaudio.transforms as T


@lru_cache(maxsize=16)
def resampler(source_rate: int, target_rate: int) -> T.Resample:
    """Cached because building the polyphase kernel costs more than applying it to a short file."""
    return T.Resample(source_rate, target_rate)


class StreamResampler:
    """Feed mono float32 blocks at `source_rate` to `push`, then call `finish`: the concatenated outputs are the
    recording at `target_rate`, as `resampler(source_rate, target_rate)` would give it from the whole recording."""

    def __init__(self, source_rate: int, target_rate: int) -> None:
        whole = resampler(source_rate, target_rate)
        common = gcd(source_rate, target_rate)
        self._orig, self._new = source_rate // common, target_rate // common
        self._kernel, self._width = whole.kernel, whole.width
        self._pending = torch.zeros(self._width)  # the front padding, then input not yet consumed by a frame
        self._received = 0
        self._emitted = 0

    def push(self, block: np.ndarray) -> np.ndarray:
        """Resampled samples that `block` completes (possibly none yet)."""
        self._received += len(block)
        self._pending = torch.cat([self._pending, torch.from_numpy(np.ascontiguousarray(block, np.float32))])
        return self._frames()

    def finish(self) -> np.ndarray:
        """The rest of the output, the input's end padded as the whole-file resampler pads it."""
        self._pending = torch.cat([self._pending, torch.zeros(self._width + self._orig)])
        out = self._frames()
        total = ceil(self._new * self._received / self._orig)
        return out[: max(0, total - (self._emitted - len(out)))]

    def _frames(self) -> np.ndarray:
        span = 2 * self._width + self._orig
        frames = (len(self._pending) - span) // self._orig + 1 if len(self._pending) >= span else 0
        if frames == 0:
            return np.zeros(0, np.float32)
        used = self._pending[: (frames - 1) * self._orig + span]
        out = torch.nn.functional.conv1d(used[None, None], self._kernel, stride=self._orig)
        self._pending = self._pending[frames * self._orig:].clone()
        samples = out[0].transpose(0, 1).reshape(-1).numpy()
        self._emitted += len(samples)
        return samples
