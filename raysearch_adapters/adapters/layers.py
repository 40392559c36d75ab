"""The layers the injection seam puts in place of a backbone's modules (the peft pattern).

Every :class:`AdapterLayer` keeps the original module as ``base_layer``, holds its adapter as
``adapter`` (the module whose output is the adapter's contribution: the no-op guard of
``train.loop`` hooks it), and with ``enabled`` off computes exactly ``base_layer``. How the
adapter enters is the type's own:

* :class:`AdapterWrapper` (bottleneck, serial): ``out + adapter(out)`` on the module's output;
* :class:`ParallelWrapper` (parallel, He et al. 2022): ``out + adapter(x)``, the branch fed the
  module's input ``x``;
* ``adapters.lora.LoraWrapper``: a low-rank update of the module's weights.
"""

from __future__ import annotations

from typing import Callable, Dict, List

import torch
from torch import nn

from raysearch_adapters.adapters.modules import LinearAdapter, ResidualAdd
from raysearch_adapters.errors import UserError


class NotMergeableError(UserError):
    """An adapter whose branch no change of the base weights can compute (bottleneck, parallel)."""


def not_mergeable_message(adapter_type: str) -> str:
    """Why adapters of ``adapter_type`` stay beside the base model instead of merging into it."""
    return (f"adapter type {adapter_type!r} cannot be merged into the base weights: its branch is non-linear "
            "(norm -> Linear -> activation -> Linear), so no change of the base model's weights computes it; "
            "only lora adapters merge")


class AdapterLayer(nn.Module):
    """A backbone module with an adapter: ``base_layer`` (the original), ``adapter``, its module path
    ``name``, its block index ``block`` and the ``enabled`` switch."""

    adapter_type = "bottleneck"  # what :func:`not_mergeable_message` names
    mergeable = False

    def __init__(self, base_layer: nn.Module, adapter: nn.Module, name: str, block: int):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.name = name
        self.block = block
        self.enabled = True

    def train_adapter(self, mode: bool) -> None:
        """Train (or eval) mode for everything but ``base_layer``."""
        for child_name, child in self.named_children():
            if child_name != "base_layer":
                child.train(mode)

    def pop_losses(self) -> List[torch.Tensor]:
        """The regularisation terms collected by the forward passes since the last call (then forgotten)."""
        return []

    def merge(self) -> None:
        """Add the adapter to the base weights (LoRA only)."""
        raise NotMergeableError(not_mergeable_message(self.adapter_type))

    def unmerge(self) -> None:
        """Undo :meth:`merge` exactly."""
        raise NotMergeableError(not_mergeable_message(self.adapter_type))


def _on_output(out, add: Callable[[torch.Tensor], torch.Tensor], name: str):
    """``add`` applied to a module's output: the tensor itself, or item 0 of a tuple (the rest as they are)."""
    if isinstance(out, torch.Tensor):
        return add(out)
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return (add(out[0]),) + out[1:]
    raise TypeError(f"adapter at {name}: the module returned {type(out).__name__}; "
                    "expected a tensor or a tuple whose first item is a tensor")


class _Bottleneck(AdapterLayer):
    """A bottleneck branch combined through :class:`ResidualAdd` (stochastic depth, L2)."""

    def __init__(self, base_layer: nn.Module, adapter: LinearAdapter, residual: ResidualAdd, name: str, block: int):
        super().__init__(base_layer, adapter, name, block)
        self.residual = residual

    def pop_losses(self) -> List[torch.Tensor]:
        return self.residual.pop_losses()


class AdapterWrapper(_Bottleneck):
    """Runs ``base_layer`` and adds the adapter of its output to it (a tensor, or item 0 of a tuple)."""

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        if not self.enabled:
            return out
        return _on_output(out, lambda y: self.residual(y, self.adapter), self.name)


class ParallelWrapper(_Bottleneck):
    """Runs ``base_layer`` and adds the adapter of its *input* to its output (He et al. 2022's parallel adapter).

    The input is the call's first positional argument, or the keyword ``input_arg`` (what the backbone's
    ``BlockInfo.parallel`` names)."""

    adapter_type = "parallel"

    def __init__(self, base_layer: nn.Module, adapter: LinearAdapter, residual: ResidualAdd, name: str, block: int,
                 input_arg: str):
        super().__init__(base_layer, adapter, residual, name, block)
        self.input_arg = input_arg

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        if not self.enabled:
            return out
        if args:
            x = args[0]
        elif self.input_arg in kwargs:
            x = kwargs[self.input_arg]
        else:
            raise TypeError(f"parallel adapter at {self.name}: called without a positional argument or "
                            f"{self.input_arg!r} (got {', '.join(kwargs) or 'no arguments'}); the backbone's "
                            "BlockInfo.parallel names the module's input argument")
        return _on_output(out, lambda y: self.residual(y, self.adapter, source=x), self.name)


def wrapped(model: nn.Module) -> Dict[str, AdapterLayer]:
    """Every adapter layer injected into ``model`` (enabled or not), by module path."""
    return {m.name: m for m in model.modules() if isinstance(m, AdapterLayer)}
