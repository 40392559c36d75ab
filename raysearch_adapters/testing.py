"""Tiny models and data builders for tests and ``--smoke-test`` paths (one place for fakes)."""

from __future__ import annotations

import torch

from raysearch_adapters.config import ConformerConfig, FrontendConfig
from raysearch_adapters.models.tokenizer import CharTokenizer

LETTERS = list("abcdefghijklmnopqrstuvwxyz'") + [" "]


def char_tokenizer() -> CharTokenizer:
    """Letters, apostrophe and space (space is its own symbol)."""
    return CharTokenizer(LETTERS, space=" ")


def tiny_conformer(seed: int = 0, num_layers: int = 3, d_model: int = 16, n_mels: int = 16):
    """A randomly initialised Conformer-CTC small enough for unit tests (eval mode)."""
    from raysearch_adapters.models.conformer import ConformerCTC

    torch.manual_seed(seed)
    cfg = ConformerConfig(d_model=d_model, num_layers=num_layers, num_heads=2, ffn_dim=2 * d_model,
                          conv_kernel=3, subsampling_channels=4, dropout=0.1, vocab_size=len(LETTERS))
    return ConformerCTC(cfg, FrontendConfig(n_mels=n_mels), char_tokenizer()).eval()
