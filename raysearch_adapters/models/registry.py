"""Load a base model by name: the backbone registered as ``model.name`` (:mod:`raysearch_adapters.backbones`)
builds itself from the ``model`` section. A backbone's module is imported only when it is loaded: each
imports its own optional extra (torchaudio's pipelines, transformers, nemo) at its top."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Type

from raysearch_adapters.backbones import BACKBONES, names
from raysearch_adapters.config import ConfigError, ModelConfig
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.base import Backbone


def backbone_class(name: str) -> Type[Backbone]:
    """The Backbone subclass registered as ``name``."""
    if name not in BACKBONES:
        raise UserError(f"model.name: got {name!r}; available: {', '.join(names())}")
    module, cls = BACKBONES[name].target.split(":")
    return getattr(importlib.import_module(module), cls)


def load_base_model(cfg: ModelConfig) -> Backbone:
    """The frozen base model described by ``cfg``: eval mode, no parameter needing a gradient.

    Frozen for real, not only in eval mode: some kernels depend on whether a weight needs a gradient
    even under ``no_grad`` (WavLM's attention, through ``F.multi_head_attention_forward``, differs in the
    last bits), so the base WERs, the prefix and teacher caches and the adapted trials all run on
    weights in one state, the state adapter injection leaves them in."""
    cls = backbone_class(cfg.name)
    if not cfg.checkpoint:
        raise ConfigError(f"model.checkpoint: not set; model.name={cfg.name} takes {BACKBONES[cfg.name].takes}")
    return cls.from_model_config(cfg).eval().requires_grad_(False)


def model_section_for(value: str, cfg: ModelConfig) -> ModelConfig:
    """The model section that ``evaluate --model VALUE`` names: the config's backbone when the config names one
    other than the default, else the backbone that claims ``VALUE`` (a torchaudio bundle name, a ``.nemo`` file),
    else a checkpoint file of this project (conformer_ctc); ``VALUE`` is its ``checkpoint``."""
    name = cfg.name
    if name == ModelConfig.name:
        name = next((e.name for e in BACKBONES.values() if e.claims(value)), ModelConfig.name)
    return dataclasses.replace(cfg, name=name, checkpoint=value)
