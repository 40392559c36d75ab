"""Tiny real data for the train-loop tests: tones with short transcripts, featurized by a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from builders import tiny_conformer
from raysearch_adapters.data.cache import load_features


def _manifest(root: Path, name: str, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        seconds = 0.5 + 0.1 * (i % 4)
        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.4 * np.sin(2 * np.pi * (200 + 90 * i) * t) + 0.02 * rng.standard_normal(t.shape)
        path = root / name / f"u{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), 16000)
        text = ["a b", "c", "ab c", "b a"][i % 4]
        lines.append(f'{{"audio_filepath": "{path}", "duration": {seconds}, "text": "{text}"}}')
    manifest = root / f"{name}.json"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # the machine's cores are shared; tiny models gain nothing from more


@pytest.fixture
def model():
    """A tiny random Conformer-CTC (eval mode)."""
    return tiny_conformer(seed=0, num_layers=2)


@pytest.fixture
def manifests(tmp_path):
    """``train``, ``new`` and ``original`` manifests of a few tones each."""
    return {name: _manifest(tmp_path, name, n, seed) for name, n, seed in
            (("train", 8, 0), ("new", 4, 1), ("original", 4, 2))}


@pytest.fixture
def feature_sets(tmp_path, model, manifests):
    """The feature sets of ``manifests`` for ``model``."""
    return {name: load_features(path, model.featurizer().eval(), model.featurizer_key(), tmp_path / "cache", 16000,
                                progress=False) for name, path in manifests.items()}
