"""A LoRA winner as a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``), for the
backbones that wrap a Hugging Face transformers model (``Backbone.peft_root``: ``hf_ctc``, ``whisper``).

The project's LoRA on an ``nn.Linear`` (``adapters/lora.py``: ``LoraUpdate``) computes
``base(x) + (alpha / r) · lora_B(lora_A(x))`` with ``lora_A: Linear(in, r)`` and ``lora_B: Linear(r, out)``,
both without bias; peft's ``lora.Linear`` computes ``base(x) + lora_B(lora_A(dropout(x))) · lora_alpha / r``
with the same two layers. In eval mode (no dropout) that is the same function, so A and B go over as they
are, under the names peft's ``save_pretrained`` gives them: ``base_model.model.<module path in the
transformers model>.lora_A.weight`` (the adapter name left out), and a ``LoraConfig`` whose
``target_modules`` are the full paths of the adapted modules (exactly the targets and blocks of the
winner), ``r``, ``lora_alpha`` and ``lora_dropout`` its rank, alpha and dropout. Only the dropout differs
in kind: the project drops rank components of the update, peft drops inputs of ``lora_A``; it acts in
training only, so it matters to whoever trains the folder further, never to its outputs.

What peft cannot hold, it is told why: bottleneck and parallel adapters (peft has no such types), and
LoRA targets whose weight the module reads itself (``FusedWeight``: WavLM's attention hands its
projections' weights to ``F.multi_head_attention_forward``, which would bypass peft's layer).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, List, Optional

import torch

from raysearch_adapters.adapters.inject import AdapterHandle
from raysearch_adapters.adapters.lora import LoraUpdate
from raysearch_adapters.errors import UserError
from raysearch_adapters.fileio import atomic_folder
from raysearch_adapters.models.base import Backbone

PEFT_FOLDER = "peft_adapter"  # inside export --out
PEFT_WEIGHTS = "adapter_model.safetensors"  # peft's SAFETENSORS_WEIGHTS_NAME
PREFIX = "base_model.model."  # what peft's save_pretrained puts before a module path of the wrapped model


def not_peft_type(adapter_type: str) -> str:
    """Why a winner of ``adapter_type`` (not LoRA) gets no PEFT folder."""
    return (f"no PEFT folder: peft has no {adapter_type} adapter type (a LayerNorm -> Linear -> activation -> "
            "Linear branch); the project's adapter file holds it")


def why_not_peft(model: Backbone, handle: AdapterHandle) -> Optional[str]:
    """Why this LoRA winner gets no PEFT folder (one line), or None when peft can hold it exactly."""
    if importlib.util.find_spec("peft") is None:
        return ("no PEFT folder: peft is not installed (it comes with the hf extra: pip install "
                "'raysearch-adapters[hf]')")
    if not model.peft_root:
        return (f"no PEFT folder: peft wraps Hugging Face transformers models; model.name={model.name} is not one "
                "(the merged model and the project's adapter file hold the winner)")
    fused = [w.name for w in handle.wrappers if not isinstance(w.adapter, LoraUpdate)]
    if fused:
        return (f"no PEFT folder: the LoRA of {fused[0]} updates weights its module reads itself (not through an "
                "nn.Linear call), which peft's LoRA layer would bypass; the merged model holds the winner")
    return None


def _module_path(model: Backbone, name: str) -> str:
    """The path of an adapted module inside the transformers model (``hf.model.encoder...`` -> ``model.encoder...``)."""
    root = model.peft_root + "."
    if not name.startswith(root):
        raise ValueError(f"{name}: not inside {model.peft_root}, the model peft wraps")
    return name[len(root):]


def peft_weights(model: Backbone, handle: AdapterHandle) -> Dict[str, torch.Tensor]:
    """The winner's A and B under peft's names (``base_model.model.<path>.lora_A.weight``), fp32 on the CPU."""
    out = {}
    for w in handle.wrappers:
        path = _module_path(model, w.name)
        for part in ("lora_A", "lora_B"):
            out[f"{PREFIX}{path}.{part}.weight"] = getattr(w.adapter, part).weight.detach().float().cpu().clone()
    return out


def write_peft(model: Backbone, handle: AdapterHandle, checkpoint: str, out_dir: Path) -> Path:
    """``out_dir/peft_adapter``: the winner's ``LoraConfig`` and weights as peft's ``save_pretrained`` writes
    them (what ``PeftModel.from_pretrained(base, folder)`` reads)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    cfg = handle.cfg
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                        target_modules=[_module_path(model, w.name) for w in handle.wrappers],
                        base_model_name_or_path=checkpoint)
    weights = peft_weights(model, handle)

    def write(tmp: Path) -> None:
        config.save_pretrained(str(tmp))
        save_file(weights, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt"})

    return atomic_folder(Path(out_dir) / PEFT_FOLDER, write)


def load_peft(model: Backbone, folder: Path, expected: Dict[str, torch.Tensor]) -> List[str]:
    """Put the PEFT folder onto ``model``'s transformers model with ``PeftModel.from_pretrained`` (in place: the
    backbone then computes through peft's layers); returns the modules peft targeted. Fails when peft's own
    state dict of the loaded adapter is not ``expected`` (a name peft does not read would load nothing)."""
    from peft import PeftModel, get_peft_model_state_dict

    peft_model = PeftModel.from_pretrained(getattr(model, model.peft_root), str(folder))
    loaded = get_peft_model_state_dict(peft_model)
    wrong = sorted(set(expected) ^ set(loaded)) or [k for k in expected if not torch.equal(loaded[k].cpu(),
                                                                                           expected[k])]
    if wrong:
        raise UserError(f"{folder}: peft loads another adapter than the one written ({wrong[0]}"
                        f"{f' and {len(wrong) - 1} more' if len(wrong) > 1 else ''}); the PEFT folder is wrong")
    return list(peft_model.base_model.targeted_module_names)


def load_snippet(model: Backbone, checkpoint: str, folder: Path) -> str:
    """How to load the PEFT folder (one line)."""
    base = type(getattr(model, model.peft_root)).__name__
    return f"peft: PeftModel.from_pretrained({base}.from_pretrained('{checkpoint}'), '{folder}')"
