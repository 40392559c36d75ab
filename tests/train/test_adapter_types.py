"""LoRA and parallel adapters in the train loop's machinery: the no-op guard per wrapper and the frozen-prefix
cache at the lowest adapted block (a zero-initialised adapter of each type measured as exactly the base model:
test_prefix)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from builders import tiny_conformer, tiny_hf_ctc, tiny_wav2vec2, tiny_whisper
from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.config import AdapterConfig
from raysearch_adapters.data.cache import load_features
from raysearch_adapters.train.loop import AdapterNoOpError, check_in_forward_path
from raysearch_adapters.train.prefix import TopOfModel, load_prefix_set

CTC_BACKENDS = {"conformer": tiny_conformer, "wav2vec2": tiny_wav2vec2, "hf_ctc": tiny_hf_ctc}
# Whisper (2 encoder and 2 decoder blocks) through the same guard, with adapters in both stacks.
BACKENDS = {**CTC_BACKENDS, "whisper": lambda seed, num_layers: tiny_whisper(seed=seed, layers=num_layers // 2)}
TYPES = {"lora-fused-and-linear": AdapterConfig(type="lora", rank=2, targets="all"),
         "lora-linear": AdapterConfig(type="lora", rank=2, targets="ffn_in,ffn_out"),
         "parallel": AdapterConfig(type="parallel", dim=4, positions=["post", "mha", "ffn"])}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> str:
    return request.param


@pytest.fixture(params=sorted(TYPES))
def cfg(request) -> AdapterConfig:
    return TYPES[request.param]


def _model(backend):
    return BACKENDS[backend](seed=0, num_layers=4)


def _as_backend_takes(backend, cfg: AdapterConfig) -> AdapterConfig:
    """Whisper's placements name their stacks, and its decoder blocks' parallel positions are its attentions."""
    if backend != "whisper":
        return cfg
    if cfg.type == "parallel":
        return dataclasses.replace(cfg, blocks="decoder:all", positions=["post", "self_attn", "cross_attn"])
    return dataclasses.replace(cfg, blocks="encoder:top:1+decoder:all")


def _features(model, manifests, tmp_path, name):
    return load_features(manifests[name], model.featurizer(), model.featurizer_key(), tmp_path / "cache",
                         model.sample_rate, progress=False)


def _moved(handle, seed: int = 0) -> None:
    """Random non-zero adapter weights (fresh ones compute exactly zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def test_no_op_guard_checks_every_wrapper_of_each_type(backend, cfg, manifests, tmp_path):
    model = _model(backend)
    x, lengths, _ = _features(model, manifests, tmp_path, "new").collate([0, 1])
    handle = inject_adapters(model, _as_backend_takes(backend, cfg))
    with pytest.raises(AdapterNoOpError, match="do not change their module's output"):  # LoRA: B = 0, a zero update
        check_in_forward_path(model, handle, x, lengths)
    _moved(handle)
    check_in_forward_path(model, handle, x, lengths)
    handle.wrappers[1].enabled = False  # the output still changes, through the others
    with pytest.raises(AdapterNoOpError, match=rf"at {handle.wrappers[1].name} never run in the forward pass"):
        check_in_forward_path(model, handle, x, lengths)


@torch.no_grad()
@pytest.mark.parametrize("ctc_backend", sorted(CTC_BACKENDS))
def test_top_on_the_cached_prefix_is_bit_exact_for_each_type(ctc_backend, cfg, manifests, tmp_path):
    """CTC backbones (Whisper's prefix cache: test_whisper_training)."""
    model = _model(ctc_backend)
    fs = _features(model, manifests, tmp_path, "new")
    handle = inject_adapters(model, dataclasses.replace(cfg, blocks="2,3"))
    _moved(handle)
    assert handle.lowest_block == 2
    prefix = load_prefix_set(fs, model, 2, tmp_path / "cache")
    top = TopOfModel(model, 2)
    for i in range(len(fs)):
        full, full_len = model(fs.features(i)[None], torch.tensor([fs.num_frames[i]]))
        out, out_len = top(prefix.features(i)[None], torch.tensor([prefix.num_frames[i]]))
        assert torch.equal(out_len, full_len) and torch.equal(out, full)
