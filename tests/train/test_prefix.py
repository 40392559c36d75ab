"""The frozen-prefix cache: exact outputs and training, reuse by content, adapters below k refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from builders import tiny_conformer, tiny_hf_ctc, tiny_wav2vec2
from raysearch_adapters.adapters.inject import AdapterWrapper, inject_adapters
from raysearch_adapters.config import AdapterConfig, TrainConfig
from raysearch_adapters.data.cache import load_features
from raysearch_adapters.errors import UserError
from raysearch_adapters.train.evaluate import evaluate
from raysearch_adapters.train.loop import TrainSets, train_adapters
from raysearch_adapters.train.prefix import TopOfModel, load_prefix_set, load_teacher_set

BACKENDS = {"conformer": tiny_conformer, "wav2vec2": tiny_wav2vec2, "hf_ctc": tiny_hf_ctc}
# A module every encode_prefix call runs exactly once (to count prefix computations).
FIRST_STAGE = {"conformer": "encoder.subsampling", "wav2vec2": "encoder.feature_projection",
               "hf_ctc": "hf.wav2vec2.feature_projection"}
K = 2


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> str:
    return request.param


def _base(backend: str, seed: int = 0):
    return BACKENDS[backend](seed=seed, num_layers=4)


def _sets(model, manifests, cache_dir):
    return {name: load_features(path, model.featurizer(), model.featurizer_key(), cache_dir, model.sample_rate,
                                progress=False) for name, path in manifests.items()}


def _adapted(model, blocks: str, seed: int = 0):
    """Adapters at every position of ``blocks``, with random non-zero weights (fresh ones are exactly zero)."""
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks=blocks, positions=["post", "mha", "ffn"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return handle


def _base_modules_training(model) -> list:
    """Modules of the frozen base (everything but the adapters' own parts) that are in training mode."""
    adapter_parts = {id(m) for w in model.modules() if isinstance(w, AdapterWrapper)
                     for part in (w.adapter, w.residual) for m in part.modules()}
    return [m for m in model.modules() if m.training and id(m) not in adapter_parts]


@torch.no_grad()
def test_top_on_the_cached_prefix_is_bit_exact_per_utterance(backend, manifests, tmp_path):
    model = _base(backend)
    fs = _sets(model, manifests, tmp_path / "cache")["new"]
    handle = _adapted(model, "2,3")
    assert handle.lowest_block == K
    prefix = load_prefix_set(fs, model, K, tmp_path / "cache")
    top = TopOfModel(model, K)
    assert len(prefix) == len(fs) and prefix.texts == fs.texts and prefix.durations == fs.durations
    for i in range(len(fs)):
        x = fs.features(i)[None], torch.tensor([fs.num_frames[i]])
        full, full_len = model(*x)
        out, out_len = top(prefix.features(i)[None], torch.tensor([prefix.num_frames[i]]))
        assert torch.equal(out_len, full_len) and torch.equal(out, full)
        handle.disable()
        assert not torch.equal(model(*x)[0], full)  # the adapters do change the output
        handle.enable()


@torch.no_grad()
def test_top_on_a_padded_prefix_batch_matches_the_full_model(backend, manifests, tmp_path):
    model = _base(backend)
    fs = _sets(model, manifests, tmp_path / "cache")["train"]
    _adapted(model, "2,3")
    prefix = load_prefix_set(fs, model, K, tmp_path / "cache")
    order = list(range(len(fs)))
    x, lengths, _ = fs.collate(order)
    full, full_len = model(x, lengths)
    hidden, hidden_len, _ = prefix.collate(order)
    out, out_len = TopOfModel(model, K)(hidden, hidden_len)
    assert torch.equal(out_len, full_len) and len(set(full_len.tolist())) > 1  # really padded
    for i, n in enumerate(full_len.tolist()):
        torch.testing.assert_close(out[i, :n], full[i, :n], atol=1e-5, rtol=0)


def _train(model, handle, sets, batch_seconds):
    reports = []
    cfg = TrainConfig(steps=4, lr=3e-2, eval_every=2, max_batch_seconds=batch_seconds, warmup_steps=1,
                      lr_schedule="cosine")
    train_adapters(model, handle, TrainSets(sets["train"]), {"new": sets["new"], "original": sets["original"]},
                   cfg, 50.0, lambda m, s: reports.append(m), eval_batch_seconds=batch_seconds)
    return reports


# Utterances last 0.5-0.8 s: 0.4 s batches hold one each (no padding), 2 s batches are padded.
@pytest.mark.parametrize("batch_seconds", [0.4, 2.0])
def test_training_through_the_top_matches_training_the_full_model(backend, manifests, tmp_path, batch_seconds):
    # Identical bases and adapters, the same batches (the prefix set keeps the durations).
    full_model, top_model = _base(backend), _base(backend)
    sets = _sets(full_model, manifests, tmp_path / "cache")
    full_handle = inject_adapters(full_model, AdapterConfig(dim=4, blocks="2,3"))
    top_handle = inject_adapters(top_model, AdapterConfig(dim=4, blocks="2,3"), full_handle.state_dict())
    prefix_sets = {name: load_prefix_set(fs, top_model, K, tmp_path / "cache") for name, fs in sets.items()}
    full_reports = _train(full_model, full_handle, sets, batch_seconds)
    top_reports = _train(TopOfModel(top_model, K), top_handle, prefix_sets, batch_seconds)
    trained, cached = full_handle.state_dict(), top_handle.state_dict()
    assert any(v.abs().sum() > 0 for k, v in trained.items() if k.endswith("module.3.weight"))  # it trained
    for k in trained:
        if batch_seconds < 0.5:
            assert torch.equal(cached[k], trained[k]), k
        else:
            # Padded batches change float rounding (~1e-6 on the log-probs); on the tiny random
            # wav2vec2 (CTC loss ~1600 over ~1000 frames) 1e-6 noise alone moves the gradient by
            # ~3e-4 relative, and Adam passes that on. The Conformer agrees to ~1e-6.
            torch.testing.assert_close(cached[k], trained[k], atol=1e-4, rtol=1e-3)
    for a, b in zip(full_reports, top_reports):
        assert a["dev_wer_new"] == b["dev_wer_new"] and a["dev_wer_original"] == b["dev_wer_original"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert _base_modules_training(top_model) == []


def test_evaluate_never_puts_the_base_into_training_mode(manifests, tmp_path):
    model = _base("conformer")
    fs = _sets(model, manifests, tmp_path / "cache")["new"]
    handle = _adapted(model, "3")
    prefix = load_prefix_set(fs, model, K, tmp_path / "cache")
    top = TopOfModel(model, K).train()  # evaluate restores this mode when it is done
    handle.train()
    evaluate(top, prefix)
    assert _base_modules_training(model) == []
    assert top.training


def test_second_load_is_a_cache_hit_and_the_key_follows_k_and_base_weights(backend, manifests, tmp_path):
    model = _base(backend)
    fs = _sets(model, manifests, tmp_path / "cache")["new"]
    calls = []
    model.get_submodule(FIRST_STAGE[backend]).register_forward_hook(lambda *_: calls.append(1))
    first = load_prefix_set(fs, model, K, tmp_path / "cache")
    assert len(calls) == len(fs)  # one utterance at a time
    mtime = first.path.stat().st_mtime_ns
    calls.clear()
    again = load_prefix_set(fs, model, K, tmp_path / "cache")
    assert calls == [] and again.path == first.path and again.path.stat().st_mtime_ns == mtime
    other_k = load_prefix_set(fs, model, K - 1, tmp_path / "cache")
    assert other_k.path != first.path and not torch.equal(other_k.features(0), first.features(0))
    with torch.no_grad():
        next(model.get_submodule(FIRST_STAGE[backend]).parameters()).mul_(1.01)  # a prefix weight
    calls.clear()
    other_base = load_prefix_set(fs, model, K, tmp_path / "cache")
    assert len(calls) == len(fs) and other_base.path != first.path
    assert not torch.equal(other_base.features(0), first.features(0))
    assert first.num_frames == other_base.num_frames and first.feature_dim == model.adaptable_blocks()[0].width


def test_prefix_is_the_base_models_whatever_the_adapters_and_modes(backend, manifests, tmp_path):
    model = _base(backend)
    fs = _sets(model, manifests, tmp_path / "cache")["new"]
    clean = load_prefix_set(fs, model, K, tmp_path / "clean")
    handle = _adapted(model, "0,1")  # below k: must not reach the cached (base) prefix
    handle.wrappers[1].enabled = False
    model.train()  # dropout everywhere: must not reach the cache either
    modes = [m.training for m in model.modules()]
    adapted = load_prefix_set(fs, model, K, tmp_path / "adapted")
    assert adapted.path.name == clean.path.name  # the key ignores adapters
    assert all(torch.equal(adapted.features(i), clean.features(i)) for i in range(len(fs)))
    assert [w.enabled for w in handle.wrappers] == [True, False] + [True] * (len(handle.wrappers) - 2)
    assert [m.training for m in model.modules()] == modes and all(modes)


def test_adapters_below_k_are_refused(backend):
    model = _base(backend)
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="1,3", positions=["mha"]))
    assert handle.lowest_block == 1
    name = handle.targeted[0]
    with pytest.raises(UserError, match=rf"k=2: found adapters below block 2 \({name}\); allowed: adapters in "
                                        r"blocks >= 2 only \(use k <= 1\)"):
        TopOfModel(model, 2)
    TopOfModel(model, 1)
    with pytest.raises(UserError, match=r"got k=5; allowed: 0..4"):
        TopOfModel(model, 5)


# Every adapter type: bottleneck, LoRA (the Conformer's fused attention weights and nn.Linear layers), parallel.
ZERO_INIT = [AdapterConfig(dim=4), AdapterConfig(type="lora", rank=2, targets="all"),
             AdapterConfig(type="parallel", dim=4, positions=["post", "mha", "ffn"])]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("cfg", ZERO_INIT, ids=lambda c: c.type)
def test_a_zero_init_adapter_shows_degradation_exactly_zero_on_every_path_and_precision(backend, manifests, tmp_path,
                                                                                      precision, cfg):
    """The base is measured on the trial's own path (same k, same precision, adapters disabled)."""
    from raysearch_adapters.train.evaluate import transcribe
    from raysearch_adapters.train.loop import base_dev_wers, dev_wer
    from raysearch_adapters.train.prefix import inputs_from, view_from

    model = _base(backend)
    fs = _sets(model, manifests, tmp_path / "cache")["original"]
    paths = []
    for blocks in ("all", "2,3", "3"):
        handle = inject_adapters(model, dataclasses.replace(cfg, blocks=blocks))  # zero-initialised
        for k in (None, handle.lowest_block):
            view, inputs = view_from(model, k), inputs_from(fs, model, k, tmp_path / "cache")
            base = base_dev_wers(view, handle, {"original": inputs}, 1.0, precision)["original"]
            assert dev_wer(view, inputs, 1.0, precision) == base
            adapted = transcribe(view, inputs, max_batch_seconds=1.0, precision=precision)
            handle.disable()
            assert transcribe(view, inputs, max_batch_seconds=1.0, precision=precision) == adapted
            handle.enable()
            paths.append(k)
        handle.remove()
    assert sorted(set(p for p in paths if p is not None)) == [0, 2, 3] and None in paths


def test_the_teacher_from_the_prefix_cache_is_the_teacher_from_the_features(backend, manifests, tmp_path):
    model = _base(backend)
    fs = _sets(model, manifests, tmp_path / "cache")["original"]
    plain = load_teacher_set(fs, model, tmp_path / "plain")
    on_prefix = load_teacher_set(fs, model, tmp_path / "on-prefix", prefix=load_prefix_set(fs, model, K, tmp_path / "c"),
                                 k=K)
    assert on_prefix.path.name == plain.path.name  # one key: the same outputs
    assert all(torch.equal(on_prefix.features(i), plain.features(i)) for i in range(len(fs)))
