"""The one interface every backbone implements.

A backbone turns *cached inputs* (what the feature cache stores: log-mel features for the
Conformer, the frozen convolutional features for wav2vec2) into CTC log-probabilities,
and lists its adaptable blocks so adapters can be injected without touching its code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import nn


@dataclass(frozen=True)
class BlockInfo:
    """One adaptable block: its index, module path, residual width and adapter positions."""

    index: int
    name: str  # module path of the block inside the backbone, e.g. "encoder.layers.3"
    width: int  # width D of the tensor an adapter sees at every position of this block
    # position -> module path whose output (a tensor, or a tuple whose first item is the
    # tensor) gets the adapter added residually
    positions: Dict[str, str] = field(default_factory=dict)


class Backbone(nn.Module):
    """Base class of CTC backbones. Subclasses set ``tokenizer`` and implement the methods."""

    name: str = "backbone"
    sample_rate: int = 16000
    tokenizer: "object"  # raysearch_adapters.models.tokenizer.Tokenizer

    def featurizer(self) -> nn.Module:
        """Module mapping (waveform [B, S], lengths [B]) -> (inputs [B, T, F], lengths [B]).

        Its outputs are what the feature cache stores; it is frozen and deterministic."""
        raise NotImplementedError

    def featurizer_key(self) -> dict:
        """What identifies the featurizer's outputs (config, weights fingerprint) for the cache."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cached inputs [B, T, F] + lengths -> (CTC log-probs [B, T', V+1], output lengths [B]).

        The CTC blank is index 0; token ``i`` of the tokenizer is output ``i + 1``."""
        raise NotImplementedError

    def adaptable_blocks(self) -> List[BlockInfo]:
        """The ordered list of blocks adapters can go into."""
        raise NotImplementedError

    # ---- the frozen-prefix split: run blocks [0, k) once, reuse for blocks [k, n)
    def encode_prefix(self, inputs: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Everything before block ``k`` -> (hidden [B, T', D], lengths)."""
        raise NotImplementedError

    def forward_from(self, hidden: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Blocks [k, n) and the CTC head on a hidden state from :meth:`encode_prefix`."""
        raise NotImplementedError

    def config_dict(self) -> dict:
        """Everything needed to rebuild this backbone (stored in checkpoints)."""
        raise NotImplementedError


def greedy_ctc_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> List[List[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks (0); returns token ids (blank-free, 0-based)."""
    best = log_probs.argmax(dim=-1).cpu()
    out = []
    for seq, n in zip(best, lengths.cpu().tolist()):
        seq = torch.unique_consecutive(seq[:n])
        out.append([int(t) - 1 for t in seq if t != 0])
    return out
