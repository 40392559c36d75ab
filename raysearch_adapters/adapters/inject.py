"""Put adapters into an unmodified backbone through one seam (the peft pattern).

Each targeted module (a block, its attention or its feed-forward, as the backbone's
:meth:`~raysearch_adapters.models.base.Backbone.adaptable_blocks` lists them) is replaced on
its parent by an :class:`AdapterWrapper` that keeps the original as ``base_layer`` and adds
the adapter to its output. The whole placement is validated before anything is changed;
the returned :class:`AdapterHandle` records what was targeted and can disable or remove
the adapters again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import torch
from torch import nn

from raysearch_adapters.adapters.modules import LinearAdapter, ResidualAdd
from raysearch_adapters.config import AdapterConfig
from raysearch_adapters.models.base import Backbone
# The block-set parser lives in the results layer so the dashboard reads placements without torch.
from raysearch_adapters.results.placement import PlacementError, parse_blocks

log = logging.getLogger(__name__)


class AdapterWrapper(nn.Module):
    """Runs ``base_layer`` and adds the adapter to its output (a tensor, or item 0 of a tuple)."""

    def __init__(self, base_layer: nn.Module, adapter: LinearAdapter, residual: ResidualAdd, name: str):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.residual = residual
        self.name = name
        self.enabled = True

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        if not self.enabled:
            return out
        if isinstance(out, torch.Tensor):
            return self.residual(out, self.adapter)
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            return (self.residual(out[0], self.adapter),) + out[1:]
        raise TypeError(f"adapter at {self.name}: the module returned {type(out).__name__}; "
                        "expected a tensor or a tuple whose first item is a tensor")


@dataclass
class _Target:
    name: str  # module path in the backbone
    block: int
    width: int
    parent: nn.Module
    attr: str
    module: nn.Module


class AdapterHandle:
    """The adapters injected into one backbone: what was targeted, their parameters, on/off, removal."""

    def __init__(self, model: Backbone, cfg: AdapterConfig, targets: List[_Target],
                 wrappers: List[AdapterWrapper], requires_grad: Dict[str, bool]):
        self.model = model
        self.cfg = cfg
        self.targeted: List[str] = [t.name for t in targets]  # module paths, block order
        self.blocks: List[int] = sorted({t.block for t in targets})
        self._targets = targets
        self.wrappers = wrappers
        self._requires_grad = requires_grad

    @property
    def lowest_block(self) -> int:
        """The lowest adapted block: blocks below it are frozen and deterministic in eval mode."""
        return self.blocks[0]

    def parameters(self) -> Iterator[nn.Parameter]:
        """The adapter parameters (the only trainable ones), found by walking the wrappers."""
        for w in self.wrappers:
            yield from w.adapter.parameters()

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(f"{module path}.{adapter param}", param)`` for every adapter parameter."""
        for w in self.wrappers:
            for k, p in w.adapter.named_parameters():
                yield f"{w.name}.{k}", p

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Adapter-only weights keyed like :meth:`named_parameters` (detached, on CPU)."""
        return {f"{w.name}.{k}": v.detach().cpu().clone()
                for w in self.wrappers for k, v in w.adapter.state_dict().items()}

    @property
    def num_params(self) -> int:
        """Number of adapter parameters."""
        return sum(p.numel() for p in self.parameters())

    @property
    def percent_of_base(self) -> float:
        """Adapter parameters as a percentage of the base model's parameters."""
        adapter_ids = {id(p) for p in self.parameters()}
        base = sum(p.numel() for p in self.model.parameters() if id(p) not in adapter_ids)
        return 100.0 * self.num_params / max(base, 1)

    def enable(self) -> None:
        """Add the adapters to the outputs again (after :meth:`disable`)."""
        for w in self.wrappers:
            w.enabled = True

    def disable(self) -> None:
        """Bypass every adapter: the model computes exactly the base model's outputs."""
        for w in self.wrappers:
            w.enabled = False

    def train(self, mode: bool = True) -> None:
        """Train mode for the adapters only; the base model always stays in eval mode.

        The base is frozen: its dropout would only add noise the adapters learn around, and
        its BatchNorm running statistics would drift towards the new domain, silently
        changing the base model itself (the original domain would degrade even with the
        adapters disabled, and the frozen-prefix cache would no longer match).
        """
        self.model.eval()
        for w in self.wrappers:
            w.adapter.train(mode)
            w.residual.train(mode)

    def eval(self) -> None:
        """Eval mode for everything."""
        self.train(False)

    def aux_loss(self) -> torch.Tensor:
        """Sum of the L2 terms collected by the forward passes since the last call (then reset)."""
        terms = [t for w in self.wrappers for t in w.residual.pop_losses()]
        if not terms:
            p = next(self.parameters())
            return torch.zeros((), device=p.device, dtype=torch.float32)
        return torch.stack(terms).sum()

    def remove(self) -> None:
        """Put the original modules back and restore the base parameters' ``requires_grad``."""
        for t, w in zip(reversed(self._targets), reversed(self.wrappers)):
            if getattr(t.parent, t.attr) is w:
                setattr(t.parent, t.attr, t.module)
        for name, p in self.model.named_parameters():
            if name in self._requires_grad:
                p.requires_grad_(self._requires_grad[name])
        self.wrappers = []


def _resolve_parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module holding ``path``'s last component, looking through adapters already injected
    (a block wrapped at ``post`` still has its attention at the original path)."""
    *parents, attr = path.split(".")
    node = model
    for part in parents:
        if isinstance(node, AdapterWrapper):
            node = node.base_layer
        node = getattr(node, part, None)
        if not isinstance(node, nn.Module):
            return model, path  # not found: getattr(model, path) is None, reported by the caller
    return (node.base_layer if isinstance(node, AdapterWrapper) else node), attr


def _plan(model: Backbone, cfg: AdapterConfig) -> List[_Target]:
    """Validate the whole placement and resolve every target module, changing nothing."""
    cfg.validate("adapter")
    blocks = model.adaptable_blocks()
    if not blocks:
        raise PlacementError(f"model {model.name}: lists no adaptable blocks")
    positions = list(cfg.positions)
    if len(set(positions)) != len(positions):
        raise PlacementError(f"adapter.positions: got {positions}; each position may appear once")
    chosen = [blocks[i] for i in parse_blocks(cfg.blocks, len(blocks))]
    missing = [(b, p) for b in chosen for p in positions if p not in b.positions]
    if missing:
        b, p = missing[0]
        raise PlacementError(
            f"adapter.positions: block {b.index} ({b.name}) of model {model.name} has no position {p!r}; "
            f"it has: {', '.join(b.positions)}")
    targets: List[_Target] = []
    for b in chosen:
        for pos in b.positions:  # the backbone's order, whatever order the config lists them in
            if pos not in positions:
                continue
            path = b.positions[pos]
            parent, attr = _resolve_parent(model, path)
            module = getattr(parent, attr, None)
            if not isinstance(module, nn.Module):
                raise PlacementError(f"model {model.name}: block {b.index} lists module {path!r} "
                                     f"for position {pos!r}, which does not exist")
            if isinstance(module, AdapterWrapper):
                raise PlacementError(f"model {model.name}: {path} already has an adapter; "
                                     "remove() the existing adapters first")
            targets.append(_Target(path, b.index, b.width, parent, attr, module))
    return targets


def _build(target: _Target, cfg: AdapterConfig, ref: torch.Tensor) -> AdapterWrapper:
    adapter = LinearAdapter(target.width, cfg.dim, cfg.activation, cfg.norm_position, cfg.dropout)
    adapter.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    return AdapterWrapper(target.module, adapter, ResidualAdd(cfg.stochastic_depth, cfg.l2_lambda),
                          target.name)


def inject_adapters(model: Backbone, cfg: AdapterConfig,
                    state_dict: Optional[Dict[str, torch.Tensor]] = None) -> AdapterHandle:
    """Wrap every module the placement targets, freeze the base and return the handle.

    ``state_dict`` (keys as :meth:`AdapterHandle.state_dict`) is loaded into the new
    adapters before they are attached; a mismatch fails without touching the model.
    """
    targets = _plan(model, cfg)
    ref = next(model.parameters())
    wrappers = [_build(t, cfg, ref) for t in targets]
    if state_dict is not None:
        _load_into(wrappers, state_dict)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for t, w in zip(targets, wrappers):
        setattr(t.parent, t.attr, w)
    handle = AdapterHandle(model, cfg, targets, wrappers, requires_grad)
    log.info("adapters at %d modules in blocks %s; trainable params: %d (%.2f %% of base)",
             len(targets), handle.blocks, handle.num_params, handle.percent_of_base)
    return handle


def _load_into(wrappers: List[AdapterWrapper], state: Dict[str, torch.Tensor]) -> None:
    expected = {f"{w.name}.{k}": (w, k, v) for w in wrappers for k, v in w.adapter.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, (_, _, v) in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("shape (file vs model)", wrong)) if items]
        raise PlacementError("adapter weights do not fit this placement: " + "; ".join(parts))
    for w in wrappers:
        w.adapter.load_state_dict({k: state[f"{w.name}.{k}"] for k in w.adapter.state_dict()})
