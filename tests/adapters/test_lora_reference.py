"""LoRA's update against ``x · (W + (alpha / r) · B · A)ᵀ`` written out here, with alpha != r and non-zero A and B.

The Conformer's attention is an ``nn.MultiheadAttention``: q, k and v are the row thirds of its fused
``in_proj_weight`` and LoRA reaches them by running the module with an updated weight. The reference
below rebuilds each third's weight by hand, runs scaled dot-product attention from the definition
(per head, padded keys masked) and the output projection, and compares with the model's own attention
branch. Each target gets its own random A and B, so an update in the wrong third (q and k swapped) or
scaled by alpha instead of alpha / r gives another output. (A fresh LoRA has B = 0 and adds exactly
nothing, whatever its wiring: these tests never rely on one.)"""

from __future__ import annotations

import math

import pytest
import torch

from builders import tiny_conformer
from raysearch_adapters.adapters.inject import inject_adapters
from raysearch_adapters.config import AdapterConfig

RANK, ALPHA = 4, 16.0  # scale alpha / r = 4: alpha alone would be 4x too large


def _random_lora(handle, seed: int = 0) -> None:
    """Random non-zero A and B in every update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handle.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def _update(wrapper, target: str) -> torch.Tensor:
    """(alpha / r) · B · A of ``target`` from its raw parameters [out, in]."""
    u = wrapper.adapter.updates[target] if hasattr(wrapper.adapter, "updates") else wrapper.adapter
    return (ALPHA / RANK) * u.lora_B.weight @ u.lora_A.weight


def _attention(y, pad_mask, w_in, b_in, w_out, b_out, heads):
    """Multi-head self-attention from the definition: softmax(Q Kᵀ / sqrt(d_head)) V per head, then W_out."""
    b, t, d = y.shape
    dh = d // heads
    q, k, v = (y @ w_in[i * d:(i + 1) * d].T + b_in[i * d:(i + 1) * d] for i in range(3))

    def split(z):
        return z.reshape(b, t, heads, dh).transpose(1, 2)  # [B, H, T, dh]

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(dh)
    scores = scores.masked_fill(pad_mask[:, None, None, :], -math.inf)
    out = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, t, d)
    return out @ w_out.T + b_out


@pytest.mark.parametrize("targets", ["q", "k", "v", "out", "q,k,v,out"])
@torch.no_grad()
def test_lora_on_the_fused_attention_weights_is_the_hand_built_update_of_each_third(targets):
    model = tiny_conformer(seed=0, num_layers=2)
    mha = model.encoder.layers[1].mha
    attn = mha.attn
    d, heads = attn.embed_dim, attn.num_heads
    w_in, b_in = attn.in_proj_weight.clone(), attn.in_proj_bias.clone()
    w_out, b_out = attn.out_proj.weight.clone(), attn.out_proj.bias.clone()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, d, generator=g)
    pad_mask = torch.zeros(2, 7, dtype=torch.bool)
    pad_mask[1, 5:] = True

    handle = inject_adapters(model, AdapterConfig(type="lora", rank=RANK, alpha=ALPHA, targets=targets, blocks="1"))
    (wrapper,) = handle.wrappers
    assert wrapper.base_layer is attn
    _random_lora(handle)
    rows = {"q": slice(0, d), "k": slice(d, 2 * d), "v": slice(2 * d, 3 * d)}
    for t in targets.split(","):
        if t == "out":
            w_out = w_out + _update(wrapper, t)
        else:
            w_in = w_in.clone()
            w_in[rows[t]] += _update(wrapper, t)

    expected = _attention(mha.norm(x), pad_mask, w_in, b_in, w_out, b_out, heads)
    got = mha(x, pad_mask)
    valid = ~pad_mask  # padded queries attend like any other; only valid frames are compared
    assert torch.allclose(got[valid], expected[valid], atol=1e-5, rtol=1e-4)
    with handle.disabled():  # the update is not negligible: without it the output is another one
        base = mha(x, pad_mask)
    assert (base[valid] - expected[valid]).abs().max() > 1e-2


@torch.no_grad()
def test_lora_on_a_linear_layer_adds_the_scaled_low_rank_product():
    model = tiny_conformer(seed=0, num_layers=2)
    linear = model.encoder.layers[1].ffn.net[1]
    w, b = linear.weight.clone(), linear.bias.clone()
    handle = inject_adapters(model, AdapterConfig(type="lora", rank=RANK, alpha=ALPHA, targets="ffn_in", blocks="1"))
    (wrapper,) = handle.wrappers
    _random_lora(handle)
    x = torch.randn(3, 5, w.shape[1], generator=torch.Generator().manual_seed(2))
    expected = x @ (w + _update(wrapper, "ffn_in")).T + b
    assert torch.allclose(model.encoder.layers[1].ffn.net[1](x), expected, atol=1e-5, rtol=1e-4)
    assert (x @ w.T + b - expected).abs().max() > 1e-2
