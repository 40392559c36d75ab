"""The bottleneck adapter module and its residual combination (NeMo's ``LinearAdapter`` and
``ResidualAddAdapterStrategy``), independent of any backbone; serial and parallel adapters share them.

An adapter is a bottleneck ``norm → Linear(D, h) → activation → Linear(h, D) → dropout``
whose last layer starts at zero, so a freshly adapted model computes exactly what the base
model computes; training moves it away from there.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

_ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class LinearAdapter(nn.Module):
    """Bottleneck adapter branch: ``x [.., D] -> delta [.., D]`` (zero at initialisation).

    ``norm_position='pre'``: LayerNorm → down → act → up (up zero-initialised).
    ``norm_position='post'``: down → act → up → LayerNorm (the LayerNorm zero-initialised,
    as in NeMo: a zero up projection would make the following LayerNorm see a constant
    input and its gradient vanish). Linear layers have no bias, as in NeMo.
    """

    def __init__(self, in_features: int, dim: int, activation: str = "swish", norm_position: str = "pre",
                 dropout: float = 0.0):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation {activation!r}; allowed: {', '.join(_ACTIVATIONS)}")
        if norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position {norm_position!r}; allowed: pre, post")
        self.in_features = in_features
        self.dim = dim
        self.norm_position = norm_position
        layers: List[nn.Module] = [nn.Linear(in_features, dim, bias=False), _ACTIVATIONS[activation](),
                                   nn.Linear(dim, in_features, bias=False)]
        if norm_position == "pre":
            layers.insert(0, nn.LayerNorm(in_features))
        else:
            layers.append(nn.LayerNorm(in_features))
        self.module = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the last layer so the adapter branch starts as exactly zero."""
        last = self.module[-1]
        nn.init.zeros_(last.weight)
        if getattr(last, "bias", None) is not None:
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.module(x))


class ResidualAdd(nn.Module):
    """``out = x + adapter(x)`` (serial) or ``x + adapter(source)`` (parallel: the branch is fed the input
    of the module whose output ``x`` is) with NeMo's stochastic depth and L2 penalty (training only).

    Stochastic depth: with probability ``p`` per forward (one draw for the whole batch) the
    adapter branch is multiplied by 0, otherwise by ``1 / (1 - p)``, so its expected value
    equals the eval-mode branch. Multiplying instead of skipping keeps the adapter in the
    autograd graph, which DDP needs (no "unused parameter" errors).

    L2: ``l2_lambda * mean((out - x)^2)`` is appended to :attr:`losses` for the train loop
    to add (NeMo sums over frames and features per utterance; the mean keeps ``l2_lambda``
    comparable across model widths and utterance lengths).
    """

    def __init__(self, stochastic_depth: float = 0.0, l2_lambda: float = 0.0):
        super().__init__()
        if not 0.0 <= stochastic_depth < 1.0:
            raise ValueError(f"stochastic_depth {stochastic_depth}; must be in [0, 1)")
        if l2_lambda < 0:
            raise ValueError(f"l2_lambda {l2_lambda}; must be >= 0")
        self.stochastic_depth = stochastic_depth
        self.l2_lambda = l2_lambda
        self.losses: List[torch.Tensor] = []

    def forward(self, x: torch.Tensor, adapter: nn.Module, source: Optional[torch.Tensor] = None) -> torch.Tensor:
        delta = adapter(x if source is None else source)
        if self.training and self.stochastic_depth > 0.0:
            keep = 1.0 - self.stochastic_depth
            noise = torch.empty([1] * delta.ndim, dtype=delta.dtype, device=delta.device).bernoulli_(keep)
            delta = delta * noise.div_(keep)
        if self.training and self.l2_lambda > 0.0:
            self.losses.append(self.l2_lambda * delta.float().square().mean())
        return x + delta

    def pop_losses(self) -> List[torch.Tensor]:
        """The L2 terms collected since the last call (and forget them)."""
        out, self.losses = self.losses, []
        return out
