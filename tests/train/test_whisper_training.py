"""Whisper through the train loop, the frozen-prefix cache and the teacher cache (tiny random model, tones)."""

from __future__ import annotations

import pytest
import torch

from builders import tiny_whisper
from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.config import AdapterConfig, TrainConfig
from raysearch_adapters.data.cache import load_features
from raysearch_adapters.models.base import BackboneView
from raysearch_adapters.train.loop import TrainSets, base_dev_wers, dev_wer, step_loss, train_adapters
from raysearch_adapters.train.prefix import (TopOfModel, inputs_from, load_prefix_set, load_teacher_set,
                                             measurement_block, view_from)



@pytest.fixture
def sets(manifests, tmp_path):
    model = tiny_whisper()
    return {name: load_features(path, model.featurizer(), model.featurizer_key(), tmp_path / "cache",
                                model.sample_rate, progress=False) for name, path in manifests.items()}


def _adapted(model, blocks, positions=("post",), seed=0):
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks=blocks, positions=list(positions)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return handle


def test_log_mel_cache_keeps_the_utterance_not_the_window(sets):
    fs = sets["train"]
    assert fs.feature_dim == 80
    for i in range(len(fs)):  # 0.5-0.8 s tones: ~100 frames per second plus one padding frame, not 3000
        assert fs.num_frames[i] == pytest.approx(100 * fs.durations[i] + 2, abs=2)


@pytest.mark.parametrize("blocks, k", [("decoder:all", 2), ("decoder:top:1", 2), ("encoder:top:1+decoder:all", 1)])
@torch.no_grad()
def test_the_top_on_the_cached_prefix_is_bit_exact(sets, tmp_path, blocks, k):
    model = tiny_whisper()
    fs = sets["new"]
    handle = _adapted(model, blocks, ("post", "ffn"))
    assert measurement_block(handle, True, False) == k  # decoder placements share the encoder's output
    prefix = load_prefix_set(fs, model, k, tmp_path / "cache")
    assert prefix.feature_dim == 16 and set(prefix.num_frames) == {1500}
    top, whole = TopOfModel(model, k), BackboneView(model)
    adapted = []
    for i in range(len(fs)):
        x, n = fs.features(i)[None], torch.tensor([fs.num_frames[i]])
        h, hn = prefix.features(i)[None], torch.tensor([prefix.num_frames[i]])
        adapted.append(top.losses(h, hn, [fs.texts[i]]))
        assert torch.equal(adapted[-1], whole.losses(x, n, [fs.texts[i]]))
        assert top.transcribe(h, hn) == whole.transcribe(x, n)
    handle.disable()  # the adapters are in the forward path: without them each loss is another number
    for i in range(len(fs)):
        h, hn = prefix.features(i)[None], torch.tensor([prefix.num_frames[i]])
        assert (top.losses(h, hn, [fs.texts[i]]) - adapted[i]).abs().max() > 1e-3


def test_distillation_is_exactly_zero_at_initialisation_and_the_teacher_is_the_base(sets, tmp_path):
    model = tiny_whisper()
    handle = inject_adapters(model, AdapterConfig(dim=4, blocks="decoder:all"))
    teacher = load_teacher_set(sets["original"], model, tmp_path / "cache")
    assert teacher.feature_dim == 33 and teacher.texts == sets["original"].texts
    k = measurement_block(handle, True, False)
    top_sets = TrainSets(load_prefix_set(sets["train"], model, k, tmp_path / "cache"),
                         distill=load_prefix_set(sets["original"], model, k, tmp_path / "cache"), teacher=teacher)
    view = TopOfModel(model, k)
    handle.train()
    for i in range(len(teacher)):  # one utterance at a time: the teacher's own computation, bit for bit
        _, terms = step_loss(view, handle, top_sets, ([0], [], [i]), 1.0, torch.device("cpu"), "fp32")
        assert terms["distill"] == 0.0
    _, terms = step_loss(view, handle, top_sets, ([0], [], [0, 1, 2]), 1.0, torch.device("cpu"), "fp32")
    assert abs(terms["distill"]) < 1e-6
    with torch.no_grad():  # (a uniform shift would vanish in the next layer norm)
        for p in handle.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    assert load_teacher_set(sets["original"], model, tmp_path / "cache").path == teacher.path  # adapters ignored
    _, terms = step_loss(view, handle, top_sets, ([0], [], [0, 1]), 1.0, torch.device("cpu"), "fp32")
    assert terms["distill"] > 1e-6


def _train(view, handle, train_sets, dev, batch_seconds=0.4):
    reports = []
    cfg = TrainConfig(steps=4, lr=3e-2, eval_every=2, max_batch_seconds=batch_seconds, warmup_steps=1,
                      lr_schedule="cosine", distill_seconds=0.6, replay=0.3, distill_weight=2.0)
    train_adapters(view, handle, train_sets, dev, cfg, 50.0, lambda m, s: reports.append(m),
                   eval_batch_seconds=batch_seconds)
    return reports


def test_training_with_replay_and_distillation_through_the_top_matches_the_whole_model(sets, tmp_path):
    full_model, top_model = tiny_whisper(), tiny_whisper()
    cfg = AdapterConfig(dim=4, blocks="decoder:all", positions=["cross_attn"])
    full_handle = inject_adapters(full_model, cfg)
    top_handle = inject_adapters(top_model, cfg, full_handle.state_dict())
    teacher = load_teacher_set(sets["original"], full_model, tmp_path / "cache")
    full_sets = TrainSets(sets["train"], replay=sets["original"], distill=sets["original"], teacher=teacher)
    k = measurement_block(top_handle, True, False)

    def at_k(fs):
        return load_prefix_set(fs, top_model, k, tmp_path / "cache")

    top_sets = TrainSets(at_k(sets["train"]), replay=at_k(sets["original"]), distill=at_k(sets["original"]),
                         teacher=teacher)
    full_reports = _train(BackboneView(full_model), full_handle, full_sets,
                          {"new": sets["new"], "original": sets["original"]})
    top_reports = _train(TopOfModel(top_model, k), top_handle, top_sets,
                         {"new": at_k(sets["new"]), "original": at_k(sets["original"])})
    trained, cached = full_handle.state_dict(), top_handle.state_dict()
    assert any(v.abs().sum() > 0 for name, v in trained.items() if name.endswith("module.3.weight"))  # it trained
    assert all(torch.equal(cached[name], trained[name]) for name in trained)
    assert len(full_reports) == 2 and all(r["distill_loss"] is not None for r in full_reports)
    for a, b in zip(full_reports, top_reports):
        assert a["dev_wer_new"] == b["dev_wer_new"] and a["train_loss"] == b["train_loss"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_zero_init_adapter_shows_degradation_exactly_zero_on_every_path(sets, tmp_path, precision):
    model = tiny_whisper()
    fs = sets["original"]
    for blocks in ("decoder:all", "encoder:top:1+decoder:top:1"):
        handle = inject_adapters(model, AdapterConfig(dim=4, blocks=blocks))
        for k in (None, measurement_block(handle, True, False)):
            view, inputs = view_from(model, k), inputs_from(fs, model, k, tmp_path / "cache")
            base = base_dev_wers(view, handle, {"original": inputs}, 1.0, precision)["original"]
            assert dev_wer(view, inputs, 1.0, precision) == base
        handle.remove()


def test_the_teacher_runs_on_the_encoder_cache_with_the_same_outputs(sets, tmp_path):
    model = tiny_whisper()
    fs = sets["original"]
    plain = load_teacher_set(fs, model, tmp_path / "plain")
    encoder_cache = load_prefix_set(fs, model, 2, tmp_path / "c")
    on_prefix = load_teacher_set(fs, model, tmp_path / "on-prefix", prefix=encoder_cache, k=2)
    assert on_prefix.path.name == plain.path.name
    assert all(torch.equal(on_prefix.features(i), plain.features(i)) for i in range(len(fs)))
