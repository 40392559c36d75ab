"""LoRA (Hu et al. 2021) through the injection seam: a low-rank update of chosen linear layers of a block.

For a weight ``W [out, in]`` the update is ``ΔW = (alpha / r) · B · A``; ``A [r, in]`` starts
Kaiming-uniform and ``B [out, r]`` at zero (peft's ``LoraLayer``), so the adapted model starts
identical to the base. It enters one of two ways, by what the backbone declares (``BlockInfo.linears``):

* an ``nn.Linear`` the block calls: its output plus the update's output ``(alpha / r) · B(A x)``
  (peft's way). The update's output is computed on its own, so under bf16 autocast a small update
  is not lost in the rounding of the weight;
* a :class:`~raysearch_adapters.models.base.FusedWeight`, a weight its module reads itself (the q/k/v
  thirds of ``nn.MultiheadAttention``'s ``in_proj_weight``, its ``out_proj.weight``): the module runs
  (``torch.func.functional_call``) with ``W + ΔW``, each target's update in its own rows. Under bf16
  autocast ``W + ΔW`` is rounded to bf16 as one weight, as a merged model's would be.

Dropout is *rank dropout*: in a training forward each of the r components of an update is dropped
with probability p (one draw per forward, the kept ones scaled by 1 / (1 - p)). peft's input dropout,
``B A dropout(x)``, is no weight update, so it could not reach a fused weight; rank dropout is one rule
for both ways in, and it is off in eval mode, where a merged model is compared with the adapted one.

``merge()`` adds ``ΔW`` (computed in fp32, outside autocast) to the base weights and keeps an exact
copy of the originals; ``unmerge()`` puts them back bit for bit.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from raysearch_adapters.adapters.layers import AdapterLayer


class LoraUpdate(nn.Module):
    """The update of one weight ``[out, in]``: ``forward(x)`` is its output on ``x``, :meth:`delta_weight` itself."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.rank = rank
        self.scaling = alpha / rank
        self.dropout = dropout

    def _rank_mask(self) -> Optional[torch.Tensor]:
        """[r] in training with dropout: 0 for a dropped component, 1 / (1 - p) for a kept one; else None."""
        if not self.training or self.dropout == 0.0:
            return None
        keep = 1.0 - self.dropout
        return torch.empty(self.rank, device=self.lora_A.weight.device).bernoulli_(keep).div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lora_A(x)
        mask = self._rank_mask()
        if mask is not None:
            h = h * mask.to(h.dtype)
        return self.lora_B(h) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``ΔW [out, in]`` in fp32, outside autocast: what :meth:`LoraWrapper.merge` adds."""
        a = self.lora_A.weight
        with torch.autocast(a.device.type, enabled=False):
            a = a.float()
            mask = self._rank_mask()
            if mask is not None:
                a = a * mask[:, None]
            return (self.lora_B.weight.float() @ a) * self.scaling

    def weight_deltas(self) -> Dict[str, torch.Tensor]:
        """The update of the wrapped ``nn.Linear``'s ``weight``."""
        return {"weight": self.delta_weight()}


class FusedLoraUpdates(nn.Module):
    """The updates of the fused-weight targets of one module: ``forward()`` gives the update of each weight
    it reads (in :attr:`weights` order, zero outside the targets' rows)."""

    def __init__(self, layout: Dict[str, Tuple[str, Optional[Tuple[int, int]]]],
                 shapes: Dict[str, Tuple[int, int]], rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.layout = dict(layout)  # target name -> (weight name inside the module, rows or None)
        self.weights: List[str] = list(dict.fromkeys(w for w, _ in self.layout.values()))
        self.shapes = {w: tuple(shapes[w]) for w in self.weights}
        updates = {}
        for name, (weight, rows) in self.layout.items():
            out_features, in_features = self.shapes[weight]
            if rows is not None:
                out_features = rows[1] - rows[0]
            updates[name] = LoraUpdate(in_features, out_features, rank, alpha, dropout)
        self.updates = nn.ModuleDict(updates)

    def forward(self) -> Tuple[torch.Tensor, ...]:
        out = []
        for weight in self.weights:
            total = self.shapes[weight][0]
            pieces = []
            for name, (w, rows) in self.layout.items():
                if w == weight:
                    start, stop = rows if rows is not None else (0, total)
                    pieces.append(F.pad(self.updates[name].delta_weight(), (0, 0, start, total - stop)))
            out.append(torch.stack(pieces).sum(0) if len(pieces) > 1 else pieces[0])
        return tuple(out)

    def weight_deltas(self) -> Dict[str, torch.Tensor]:
        """The update of each weight, by its name inside the module."""
        return dict(zip(self.weights, self.forward()))


class LoraWrapper(AdapterLayer):
    """A module with LoRA: an ``nn.Linear`` plus its update's output, or a module run with updated weights.

    ``merge()`` puts the update into ``base_layer``'s weights (the forward then runs ``base_layer`` alone);
    ``unmerge()`` restores the original weights exactly."""

    adapter_type = "lora"
    mergeable = True

    def __init__(self, base_layer: nn.Module, adapter: LoraUpdate | FusedLoraUpdates, name: str, block: int):
        super().__init__(base_layer, adapter, name, block)
        self.merged = False
        self._originals: Dict[str, torch.Tensor] = {}

    def forward(self, *args, **kwargs):
        if self.merged and not self.enabled:
            raise RuntimeError(f"LoRA at {self.name} is merged into the base weights: unmerge() it before "
                               "disabling it (the disabled model must be the base model)")
        if self.merged or not self.enabled:
            return self.base_layer(*args, **kwargs)
        if isinstance(self.adapter, LoraUpdate):
            x = args[0] if args else kwargs["input"]
            return self.base_layer(*args, **kwargs) + self.adapter(x)
        weights = {w: self.base_layer.get_parameter(w) + d.to(self.base_layer.get_parameter(w).dtype)
                   for w, d in zip(self.adapter.weights, self.adapter())}
        return functional_call(self.base_layer, weights, args, kwargs)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update (eval mode: no rank dropout) to the base weights, keeping exact copies of them."""
        if self.merged:
            return
        was_training = self.adapter.training
        self.adapter.eval()
        try:
            deltas = self.adapter.weight_deltas()
        finally:
            self.adapter.train(was_training)
        for w, d in deltas.items():
            p = self.base_layer.get_parameter(w)
            self._originals[w] = p.detach().clone()
            p.add_(d.to(p.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """The original base weights back, bit for bit."""
        for w, original in self._originals.items():
            self.base_layer.get_parameter(w).copy_(original)
        self._originals = {}
        self.merged = False
