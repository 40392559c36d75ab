"""Adapter files: save, load into a fresh base, refuse another base or mismatched weights."""

from __future__ import annotations

import os

import pytest
import torch

from adapter_helpers import build, ctc_steps, inputs, run
from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.adapters.state import base_fingerprint, load_adapter, save_adapter
from raysearch_adapters.config import AdapterConfig
from raysearch_adapters.errors import UserError

CFG = AdapterConfig(dim=4, blocks="every:2", positions=["post", "mha", "ffn"], norm_position="post")


def _trained(backend, tmp_path):
    model = build(backend)
    x, lengths = inputs(model)
    fingerprint = base_fingerprint(model)
    handle = inject_adapters(model, CFG)
    ctc_steps(model, handle, x, lengths)
    path = tmp_path / "adapter.pt"
    save_adapter(path, handle, CFG, fingerprint, extra={"dev_wer": {"new": 12.5}, "steps": 3})
    return model, handle, path, run(model, x, lengths)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [n for n, _ in model.named_modules()]


def _assert_same(model, snap):
    state, names = snap
    assert [n for n, _ in model.named_modules()] == names
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


def test_save_then_load_into_fresh_base_reproduces_outputs(backend, tmp_path):
    model, handle, path, adapted = _trained(backend, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.pt"]  # atomic write leaves no temp file
    raw = torch.load(path, weights_only=True)
    assert set(raw["state_dict"]) == {n for n, _ in handle.named_parameters()}  # adapter weights only
    assert raw["targeted"] == handle.targeted

    fresh = build(backend)
    x, lengths = inputs(fresh)
    loaded, cfg, extra = load_adapter(path, fresh)
    assert cfg == CFG
    assert extra == {"dev_wer": {"new": 12.5}, "steps": 3}
    assert loaded.targeted == handle.targeted
    assert torch.equal(run(fresh, x, lengths), adapted)
    assert all(not p.requires_grad for n, p in fresh.named_parameters() if ".adapter." not in n)


def test_fingerprint_ignores_adapters_and_tells_bases_apart(backend):
    model = build(backend)
    fp = base_fingerprint(model)
    assert fp == base_fingerprint(build(backend))
    assert fp != base_fingerprint(build(backend, seed=1))
    handle = inject_adapters(model, CFG)
    torch.nn.init.normal_(handle.wrappers[0].adapter.module[0].weight)
    assert base_fingerprint(model) == fp
    with torch.no_grad():
        next(iter(handle.wrappers[0].base_layer.parameters())).add_(1e-3)  # a changed base is another base
    assert base_fingerprint(model) != fp


@pytest.mark.parametrize("change", ["sign flip", "permutation", "one ulp", "a buffer"])
def test_fingerprint_sees_changes_that_keep_the_weights_sums(backend, change):
    """Sums of |x| and x^2 (the old fingerprint) are blind to all of these; the bytes are not."""
    model = build(backend)
    fp = base_fingerprint(model)
    name, w = max(((n, p) for n, p in model.named_parameters() if p.dim() == 2), key=lambda np_: np_[1].numel())
    with torch.no_grad():
        if change == "sign flip":
            w[0].neg_()
        elif change == "permutation":
            w.copy_(w[torch.arange(w.shape[0] - 1, -1, -1)])
        elif change == "one ulp":
            w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(float("inf")))
        else:
            buffers = [b for _, b in model.named_buffers() if b.is_floating_point() and b.numel()]
            if not buffers:
                pytest.skip("this backbone has no float buffer")
            buffers[0].view(-1)[0] += 1.0
    assert base_fingerprint(model) != fp, f"{change} of {name}"


def test_loading_onto_another_base_fails_and_leaves_it_alone(backend, tmp_path):
    _, _, path, _ = _trained(backend, tmp_path)
    other = build(backend, seed=1)
    snap = _state(other)
    with pytest.raises(UserError, match="another base model .*fingerprint"):
        load_adapter(path, other)
    _assert_same(other, snap)


def test_mismatched_weights_fail_naming_the_keys(backend, tmp_path):
    _, _, path, _ = _trained(backend, tmp_path)
    raw = torch.load(path, weights_only=True)
    key = sorted(raw["state_dict"])[0]
    raw["state_dict"][key] = torch.zeros(3, 3)
    dropped = sorted(raw["state_dict"])[-1]
    del raw["state_dict"][dropped]
    raw["state_dict"]["encoder.nowhere.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save(raw, bad)
    fresh = build(backend)
    snap = _state(fresh)
    with pytest.raises(UserError) as e:
        load_adapter(bad, fresh)
    msg = str(e.value)
    assert str(bad) in msg and key in msg and dropped in msg and "encoder.nowhere.weight" in msg
    _assert_same(fresh, snap)


def test_not_an_adapter_file(tmp_path):
    model = build("conformer")
    with pytest.raises(UserError, match="not found"):
        load_adapter(tmp_path / "missing.pt", model)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(UserError, match="format 'something-else'"):
        load_adapter(other, model)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(64))
    with pytest.raises(UserError, match="not a loadable adapter file"):
        load_adapter(garbage, model)


def test_extra_must_load_back_safely(tmp_path):
    model = build("conformer")
    fp = base_fingerprint(model)
    handle = inject_adapters(model, CFG)
    with pytest.raises(TypeError, match="extra.when"):
        save_adapter(tmp_path / "a.pt", handle, CFG, fp, extra={"when": object()})
    assert not (tmp_path / "a.pt").exists()
