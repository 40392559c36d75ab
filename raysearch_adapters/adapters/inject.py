"""Put adapters into an unmodified backbone through one seam (the peft pattern).

Each targeted module is replaced on its parent by an adapter layer (``adapters.layers``) that keeps
the original as ``base_layer``: for a bottleneck adapter a position's module (a block, its attention
or its feed-forward, as the backbone's :meth:`~raysearch_adapters.models.base.Backbone.adaptable_blocks`
lists them), the adapter added to its output; for a parallel adapter the same modules, the branch fed
their input; for LoRA the block's linear layers the config names (``BlockInfo.linears``), updated by a
low-rank product. The whole placement is validated before anything is changed; the returned
:class:`AdapterHandle` records what was targeted and can disable, merge (LoRA) or remove the adapters.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from raysearch_adapters.adapters.layers import (AdapterLayer, AdapterWrapper, NotMergeableError, ParallelWrapper,
                                                not_mergeable_message)
from raysearch_adapters.adapters.lora import FusedLoraUpdates, LoraUpdate, LoraWrapper
from raysearch_adapters.adapters.modules import LinearAdapter, ResidualAdd
from raysearch_adapters.config import AdapterConfig
from raysearch_adapters.models.base import Backbone, BlockInfo, FusedWeight, block_layout
# The block-set parser lives in the results layer so the dashboard reads placements without torch.
from raysearch_adapters.results.placement import PlacementError, parse_blocks
from raysearch_adapters.adapter_types import ADAPTER_TYPES
from raysearch_adapters.space_values import parse_targets_spec

log = logging.getLogger(__name__)


@dataclass
class Target:
    """One module an adapter wraps, resolved on the backbone (what an adapter type's builder is given)."""

    name: str  # module path in the backbone
    block: int
    width: int
    parent: nn.Module
    attr: str
    module: nn.Module
    input_arg: str = ""  # parallel: the module's input argument
    # lora: target name -> (weight name inside the module, its rows or None)
    lora: Dict[str, Tuple[str, Optional[Tuple[int, int]]]] = field(default_factory=dict)


class AdapterHandle:
    """The adapters injected into one backbone: what was targeted, their parameters, on/off, removal."""

    def __init__(self, model: Backbone, cfg: AdapterConfig, targets: List[Target],
                 wrappers: List[AdapterLayer], requires_grad: Dict[str, bool]):
        self.model = model
        self.cfg = cfg
        self.targeted: List[str] = [t.name for t in targets]  # module paths, block order
        self.block_ids: List[int] = sorted({t.block for t in targets})
        self._targets = targets
        self.wrappers = wrappers
        self._requires_grad = requires_grad

    @property
    def lowest_block(self) -> int:
        """The lowest adapted block: blocks below it are frozen and deterministic in eval mode."""
        return self.block_ids[0]

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

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """The base model inside the ``with`` block, every adapter back on after it."""
        self.disable()
        try:
            yield
        finally:
            self.enable()

    def train(self, mode: bool = True) -> None:
        """Train mode for the adapters only; the base model always stays in eval mode.

        The base is frozen: its dropout would only add noise the adapters learn around, and
        its BatchNorm running statistics would drift towards the new domain, silently
        changing the base model itself (the original domain would degrade even with the
        adapters disabled, and the frozen-prefix cache would no longer match).
        """
        self.model.eval()
        for w in self.wrappers:
            w.train_adapter(mode)

    def eval(self) -> None:
        """Eval mode for everything."""
        self.train(False)

    def aux_loss(self) -> torch.Tensor:
        """Sum of the L2 terms collected by the forward passes since the last call (then reset)."""
        terms = [t for w in self.wrappers for t in w.pop_losses()]
        if not terms:
            p = next(self.parameters())
            return torch.zeros((), device=p.device, dtype=torch.float32)
        return torch.stack(terms).sum()

    @property
    def mergeable(self) -> bool:
        """Whether these adapters can be merged into the base weights (LoRA)."""
        return all(w.mergeable for w in self.wrappers)

    def merge(self) -> None:
        """Add every adapter to the base weights (LoRA only; the forward then runs the merged base layers).

        Raises :class:`NotMergeableError` naming the type for adapters no weight change computes."""
        if not self.mergeable:
            raise NotMergeableError(not_mergeable_message(self.cfg.type))
        for w in self.wrappers:
            w.merge()

    def unmerge(self) -> None:
        """Undo :meth:`merge`: the base weights are the original ones again, bit for bit."""
        for w in self.wrappers:
            w.unmerge()

    def merge_and_unload(self) -> Backbone:
        """Merge, then put the (now merged) original modules back: the model, with no adapter layer left."""
        self.merge()
        self._unload()
        return self.model

    def remove(self) -> None:
        """Put the original modules back (unmerged) and restore the base parameters' ``requires_grad``."""
        for w in self.wrappers:
            if w.mergeable:
                w.unmerge()
        self._unload()

    def _unload(self) -> None:
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
        if isinstance(node, AdapterLayer):
            node = node.base_layer
        node = getattr(node, part, None)
        if not isinstance(node, nn.Module):
            return model, path  # not found: getattr(model, path) is None, reported by the caller
    return (node.base_layer if isinstance(node, AdapterLayer) else node), attr


def _resolve(model: Backbone, path: str, what: str) -> Tuple[nn.Module, str, nn.Module]:
    """(parent, attribute, module) of the module at ``path``; fails when it is missing or already adapted."""
    parent, attr = _resolve_parent(model, path)
    module = getattr(parent, attr, None)
    if not isinstance(module, nn.Module):
        raise PlacementError(f"model {model.name}: {what} lists module {path!r}, which does not exist")
    if isinstance(module, AdapterLayer):
        raise PlacementError(f"model {model.name}: {path} already has an adapter; remove() the existing adapters first")
    return parent, attr, module


def _plan(model: Backbone, cfg: AdapterConfig) -> List[Target]:
    """Validate the whole placement and resolve every target module, changing nothing."""
    cfg.validate("adapter")
    infos = model.adaptable_blocks()
    if not infos:
        raise PlacementError(f"model {model.name}: lists no adaptable blocks")
    chosen = [infos[i] for i in parse_blocks(cfg.blocks, block_layout(infos))]
    placement = ADAPTER_TYPES[cfg.type].placement
    if placement == "linears":
        return [t for b in chosen for t in _lora_targets(model, b, cfg)]
    positions = list(cfg.positions)
    if len(set(positions)) != len(positions):
        raise PlacementError(f"adapter.positions: got {positions}; each position may appear once")
    parallel = placement == "parallel"
    offered = (lambda b: b.parallel) if parallel else (lambda b: b.positions)
    missing = [(b, p) for b in chosen for p in positions if p not in offered(b) or p not in b.positions]
    if missing:
        b, p = missing[0]
        kind = "parallel position" if parallel else "position"
        raise PlacementError(
            f"adapter.positions: block {b.index} ({b.stack} {b.name}) of model {model.name} has no {kind} {p!r}; "
            f"it has: {', '.join(q for q in b.positions if q in offered(b)) or 'none'}")
    targets: List[Target] = []
    for b in chosen:
        for pos in b.positions:  # the backbone's order, whatever order the config lists them in
            if pos not in positions:
                continue
            path = b.positions[pos]
            parent, attr, module = _resolve(model, path, f"block {b.index} for position {pos!r}")
            targets.append(Target(path, b.index, b.width, parent, attr, module,
                                   input_arg=b.parallel.get(pos, "") if parallel else ""))
    return targets


def _lora_targets(model: Backbone, b: BlockInfo, cfg: AdapterConfig) -> List[Target]:
    """The modules LoRA wraps in block ``b``: each targeted nn.Linear, and each module whose fused weights
    are targeted (once, with all its targets), in the backbone's order."""
    if not b.linears:
        raise PlacementError(f"adapter.type: got 'lora'; block {b.index} ({b.name}) of model {model.name} lists no "
                             "linear layers (BlockInfo.linears); allowed types for it: bottleneck, parallel")
    names = parse_targets_spec(cfg.targets) or list(b.linears)
    unknown = [n for n in names if n not in b.linears]
    if unknown:
        raise PlacementError(f"adapter.targets: got {cfg.targets!r}; block {b.index} ({b.name}) of model {model.name} "
                             f"has no linear layer {unknown[0]!r}; it has: {', '.join(b.linears)} (or: all)")
    by_module: Dict[str, Dict[str, Tuple[str, Optional[Tuple[int, int]]]]] = {}
    for n in b.linears:  # the backbone's order
        if n in names:
            ref = b.linears[n]
            path, weight, rows = (ref.module, ref.weight, ref.rows) if isinstance(ref, FusedWeight) else (ref, "", None)
            by_module.setdefault(path, {})[n] = (weight, rows)
    targets = []
    for path, layout in by_module.items():
        parent, attr, module = _resolve(model, path, f"block {b.index} for LoRA targets {', '.join(layout)}")
        if any(w == "" for w, _ in layout.values()):
            if not isinstance(module, nn.Linear):
                raise PlacementError(f"model {model.name}: block {b.index} lists {path!r} as a LoRA target, which is "
                                     f"a {type(module).__name__}, not an nn.Linear; declare a weight it reads itself "
                                     "as a FusedWeight")
            if len(layout) > 1:
                raise PlacementError(f"model {model.name}: block {b.index} lists {path!r} for several LoRA targets "
                                     f"({', '.join(layout)}); an nn.Linear is one target")
        taken: Dict[str, List[Tuple[int, int]]] = {}
        for n, (w, rows) in layout.items():
            if w == "":
                continue
            try:
                p = module.get_parameter(w)
            except AttributeError:
                raise PlacementError(f"model {model.name}: block {b.index} lists LoRA target {n!r} as weight {w!r} of "
                                     f"{path}, which has no such parameter") from None
            span = rows or (0, p.shape[0])
            if p.dim() != 2 or not 0 <= span[0] < span[1] <= p.shape[0]:
                raise PlacementError(f"model {model.name}: block {b.index} lists LoRA target {n!r} as rows {rows} of "
                                     f"{path}.{w} {tuple(p.shape)}; allowed: a 2-D weight and rows inside it")
            if any(span[0] < hi and lo < span[1] for lo, hi in taken.get(w, [])):
                raise PlacementError(f"model {model.name}: block {b.index} lists LoRA target {n!r} on rows of "
                                     f"{path}.{w} that another target already has")
            taken.setdefault(w, []).append(span)
        targets.append(Target(path, b.index, b.width, parent, attr, module, lora=layout))
    return targets


def _on_ref(adapter: nn.Module, ref: torch.Tensor) -> nn.Module:
    return adapter.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)


def build_bottleneck(target: Target, cfg: AdapterConfig, ref: torch.Tensor) -> AdapterLayer:
    """The bottleneck adapter layer around ``target`` (``ref``: a base parameter whose device and dtype it takes)."""
    adapter = _on_ref(LinearAdapter(target.width, cfg.dim, cfg.activation, cfg.norm_position, cfg.dropout), ref)
    return AdapterWrapper(target.module, adapter, ResidualAdd(cfg.stochastic_depth, cfg.l2_lambda), target.name,
                          target.block)


def build_parallel(target: Target, cfg: AdapterConfig, ref: torch.Tensor) -> AdapterLayer:
    """The parallel adapter layer around ``target`` (``ref``: a base parameter whose device and dtype it takes)."""
    adapter = _on_ref(LinearAdapter(target.width, cfg.dim, cfg.activation, cfg.norm_position, cfg.dropout), ref)
    return ParallelWrapper(target.module, adapter, ResidualAdd(cfg.stochastic_depth, cfg.l2_lambda), target.name,
                           target.block, target.input_arg)


def build_lora(target: Target, cfg: AdapterConfig, ref: torch.Tensor) -> AdapterLayer:
    """The lora adapter layer around ``target`` (``ref``: a base parameter whose device and dtype it takes)."""
    if "" in {w for w, _ in target.lora.values()}:  # an nn.Linear: the update's output is added to its output
        linear = target.module
        adapter = LoraUpdate(linear.in_features, linear.out_features, cfg.rank, cfg.alpha, cfg.dropout)
    else:
        shapes = {w: tuple(target.module.get_parameter(w).shape) for w, _ in target.lora.values()}
        adapter = FusedLoraUpdates(target.lora, shapes, cfg.rank, cfg.alpha, cfg.dropout)
    return LoraWrapper(target.module, _on_ref(adapter, ref), target.name, target.block)


def _build(target: Target, cfg: AdapterConfig, ref: torch.Tensor) -> AdapterLayer:
    return ADAPTER_TYPES[cfg.type].builder()(target, cfg, ref)


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
    log.info("%s adapters at %d modules in blocks %s; trainable params: %d (%.2f %% of base)",
             cfg.type, len(targets), handle.block_ids, handle.num_params, handle.percent_of_base)
    return handle


def _load_into(wrappers: List[AdapterLayer], state: Dict[str, torch.Tensor]) -> None:
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
