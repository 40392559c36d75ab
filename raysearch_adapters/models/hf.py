"""Loading Hugging Face checkpoints for the HF backbones (``hf_ctc.py``, ``whisper.py``): one place for
where a checkpoint comes from and how its failures read, and for the folder a merged export writes.

``model.checkpoint`` is a folder written by ``save_pretrained`` or a hub id. A hub id is looked up
in the local Hugging Face cache first (no network), then downloaded by transformers where there
is internet; offline, a model that is not in the cache is one error naming the id. Only the
backbone files call this module, and it imports ``transformers`` inside its functions, so the
CLI and the dashboard never import it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

from raysearch_adapters.errors import UserError, first_line
from raysearch_adapters.fileio import atomic_folder

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
EXPORT_FOLDER = "hf_model"  # the folder a merged export writes inside ``export --out``
# Beside the transformers files of an export: the backbone's own settings (what from_pretrained takes besides
# the folder) and the export's meta.
EXPORT_SETTINGS = "raysearch_adapters.json"


class CheckpointSourceError(UserError):
    """A ``model.checkpoint`` that is no loadable Hugging Face checkpoint."""


def is_local(checkpoint: str) -> bool:
    """Whether ``checkpoint`` names a local path (it exists, or reads like a path) rather than a hub id."""
    if Path(checkpoint).expanduser().exists():
        return True
    return checkpoint.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(checkpoint)


def source(checkpoint: str, name: str) -> str:
    """What ``from_pretrained`` gets for ``model.checkpoint``: a checked local folder, or the hub id."""
    if not is_local(checkpoint):
        return checkpoint
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise CheckpointSourceError(f"model.checkpoint: {checkpoint}: no such folder; model.name={name} takes a "
                                    "folder written by save_pretrained or a Hugging Face hub id such as "
                                    "openai/whisper-tiny.en")
    if not path.is_dir():
        raise CheckpointSourceError(f"model.checkpoint: {checkpoint} is a file; model.name={name} takes a folder "
                                    "written by save_pretrained (config.json, weights, tokenizer files) or a hub "
                                    "id; a raysearch-adapters checkpoint file needs model.name=conformer_ctc")
    if not (path / "config.json").is_file():
        raise CheckpointSourceError(f"model.checkpoint: {checkpoint} has no config.json: not a folder written by "
                                    f"save_pretrained, so not a checkpoint model.name={name} can load")
    return str(path)


def load(what: str, checkpoint: str, loader: Callable[..., object], **kwargs):
    """``loader(source, **kwargs)`` (a ``from_pretrained``), the local cache first for a hub id; a checkpoint
    that cannot be read or found is one :class:`CheckpointSourceError` naming it and ``model.checkpoint``."""
    from huggingface_hub import constants

    local = is_local(checkpoint)
    try:
        if local:
            return loader(checkpoint, **kwargs)
        try:
            return loader(checkpoint, local_files_only=True, **kwargs)
        except OSError:
            if constants.HF_HUB_OFFLINE:
                raise
            return loader(checkpoint, **kwargs)  # not in the cache: transformers downloads it
    except (OSError, ValueError) as e:
        where = checkpoint if local else (f"hub id {checkpoint!r} is not in the local Hugging Face cache "
                                          f"({constants.HF_HUB_CACHE}) and could not be downloaded")
        hint = "" if local else ("; run once where there is internet (or copy the model into that cache, or "
                                 "give a local folder written by save_pretrained)")
        raise CheckpointSourceError(f"model.checkpoint: {where}: cannot load its {what} "
                                    f"({type(e).__name__}: {first_line(e)}){hint}") from None


def config(checkpoint: str):
    """The checkpoint's ``PretrainedConfig``."""
    from transformers import AutoConfig

    return load("config", checkpoint, AutoConfig.from_pretrained)


def pretrained(model_class, checkpoint: str, cfg) -> "object":
    """``model_class.from_pretrained`` in fp32 and eval mode, every weight present in the checkpoint."""
    import torch

    model, info = load("weights", checkpoint, model_class.from_pretrained, config=cfg, dtype=torch.float32,
                       output_loading_info=True)
    # Weights tied to others (Whisper's output projection) are reported missing by some versions.
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in info.get("missing_keys", []) if k not in tied]
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointSourceError(f"model.checkpoint: {checkpoint}: weights missing from the checkpoint: "
                                    f"{', '.join(sorted(missing)[:5])}{more}; they would start random")
    return model.eval()


def files_key(checkpoint: str) -> List[Tuple[str, int, int]]:
    """(name, mtime, size) of a local checkpoint folder's files (empty for a hub id): a rewritten folder is
    another model for the per-process model cache."""
    if not is_local(checkpoint):
        return []
    path = Path(checkpoint).expanduser()
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return [(f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file()]


def save_export(model, parts: Sequence, out_dir: Path, settings: dict, meta: dict) -> Path:
    """A merged model as a folder ``from_pretrained`` reads (``out_dir/hf_model``): ``model.save_pretrained``,
    each of ``parts`` (the tokenizer, the feature extractor) saved beside it, and ``settings`` with ``meta``
    in :data:`EXPORT_SETTINGS`. Written next to the folder and moved into place, so a reader never sees
    half of it."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        for part in parts:
            part.save_pretrained(tmp)
        (tmp / EXPORT_SETTINGS).write_text(json.dumps({**settings, "meta": meta}, indent=2, default=str) + "\n",
                                           encoding="utf-8")

    return atomic_folder(Path(out_dir) / EXPORT_FOLDER, write)


def export_settings(path: Path) -> dict:
    """The backbone settings :func:`save_export` wrote into ``path`` (without the meta)."""
    settings = json.loads((Path(path) / EXPORT_SETTINGS).read_text(encoding="utf-8"))
    settings.pop("meta", None)
    return settings
