"""The backbones a search can adapt: one registration each.

A backbone is a module with a :class:`~raysearch_adapters.models.base.Backbone` subclass (how to
load it from the ``model`` section, which files identify its weights, how ``evaluate`` names it)
plus one :func:`register` line below. This module is light on purpose: the config checks
``model.name`` and the model section against it without importing torch, transformers or nemo;
:mod:`raysearch_adapters.models.registry` imports a backbone's module only when it is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple


@dataclass(frozen=True)
class BackboneEntry:
    """Where a backbone's class lives and what its ``model`` section must say."""

    name: str  # model.name
    target: str  # "module:Class" of its Backbone subclass, imported when the backbone is loaded
    takes: str  # what model.checkpoint names (the error of a checkpoint it cannot load says it)
    demo: bool = False  # model.checkpoint=demo is the model shipped with the package
    # An `evaluate --model VALUE` that names a model of this backbone without model.name (e.g. a .nemo file)
    claims: Callable[[str], bool] = field(default=lambda value: False, compare=False)
    # How a search's winner goes back to the backbone's own toolkit, beside `evaluate` and `export` (the
    # summary prints it; {results} is the results folder); "": no such command
    handoff: str = ""


BACKBONES: Dict[str, BackboneEntry] = {}


def register(entry: BackboneEntry) -> BackboneEntry:
    """Add a backbone (its name must be new)."""
    if entry.name in BACKBONES:
        raise ValueError(f"backbone {entry.name!r} is registered twice")
    BACKBONES[entry.name] = entry
    return entry


def names() -> Tuple[str, ...]:
    """The registered model.name values, in registration order."""
    return tuple(BACKBONES)


register(BackboneEntry("conformer_ctc", "raysearch_adapters.models.conformer:ConformerCTC",
                       "'demo' (the model shipped with the package) or a checkpoint file written by "
                       "`raysearch-adapters pretrain`", demo=True))
register(BackboneEntry("wav2vec2", "raysearch_adapters.models.wav2vec2:Wav2Vec2CTC",
                       "a torchaudio.pipelines ASR bundle name (e.g. WAV2VEC2_ASR_BASE_960H)",
                       claims=lambda value: value.upper().startswith(("WAV2VEC2_", "HUBERT_"))))
register(BackboneEntry("hf_ctc", "raysearch_adapters.models.hf_ctc:HFCTC",
                       "a folder written by save_pretrained or a Hugging Face hub id (e.g. facebook/wav2vec2-base-960h)"))
register(BackboneEntry("whisper", "raysearch_adapters.models.whisper:Whisper",
                       "a folder written by save_pretrained or a Hugging Face hub id (e.g. openai/whisper-tiny.en)"))
register(BackboneEntry("nemo", "raysearch_adapters.models.nemo:NemoASR",
                       "a .nemo file or a NeMo pretrained model name (e.g. stt_en_conformer_ctc_small)",
                       claims=lambda value: value.endswith(".nemo"),
                       handoff="NeMo: raysearch-adapters export-nemo {results} (a file for model.load_adapters)"))
