"""Load a base model by name: the shipped demo Conformer, a checkpoint file, a torchaudio bundle, a Hugging
Face checkpoint (a CTC model or Whisper; transformers is imported by those backbones only) or a NeMo model
(nemo is imported by models/nemo.py only)."""

from __future__ import annotations

from pathlib import Path

from raysearch_adapters.config import MODEL_NAMES, ModelConfig
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.base import Backbone
from raysearch_adapters.models.conformer import load_checkpoint_model

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_MODEL = ASSETS / "demo_model.pt"


def resolve_checkpoint(checkpoint: str) -> Path:
    """'demo' -> the shipped model; anything else is a path."""
    if checkpoint == "demo":
        if not DEMO_MODEL.is_file():
            raise UserError(f"model.checkpoint=demo: this version ships no demo base model ({DEMO_MODEL} is "
                            "missing); train one with `raysearch-adapters pretrain` (minutes on a GPU, hours on a "
                            "CPU) and pass model.checkpoint=PATH/model.pt")
        return DEMO_MODEL
    return Path(checkpoint).expanduser()


def load_base_model(cfg: ModelConfig) -> Backbone:
    """The frozen base model described by ``cfg``: eval mode, no parameter needing a gradient.

    Frozen for real, not only in eval mode: some kernels depend on whether a weight needs a gradient
    even under ``no_grad`` (WavLM's attention, through ``F.multi_head_attention_forward``, differs in the
    last bits), so the base WERs, the prefix and teacher caches and the adapted trials all run on
    weights in one state, the state adapter injection leaves them in."""
    return _load(cfg).eval().requires_grad_(False)


def _load(cfg: ModelConfig) -> Backbone:
    if cfg.name == "conformer_ctc":
        return load_checkpoint_model(resolve_checkpoint(cfg.checkpoint))
    # Each backbone's module is imported only when it is asked for: they import torchaudio's pipelines,
    # transformers or nemo (the optional extras, seconds to import).
    if cfg.name == "wav2vec2":
        from raysearch_adapters.models.wav2vec2 import Wav2Vec2CTC

        return Wav2Vec2CTC.from_bundle(cfg.bundle)
    if cfg.name == "hf_ctc":
        from raysearch_adapters.models.hf_ctc import HFCTC

        return HFCTC.from_pretrained(cfg.checkpoint)
    if cfg.name == "whisper":
        from raysearch_adapters.models.whisper import Whisper

        return Whisper.from_pretrained(cfg.checkpoint, cfg.language, cfg.max_new_tokens)
    if cfg.name == "nemo":
        from raysearch_adapters.models.nemo import NemoASR

        return NemoASR.load(cfg.checkpoint, cfg.nemo_head)
    raise UserError(f"model.name: got {cfg.name!r}; available: {', '.join(MODEL_NAMES)}")
