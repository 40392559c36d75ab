"""Log-mel front end (NeMo-style ``per_feature`` normalisation) and SpecAugment."""

from __future__ import annotations

from typing import Tuple

import torch
import torchaudio.transforms as T
from torch import nn

from raysearch_adapters.config import FrontendConfig, SpecAugmentConfig

# Added before the log so silent (all-zero) frames stay finite; NeMo's default guard (2**-24).
LOG_GUARD = 2.0 ** -24
# Added to the standard deviation so constant mel bins do not divide by zero (NeMo's value).
STD_GUARD = 1e-5


class LogMelFrontend(nn.Module):
    """(waveform [B, S], lengths [B]) -> (log-mel features [B, T, n_mels], frame lengths [B]); deterministic."""

    def __init__(self, config: FrontendConfig = FrontendConfig()):
        super().__init__()
        self.config = config
        self.hop_length = int(round(config.sample_rate * config.hop_length_ms / 1000))
        win_length = int(round(config.sample_rate * config.win_length_ms / 1000))
        # Slaney mel scale and filter norm, as librosa and NeMo use; no dither, so outputs are reproducible.
        self.mel = T.MelSpectrogram(
            sample_rate=config.sample_rate, n_fft=config.n_fft, win_length=win_length,
            hop_length=self.hop_length, n_mels=config.n_mels, window_fn=torch.hann_window,
            power=2.0, center=True, norm="slaney", mel_scale="slaney",
        )

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Number of valid frames for waveforms of ``lengths`` samples (centred STFT)."""
        return torch.div(lengths, self.hop_length, rounding_mode="floor") + 1

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features of a padded batch, normalised over each utterance's valid frames, padding zeroed."""
        feats = torch.log(self.mel(waveform.float()) + LOG_GUARD).transpose(1, 2)  # [B, T, F]
        frames = self.frame_lengths(lengths.to(feats.device)).clamp(max=feats.shape[1])
        valid = (torch.arange(feats.shape[1], device=feats.device)[None, :] < frames[:, None])[..., None]
        if self.config.normalize == "per_feature":
            n = frames.to(feats.dtype)[:, None, None]
            mean = (feats * valid).sum(dim=1, keepdim=True) / n
            # Unbiased variance as NeMo computes it; one-frame utterances divide by 1, not 0.
            var = (((feats - mean) * valid) ** 2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)
            feats = (feats - mean) / (var.sqrt() + STD_GUARD)
        return feats.masked_fill(~valid, 0.0), frames


class SpecAugment(nn.Module):
    """Frequency and time masks on features [B, T, F], drawn independently per example; identity in eval mode."""

    def __init__(self, config: SpecAugmentConfig = SpecAugmentConfig()):
        super().__init__()
        self.config = config
        self.freq_mask = T.FrequencyMasking(config.freq_width, iid_masks=True)
        self.time_mask = T.TimeMasking(config.time_width, iid_masks=True)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Masked copy of ``feats`` in training mode; ``feats`` itself in eval mode."""
        if not self.training:
            return feats
        x = feats.transpose(1, 2)  # torchaudio masks expect [..., freq, time]
        for _ in range(self.config.freq_masks):
            x = self.freq_mask(x)
        for _ in range(self.config.time_masks):
            x = self.time_mask(x)
        return x.transpose(1, 2)
