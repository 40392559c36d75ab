"""Base-model checkpoints: weights + the config that rebuilds them + tokenizer + metadata.

Saved as plain tensors, str, bytes and lists so they load with ``torch.load(weights_only=True)``;
loading checks every key and shape and names the ones that do not match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from raysearch_adapters.errors import UserError
from raysearch_adapters.fileio import atomic_write

FORMAT = "raysearch-adapters/model/v1"


class CheckpointError(UserError):
    """A checkpoint file that cannot be loaded into the model."""


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename (never a half-written file)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(path: Path, model: nn.Module, meta: Optional[dict] = None, half: bool = False) -> None:
    """Write a base-model checkpoint (``half``: store float weights as fp16 to ship small files)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "config": model.config_dict(),
                       "tokenizer": model.tokenizer.to_dict(), "state_dict": state,
                       "meta": dict(meta or {})}, path)


def read_format_file(path: Path, fmt: str, what: str, error: type[UserError]) -> dict:
    """A dict saved by this project with ``"format": fmt``, loaded with ``weights_only=True``;
    a missing, unreadable or other file raises ``error`` naming the path and what was found."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors: not a file we can read safely
        raise error(f"{path}: not a loadable {what} ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise error(f"{path}: format {found!r}; expected a raysearch-adapters {what} ({fmt})")
    return payload


def read_checkpoint(path: Path) -> dict:
    """The raw checkpoint dict, validated."""
    return read_format_file(path, FORMAT, "checkpoint", CheckpointError)


def load_state_strict(model: nn.Module, state: dict, where: str) -> None:
    """Load ``state`` into ``model``, failing with the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"{where}: weights do not fit the model: {'; '.join(parts)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def file_key(path: Path) -> dict:
    """A checkpoint file's path, time and size (nothing for a name that is no file): a rewritten file is another
    model for the per-process model cache."""
    path = Path(path).expanduser()
    if not path.is_file():
        return {}
    stat = path.stat()
    return {"file": [str(path.resolve()), stat.st_mtime_ns, stat.st_size]}
