"""Log-mel spectrograms and MFCCs with torchaudio, batched over chunks.

The mel power spectrum is computed once; the log-mel is its dB conversion and the MFCC the DCT of that, which is
what `torchaudio.transforms.MFCC` does internally, without computing the spectrogram twice.
"""

from __future__ import annotations

import torch
import torchaudio.functional as AF
import torchaudio.transforms as T

from pipeline.config import PreprocessConfig

FEATURES = ("logmel", "mfcc")


class FeatureExtractor:
    def __init__(self, config: PreprocessConfig, sample_rate: int, device: str = "cpu"):
        self.config = config
        self.device = device
        self.mel = T.MelSpectrogram(
            sample_rate=sample_rate, n_fft=config.n_fft, hop_length=config.hop_length, n_mels=config.n_mels,
            f_min=config.f_min, f_max=config.f_max,
        ).to(device)
        self.dct = AF.create_dct(config.n_mfcc, config.n_mels, norm="ortho").to(device)

    @torch.inference_mode()
    def __call__(self, chunks: torch.Tensor) -> dict[str, torch.Tensor]:
        """[n, samples] float waveforms -> {'logmel': [n, n_mels, frames], 'mfcc': [n, n_mfcc, frames]}."""
        power = self.mel(chunks.to(self.device))
        # A 4-D input makes amplitude_to_DB apply top_db per chunk, not across the whole batch.
        logmel = AF.amplitude_to_DB(power.unsqueeze(1), 10.0, 1e-10, 0.0, self.config.top_db).squeeze(1)
        mfcc = torch.matmul(logmel.transpose(1, 2), self.dct).transpose(1, 2)
        return {"logmel": logmel.cpu(), "mfcc": mfcc.cpu()}
