"""Adapter files: adapter-only weights beside their config and the fingerprint of their base model.

An adapter only means something on the base model it was trained on, so the file records
that base's fingerprint and loading refuses any other base. Files hold plain tensors,
str, numbers, lists and dicts, and load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from raysearch_adapters.adapters.inject import AdapterHandle, inject_adapters
from raysearch_adapters.adapters.layers import AdapterLayer
from raysearch_adapters.config import AdapterConfig
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.base import Backbone
from raysearch_adapters.models.checkpoint import atomic_torch_save, read_format_file

FORMAT = "raysearch-adapters/adapter/v1"


class AdapterFileError(UserError):
    """An adapter file that cannot be loaded onto the given base model."""


def base_fingerprint(model: Backbone) -> str:
    """sha256 of the base model's config and of every parameter's and buffer's name, dtype, shape and bytes.

    Adapters already injected are ignored (their weights skipped, ``.base_layer`` dropped
    from names), so the fingerprint is the same with or without them. The bytes enter
    exactly (copied to the CPU), so any change to a weight, down to one bit, is another base,
    on CPU and GPU alike; the fingerprint keys the frozen-prefix and teacher caches, which a
    stale entry would silently corrupt."""
    skip = {id(t) for m in model.modules() if isinstance(m, AdapterLayer)
            for t in [*m.adapter.parameters(), *m.adapter.buffers()]}
    h = hashlib.sha256(json.dumps(model.config_dict(), sort_keys=True, default=str).encode())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if id(t) in skip:
            continue
        v = t.detach().cpu().contiguous()
        h.update(f"{name.replace('.base_layer', '')}:{v.dtype}:{tuple(v.shape)};".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def _check_plain(obj: Any, where: str) -> None:
    """Refuse values that ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not (obj is None or isinstance(obj, (str, bytes, int, float, bool, torch.Tensor))):
        raise TypeError(f"{where}: {type(obj).__name__} cannot go into an adapter file "
                        "(allowed: dict, list, str, bytes, numbers, bool, None, tensors)")


def save_adapter(path: str | Path, handle: AdapterHandle, cfg: AdapterConfig, base_fingerprint: str,
                 extra: Optional[dict] = None, state_dict: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Write the adapter weights (the handle's current ones, or ``state_dict`` keyed like
    :meth:`AdapterHandle.state_dict`, e.g. an earlier evaluation's), ``cfg``, the base
    fingerprint and the targeted modules (atomically)."""
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    current = handle.state_dict()
    if state_dict is not None and set(state_dict) != set(current):
        raise ValueError(f"save_adapter: the weights' keys {sorted(state_dict)[:3]}... are not this handle's "
                         f"{sorted(current)[:3]}...")
    atomic_torch_save({"format": FORMAT, "adapter": dataclasses.asdict(cfg), "base_model": handle.model.name,
                       "base_fingerprint": base_fingerprint, "targeted": list(handle.targeted),
                       "state_dict": current if state_dict is None else dict(state_dict), "extra": extra}, Path(path))


def load_adapter(path: str | Path, model: Backbone) -> Tuple[AdapterHandle, AdapterConfig, dict]:
    """Inject the adapters saved at ``path`` into ``model`` and load their weights.

    Fails, leaving ``model`` untouched, when the file was made for another base model or
    its weights do not fit the placement its config describes."""
    path = Path(path)
    payload = read_format_file(path, FORMAT, "adapter file", AdapterFileError)
    try:
        cfg = AdapterConfig(**payload["adapter"])
    except TypeError as e:
        raise AdapterFileError(f"{path}: adapter config does not match this version: {e}") from None
    fingerprint = base_fingerprint(model)
    if payload["base_fingerprint"] != fingerprint:
        raise AdapterFileError(
            f"{path}: trained on another base model ({payload.get('base_model')} with fingerprint "
            f"{payload['base_fingerprint'][:12]}); this {model.name} has fingerprint {fingerprint[:12]}; "
            "load it onto the base model it was trained on")
    try:
        # The weights are keyed by targeted module, so a placement that resolves differently
        # in this model fails here, before the model is touched.
        handle = inject_adapters(model, cfg, state_dict=payload["state_dict"])
    except UserError as e:
        raise AdapterFileError(f"{path}: {e}") from None
    return handle, cfg, dict(payload.get("extra", {}))
