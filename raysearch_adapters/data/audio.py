"""Audio loading: soundfile (wav, flac, ...), mono mix-down, resampling with torchaudio."""

from __future__ import annotations

import os
from typing import Optional

import soundfile as sf
import torch
import torchaudio.functional as AF


def load_audio(path: os.PathLike | str, sample_rate: int, offset: float = 0.0,
               duration: Optional[float] = None) -> torch.Tensor:
    """Read ``duration`` seconds from ``offset`` as a float32 mono waveform [S] at ``sample_rate``."""
    with sf.SoundFile(path) as f:
        native = f.samplerate
        start = int(round(offset * native))
        if start:
            f.seek(min(start, f.frames))
        frames = -1 if duration is None else int(round(duration * native))
        data = f.read(frames=frames, dtype="float32", always_2d=True)
    wave = torch.from_numpy(data).mean(dim=1)
    if native != sample_rate:
        wave = AF.resample(wave, native, sample_rate)
    return wave.contiguous()
