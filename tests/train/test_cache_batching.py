"""The frozen-prefix and teacher caches built in batches where a backbone's outputs cannot depend on batch-mates
(Whisper: every input is its 30 s window): the same files as one utterance at a time, bit for bit (the encoder,
batched on a GPU; one at a time is faster on a CPU) or with the same greedy transcripts and logits within fp32
rounding (the teacher); a machine whose batched outputs differ builds one utterance at a time; other backbones
always do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from builders import tiny_conformer, tiny_whisper
from raysearch_adapters.data.cache import load_features
from raysearch_adapters.models.base import BackboneView
from raysearch_adapters.train import prefix as prefix_module
from raysearch_adapters.train.prefix import load_prefix_set, load_teacher_set

N = 11  # one full batch of 8, then 3 (the last batch is filled up to 8)


def _features(model, tmp_path):
    """N tones of 0.5-0.8 s in noise (different lengths: a batch is padded)."""
    rng, lines = np.random.default_rng(3), []
    (tmp_path / "utts").mkdir()
    for i in range(N):
        seconds = 0.5 + 0.1 * (i % 4)
        t = np.arange(int(seconds * 16000)) / 16000
        path = tmp_path / "utts" / f"u{i}.wav"
        sf.write(path, (0.4 * np.sin(2 * np.pi * (200 + 90 * i) * t) + 0.02 * rng.standard_normal(t.shape))
                 .astype(np.float32), 16000)
        lines.append(json.dumps({"audio_filepath": str(path), "duration": seconds, "text": "a b"}))
    manifest = tmp_path / "utts.json"
    manifest.write_text("\n".join(lines) + "\n")
    return load_features(manifest, model.featurizer(), model.featurizer_key(), tmp_path / "features",
                         model.sample_rate, progress=False)


class _Sizes:
    """The batch sizes ``encode_prefix`` is called with (wrapping the real method)."""

    def __init__(self, model, noise: float = 0.0):
        self.seen, self.inner, self.noise = [], model.encode_prefix, noise
        model.encode_prefix = self

    def __call__(self, inputs, lengths, k):
        self.seen.append(inputs.shape[0])
        hidden, out_lengths = self.inner(inputs, lengths, k)
        # noise > 0: a machine whose GEMMs round differently in a batch than alone
        return hidden + self.noise * (inputs.shape[0] > 1), out_lengths


def _rows(fs):
    return [fs.features(i).numpy() for i in range(len(fs))]


@pytest.mark.parametrize("k", [0, 1, 2])
def test_the_whisper_encoder_cache_in_batches_is_the_one_at_a_time_cache_bit_for_bit(tmp_path, monkeypatch, k):
    model = tiny_whisper(layers=2)
    fs = _features(model, tmp_path)
    sizes = _Sizes(model)
    monkeypatch.setattr(prefix_module, "CPU_ENCODER_BATCH", 8)  # as on a GPU
    batched = load_prefix_set(fs, model, k, tmp_path / "batched")
    assert sizes.seen == [1] * 8 + [8, 8]  # the first batch both ways, then the other 3 filled up to 8
    monkeypatch.setattr(prefix_module, "CPU_ENCODER_BATCH", 1)
    alone = load_prefix_set(fs, model, k, tmp_path / "alone")
    assert sizes.seen[10:] == [1] * N
    assert batched.ids == alone.ids and batched.num_frames == alone.num_frames
    assert all(np.array_equal(a, b) for a, b in zip(_rows(batched), _rows(alone)))
    # and both are the encoder's outputs of each utterance alone, as the model computes them
    with torch.no_grad():
        for i in range(N):
            hidden, _ = sizes.inner(fs.features(i)[None], torch.tensor([fs.num_frames[i]]), k)
            assert np.array_equal(batched.features(i).numpy(), hidden[0].numpy())


def test_on_a_cpu_the_whisper_encoder_cache_is_built_one_utterance_at_a_time(tmp_path):
    # (faster there: bench/RESULTS.md, "Whisper")
    model = tiny_whisper(layers=2)
    fs = _features(model, tmp_path)
    sizes = _Sizes(model)
    load_prefix_set(fs, model, 1, tmp_path / "cache")
    assert sizes.seen == [1] * N


def test_where_batched_outputs_differ_the_cache_is_built_one_utterance_at_a_time(tmp_path, monkeypatch, capsys):
    model = tiny_whisper(layers=2)
    fs = _features(model, tmp_path)
    monkeypatch.setattr(prefix_module, "CPU_ENCODER_BATCH", 8)  # as on a GPU
    sizes = _Sizes(model, noise=1e-6)
    cache = load_prefix_set(fs, model, 1, tmp_path / "cache")
    assert sizes.seen == [1] * 8 + [8] + [1] * 3  # the check's batch differed: the rest one at a time
    assert "batched outputs differ from one utterance at a time on this machine" in capsys.readouterr().err
    sizes.noise = 0.0
    with torch.no_grad():
        for i in range(N):
            hidden, _ = sizes.inner(fs.features(i)[None], torch.tensor([fs.num_frames[i]]), 1)
            assert np.array_equal(cache.features(i).numpy(), hidden[0].numpy())


def test_a_backbone_whose_padding_changes_its_outputs_builds_its_caches_one_utterance_at_a_time(tmp_path):
    model = tiny_conformer(seed=0, num_layers=2)
    assert not model.fixed_input_shape
    fs = _features(model, tmp_path)
    sizes = _Sizes(model)
    load_prefix_set(fs, model, 1, tmp_path / "cache")
    assert sizes.seen == [1] * N


@torch.no_grad()
def test_the_whisper_teacher_in_batches_has_the_same_greedy_transcripts_and_logits_within_fp32_rounding(
        tmp_path, monkeypatch):
    model = tiny_whisper(layers=2, max_new_tokens=8)
    fs = _features(model, tmp_path)
    prefix = load_prefix_set(fs, model, 2, tmp_path / "prefix")
    batched = load_teacher_set(fs, model, tmp_path / "batched", prefix=prefix, k=2)
    expected = [BackboneView(model, 2).teacher(prefix.features(i)[None], torch.tensor([prefix.num_frames[i]]))[0]
                for i in range(N)]
    monkeypatch.setattr(prefix_module, "CACHE_BATCH", 1)
    alone = load_teacher_set(fs, model, tmp_path / "alone", prefix=prefix, k=2)
    kk = (expected[0].shape[-1] - 1) // 2
    assert any(e.shape[0] > 1 for e in expected)  # transcripts of several tokens
    for i in range(N):
        b, a, e = batched.features(i), alone.features(i), expected[i]
        assert torch.equal(a, e)  # one at a time: what the model gives for the utterance alone
        assert torch.equal(b[:, : 1 + kk], e[:, : 1 + kk])  # the greedy transcript and the top-k ids
        assert (b[:, 1 + kk:] - e[:, 1 + kk:]).abs().max() <= 1e-5 * max(1.0, float(e[:, 1 + kk:].abs().max()))
