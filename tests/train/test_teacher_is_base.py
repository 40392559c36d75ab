"""The distillation teacher is the base model: built while trained (non-zero) adapters are on, its cached outputs are
those of a separately loaded copy of the base model that never had adapters, and the adapters are on again after.

Fresh adapters add exactly 0, so a teacher built with them on would equal the base whether or not the cache
bypasses them: these adapters have random non-zero weights, and the test first checks that they change the
model's outputs."""

from __future__ import annotations

import pytest
import torch

from builders import tiny_conformer, tiny_whisper, with_random_adapters
from raysearch_adapters.config import AdapterConfig
from raysearch_adapters.data.cache import load_features
from raysearch_adapters.models.base import BackboneView
from raysearch_adapters.train.prefix import load_teacher_set


def _features(model, manifest, cache_dir):
    return load_features(manifest, model.featurizer(), model.featurizer_key(), cache_dir, model.sample_rate,
                         progress=False)


@pytest.mark.parametrize("cfg", [AdapterConfig(dim=4, positions=["post", "mha", "ffn"]),
                                 AdapterConfig(type="lora", rank=4, alpha=16.0, targets="all")],
                         ids=lambda c: c.type)
@torch.no_grad()
def test_the_ctc_teacher_built_with_trained_adapters_on_is_the_base_models_posterior(manifests, tmp_path, cfg):
    model, base = tiny_conformer(seed=0, num_layers=2), tiny_conformer(seed=0, num_layers=2)
    fs = _features(model, manifests["original"], tmp_path / "cache")
    handle = with_random_adapters(model, cfg)

    def outputs(m, i):
        log_probs, lengths = m(fs.features(i)[None], torch.tensor([fs.num_frames[i]]))
        return log_probs[0, : int(lengths[0])]

    adapted = [outputs(model, i) for i in range(len(fs))]
    expected = [outputs(base, i) for i in range(len(fs))]
    assert all((a - e).abs().max() > 0.1 for a, e in zip(adapted, expected))  # the adapters change the outputs

    teacher = load_teacher_set(fs, model, tmp_path / "teacher")
    assert all(torch.equal(teacher.features(i), expected[i]) for i in range(len(fs)))
    assert all(w.enabled for w in handle.wrappers)
    assert all(torch.equal(outputs(model, i), adapted[i]) for i in range(len(fs)))  # the adapters are back on


@torch.no_grad()
def test_the_whisper_teacher_built_with_trained_adapters_on_is_the_base_models(manifests, tmp_path):
    model, base = tiny_whisper(), tiny_whisper()
    fs = _features(model, manifests["original"], tmp_path / "cache")
    handle = with_random_adapters(model, AdapterConfig(dim=4, blocks="encoder:top:1+decoder:all",
                                                       positions=["post", "ffn"]))
    x = [(fs.features(i)[None], torch.tensor([fs.num_frames[i]])) for i in range(len(fs))]
    # The teacher's rows: the greedy transcript, then the top-16 token ids and their logits at each position.
    expected = [BackboneView(base).teacher(*xi)[0] for xi in x]
    adapted = [BackboneView(model).teacher(*xi)[0] for xi in x]
    assert all(a.shape != e.shape or (a - e).abs().max() > 0.1 for a, e in zip(adapted, expected))

    teacher = load_teacher_set(fs, model, tmp_path / "teacher")
    assert all(torch.equal(teacher.features(i), expected[i]) for i in range(len(fs)))
    assert all(w.enabled for w in handle.wrappers)
