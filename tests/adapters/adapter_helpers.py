"""Tiny CTC backbones of every kind and a few adapter-training steps on them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from builders import random_inputs, tiny_conformer, tiny_hf_ctc, tiny_wav2vec2
from raysearch_adapters.config import AdapterConfig

BACKENDS = {"conformer": tiny_conformer, "wav2vec2": tiny_wav2vec2, "hf_ctc": tiny_hf_ctc}
# Module path of block i at each position, spelled out (not taken from adaptable_blocks) so
# the tests check what the backbones really expose.
PATHS = {
    "conformer": {"post": "encoder.layers.{i}", "mha": "encoder.layers.{i}.mha", "ffn": "encoder.layers.{i}.ffn"},
    "wav2vec2": {"post": "encoder.transformer.layers.{i}", "mha": "encoder.transformer.layers.{i}.attention",
                 "ffn": "encoder.transformer.layers.{i}.feed_forward"},
    "hf_ctc": {"post": "hf.wav2vec2.encoder.layers.{i}", "mha": "hf.wav2vec2.encoder.layers.{i}.attention",
               "ffn": "hf.wav2vec2.encoder.layers.{i}.feed_forward"},
}
NUM_LAYERS = 4
# The other adapter types at each of their positions or targets (alone, and several at once).
TYPE_CASES = ([AdapterConfig(type="parallel", dim=4, positions=[p]) for p in ("post", "mha", "ffn")]
              + [AdapterConfig(type="parallel", dim=4, positions=["post", "mha", "ffn"])]
              + [AdapterConfig(type="lora", rank=2, targets=t) for t in ("q", "k", "v", "out", "ffn_in", "ffn_out")]
              + [AdapterConfig(type="lora", rank=2, targets="q,v", dropout=0.2),
                 AdapterConfig(type="lora", rank=2, targets="all")])


def config_id(cfg: AdapterConfig) -> str:
    """A test id for an adapter config: its type and positions (LoRA: its targets)."""
    return f"{cfg.type}-{cfg.targets if cfg.type == 'lora' else '+'.join(cfg.positions)}"


FRAMES = 32  # 8 output frames for the Conformer (4x subsampling), 32 for wav2vec2 and the HF CTC model


def build(backend: str, seed: int = 0):
    """A fresh tiny base model of ``backend`` (eval mode, deterministic weights per seed)."""
    return BACKENDS[backend](seed=seed, num_layers=NUM_LAYERS)


def inputs(model, seed: int = 0):
    """Random cached inputs with padding in the last item."""
    return random_inputs(model, batch=2, frames=FRAMES, seed=seed)


def ctc_steps(model, handle, x, lengths, steps: int = 3, lr: float = 3e-2) -> None:
    """A few Adam steps on CTC loss (+ the adapters' L2 term) with fixed random targets."""
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(1, model.tokenizer.vocab_size + 1, (x.shape[0], 3), generator=g)
    opt = torch.optim.Adam(handle.parameters(), lr=lr)
    handle.train()
    for _ in range(steps):
        log_probs, out_lengths = model(x, lengths)
        loss = F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, torch.full((x.shape[0],), 3))
        loss = loss + handle.aux_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    handle.eval()


@torch.no_grad()
def run(model, x, lengths):
    """Log-probs without autograd. Every exact comparison uses this: nn.MultiheadAttention
    takes its fused fast path only when no gradient is needed, which changes the last bits."""
    return model(x, lengths)[0]


def _tree(model):
    return [(n, type(m).__name__, id(m)) for n, m in model.named_modules()]


def snapshot(model):
    """Weights, module tree and requires_grad flags of ``model``, to check that a failed injection changed nothing."""
    return {k: v.clone() for k, v in model.state_dict().items()}, _tree(model), \
        {n: p.requires_grad for n, p in model.named_parameters()}


def assert_untouched(model, snap):
    """``model`` is exactly as :func:`snapshot` saw it."""
    state, tree, grads = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], state[k]) for k in state)
    assert _tree(model) == tree
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
