"""Real short audio files for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def write_tone(path: Path, seconds: float, sample_rate: int = 16000, freq: float = 440.0,
               channels: int = 1, noise: float = 0.01, seed: int = 0) -> Path:
    """A sine tone plus a little noise (so every mel bin has energy), written with soundfile."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(t.shape)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data.astype(np.float32), sample_rate)
    return path


@pytest.fixture
def corpus(tmp_path):
    """Four wav/flac files of different lengths and a valid JSON-lines manifest for them."""
    lines = []
    for i, (seconds, ext) in enumerate([(0.6, "wav"), (1.0, "flac"), (1.4, "wav"), (0.8, "wav")]):
        write_tone(tmp_path / "audio" / f"u{i}.{ext}", seconds, freq=300.0 + 200 * i, seed=i)
        lines.append(f'{{"audio_filepath": "audio/u{i}.{ext}", "duration": {seconds}, "text": "Utterance {i}!"}}')
    manifest = tmp_path / "dev.json"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture
def tone():
    """The ``write_tone`` helper, for tests that need their own audio."""
    return write_tone
