"""The adapter types a search can place: one registration each.

An adapter type is a builder (a function that wraps one target module of a backbone in its adapter
layer: :func:`raysearch_adapters.adapters.inject.build_bottleneck` and its siblings show the form)
plus one :func:`register` line below, which says where it goes, whether it merges into the weights
and what it does with the adapter fields it has no use for. Its searched hyperparameters are the rows
of the hyperparameter table (:mod:`raysearch_adapters.hparams`) that name it. This module is light on
purpose: the config checks ``adapter.type`` against it without importing torch; the builder is
imported only when adapters are injected.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

# Where an adapter type goes: on the output of a block's position (serial), beside a position's module
# (fed its input), or a low-rank update of each targeted linear layer of a block.
PLACEMENTS = ("positions", "parallel", "linears")


@dataclass(frozen=True)
class AdapterType:
    """What the config, the search and the exports need to know of an adapter type, and where its builder is."""

    name: str  # adapter.type
    placement: str  # one of PLACEMENTS
    build: str  # "module:function" building the adapter layer around one target (imported when injecting)
    mergeable: bool  # its update folds into the base weights exactly (export merges it)
    zeroed: Tuple[str, ...] = ()  # adapter fields it has no output to act on: they must be 0
    why_zeroed: str = ""
    nemo_module: str = ""  # the NeMo adapter module export-nemo writes it as ("": none)
    label: str = ""  # how views name it ("": its name)

    def builder(self) -> Callable[..., Any]:
        """The build function (imports its module)."""
        module, function = self.build.split(":")
        return getattr(importlib.import_module(module), function)


ADAPTER_TYPES: Dict[str, AdapterType] = {}


def register(entry: AdapterType) -> AdapterType:
    """Add an adapter type (its name must be new, its placement one of PLACEMENTS)."""
    if entry.name in ADAPTER_TYPES:
        raise ValueError(f"adapter type {entry.name!r} is registered twice")
    if entry.placement not in PLACEMENTS:
        raise ValueError(f"adapter type {entry.name!r}: placement {entry.placement!r}; allowed: {', '.join(PLACEMENTS)}")
    ADAPTER_TYPES[entry.name] = entry
    return entry


def names() -> Tuple[str, ...]:
    """The registered adapter.type values, in registration order."""
    return tuple(ADAPTER_TYPES)


register(AdapterType("bottleneck", "positions", "raysearch_adapters.adapters.inject:build_bottleneck",
                     mergeable=False, nemo_module="LinearAdapter"))
register(AdapterType("lora", "linears", "raysearch_adapters.adapters.inject:build_lora", mergeable=True,
                     zeroed=("stochastic_depth", "l2_lambda"), why_zeroed="lora has no branch output to skip or penalise",
                     label="LoRA"))
register(AdapterType("parallel", "parallel", "raysearch_adapters.adapters.inject:build_parallel", mergeable=False))
