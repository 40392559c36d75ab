"""Tiny backbones of both kinds and a few adapter-training steps on them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raysearch_adapters.testing import random_inputs, tiny_conformer, tiny_wav2vec2

BACKENDS = {"conformer": tiny_conformer, "wav2vec2": tiny_wav2vec2}
# Module path of block i at each position, spelled out (not taken from adaptable_blocks) so
# the tests check what the backbones really expose.
PATHS = {
    "conformer": {"post": "encoder.layers.{i}", "mha": "encoder.layers.{i}.mha", "ffn": "encoder.layers.{i}.ffn"},
    "wav2vec2": {"post": "encoder.transformer.layers.{i}", "mha": "encoder.transformer.layers.{i}.attention",
                 "ffn": "encoder.transformer.layers.{i}.feed_forward"},
}
NUM_LAYERS = 4
FRAMES = 32  # 8 output frames for the Conformer (4x subsampling), 32 for wav2vec2


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
