"""Audio loading: soundfile (wav, flac, ...), mono mix-down, resampling with torchaudio."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional, Tuple

import soundfile as sf

if TYPE_CHECKING:
    import torch


def segment_frames(file_frames: int, sample_rate: int, offset: float = 0.0,
                   duration: Optional[float] = None) -> Tuple[int, int]:
    """(first frame, number of frames) that :func:`load_audio` reads from a file of ``file_frames`` frames."""
    start = min(int(round(offset * sample_rate)), file_frames)
    wanted = file_frames - start if duration is None else int(round(duration * sample_rate))
    return start, max(0, min(wanted, file_frames - start))


def load_audio(path: os.PathLike | str, sample_rate: int, offset: float = 0.0,
               duration: Optional[float] = None) -> torch.Tensor:
    """Read ``duration`` seconds from ``offset`` as a float32 mono waveform [S] at ``sample_rate``."""
    # torch is imported here, not above: manifest validation (demo-data's processes too) uses
    # segment_frames and must not pay for importing it.
    import torch
    import torchaudio.functional as AF

    with sf.SoundFile(path) as f:
        native = f.samplerate
        start, frames = segment_frames(f.frames, native, offset, duration)
        f.seek(start)
        data = f.read(frames=frames, dtype="float32", always_2d=True)
    wave = torch.from_numpy(data).mean(dim=1)
    if native != sample_rate:
        wave = AF.resample(wave, native, sample_rate)
    return wave.contiguous()
