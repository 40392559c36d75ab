"""torchaudio wav2vec 2.0 / HuBERT CTC models (``torchaudio.pipelines`` ASR bundles) as a backbone.

The frozen convolutional feature extractor is the featurizer (its outputs are what the
feature cache stores); the backbone proper is the feature projection, the Transformer
layers (the adaptable blocks) and the CTC head. Pretrained weights download on first use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from raysearch_adapters.errors import UserError
from raysearch_adapters.fileio import atomic_write_text
from raysearch_adapters.models.base import BlockInfo, PerUtterance, weights_sha256
from raysearch_adapters.models.checkpoint import atomic_torch_save, load_state_strict
from raysearch_adapters.models.ctc import CTCBackbone
from raysearch_adapters.models.tokenizer import CharTokenizer


def asr_bundle_names() -> List[str]:
    """Names of the torchaudio.pipelines bundles this backend can load (CTC fine-tuned)."""
    from torchaudio import pipelines
    from torchaudio.pipelines import Wav2Vec2ASRBundle

    # Exact type: subclasses (the forced-alignment bundle) have different heads.
    return sorted(n for n in dir(pipelines) if type(getattr(pipelines, n)) is Wav2Vec2ASRBundle)


class Wav2Vec2Featurizer(PerUtterance):
    """Waveforms [B, S] + lengths -> conv features [B, T, C] + lengths, one utterance at a time.

    Per utterance because the base models' extractor ("group_norm" mode) normalises each
    channel over the whole time axis: in a padded batch an utterance's features would
    depend on its batch-mates' lengths, and cached features must not.
    """

    def __init__(self, extractor: nn.Module, normalize_waveform: bool):
        super().__init__()
        self.extractor = extractor
        self.normalize_waveform = normalize_waveform

    def one(self, wave: torch.Tensor) -> torch.Tensor:
        if self.normalize_waveform:  # what the bundle's wrapper does for LV60K/HuBERT-large models
            wave = F.layer_norm(wave, wave.shape)
        return self.extractor(wave, None)[0][0]


class Wav2Vec2CTC(CTCBackbone):
    """A torchaudio ``Wav2Vec2Model`` with a CTC head (``aux``); label 0 is the blank."""

    name = "wav2vec2"

    def __init__(self, model: nn.Module, params: dict, labels: Sequence[str], bundle: str = "",
                 sample_rate: int = 16000, normalize_waveform: bool = False):
        super().__init__()
        if model.aux is None or model.aux.out_features != len(labels):
            raise UserError(f"wav2vec2 {bundle or 'model'}: the CTC head has "
                            f"{getattr(model.aux, 'out_features', 0)} outputs but there are {len(labels)} labels")
        self.feature_extractor = model.feature_extractor
        self.encoder = model.encoder
        self.aux = model.aux
        self.params = dict(params)
        self.labels = list(labels)
        self.bundle = bundle
        self.sample_rate = int(sample_rate)
        self.normalize_waveform = bool(normalize_waveform)
        self.input_dim = self.encoder.feature_projection.projection.in_features
        self.tokenizer = CharTokenizer(self.labels[1:], space="|")

    # ---- construction
    @classmethod
    def from_model_config(cls, cfg) -> "Wav2Vec2CTC":
        return cls.from_bundle(cfg.checkpoint)

    @classmethod
    def evaluate_args(cls, cfg) -> str:
        return f"--model {cfg.checkpoint}"

    @classmethod
    def from_bundle(cls, name: str, dl_kwargs: Optional[dict] = None) -> "Wav2Vec2CTC":
        """A pretrained ASR bundle of ``torchaudio.pipelines`` (weights download on first use)."""
        from torchaudio import pipelines

        available = asr_bundle_names()
        if name not in available:
            raise UserError(f"model.checkpoint: got {name!r}; available torchaudio ASR bundles: {', '.join(available)}")
        bundle = getattr(pipelines, name)
        # The architecture parameters are only exposed as the bundle's ``_params`` field;
        # config_dict() needs them to rebuild the model.
        loaded = bundle.get_model(dl_kwargs=dl_kwargs)
        # Bundles that normalise the waveform wrap the model; the normalisation moves to our featurizer.
        model = getattr(loaded, "model", loaded)
        return cls(model, bundle._params, bundle.get_labels(), name, int(bundle.sample_rate),
                   bundle._normalize_waveform).eval()

    @classmethod
    def from_config_dict(cls, d: dict) -> "Wav2Vec2CTC":
        """Rebuild the architecture (random weights) from :meth:`config_dict`."""
        from torchaudio.models import wav2vec2_model

        params = dict(d["params"])
        params["extractor_conv_layer_config"] = [tuple(c) for c in params["extractor_conv_layer_config"]]
        return cls(wav2vec2_model(**params), params, d["labels"], d.get("bundle", ""), d["sample_rate"],
                   d["normalize_waveform"])

    def config_dict(self) -> dict:
        return {"name": self.name, "bundle": self.bundle, "params": self.params, "labels": list(self.labels),
                "sample_rate": self.sample_rate, "normalize_waveform": self.normalize_waveform}

    # ---- a merged export: torchaudio's own state dict plus what rebuilds the architecture
    def save_export(self, out_dir: Path, meta: dict) -> Tuple[Path, str]:
        """``wav2vec2_model.pt``: the state dict of torchaudio's ``Wav2Vec2Model`` (this backbone's keys are its
        keys); ``wav2vec2_config.json``: ``wav2vec2_model(**params)``'s arguments, the labels and the rest of
        :meth:`config_dict`, with ``meta``."""
        out_dir = Path(out_dir)
        weights, config = out_dir / "wav2vec2_model.pt", out_dir / "wav2vec2_config.json"
        atomic_torch_save({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, weights)
        atomic_write_text(config, json.dumps({**self.config_dict(), "meta": meta}, indent=2, default=str) + "\n")
        return out_dir, (f"torchaudio: model = torchaudio.models.wav2vec2_model(**json.load(open('{config}'))['params']); "
                         f"model.load_state_dict(torch.load('{weights}', weights_only=True)); labels in the same JSON")

    @classmethod
    def load_export(cls, path: Path) -> "Wav2Vec2CTC":
        path = Path(path)
        model = cls.from_config_dict(json.loads((path / "wav2vec2_config.json").read_text()))
        load_state_strict(model, torch.load(path / "wav2vec2_model.pt", map_location="cpu", weights_only=True),
                          str(path / "wav2vec2_model.pt"))
        return model.eval()

    # ---- featurizer (cached once per search)
    def featurizer(self) -> nn.Module:
        return Wav2Vec2Featurizer(self.feature_extractor, self.normalize_waveform).eval()

    def featurizer_key(self) -> dict:
        return {"featurizer": "wav2vec2-conv", "bundle": self.bundle, "sample_rate": self.sample_rate,
                "normalize_waveform": self.normalize_waveform, "weights_sha256": weights_sha256(self.feature_extractor)}

    # ---- blocks
    def adaptable_blocks(self) -> List[BlockInfo]:
        # The width comes from the projection, not the layers: a layer may be wrapped by an adapter.
        width = self.encoder.feature_projection.projection.out_features
        out = []
        for i in range(len(self.encoder.transformer.layers)):
            p = f"encoder.transformer.layers.{i}"
            att, ff = f"{p}.attention", f"{p}.feed_forward"
            # torchaudio's attention calls separate q/k/v/out nn.Linear layers; each is a LoRA target.
            linears = {"q": f"{att}.q_proj", "k": f"{att}.k_proj", "v": f"{att}.v_proj", "out": f"{att}.out_proj",
                       "ffn_in": f"{ff}.intermediate_dense", "ffn_out": f"{ff}.output_dense"}
            out.append(BlockInfo(i, p, width, {"post": p, "mha": att, "ffn": ff},
                                 parallel={"post": "x", "mha": "x", "ffn": "x"}, linears=linears))
        return out

    @staticmethod
    def _attention_mask(x: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Padded-frame mask [B, T] and torchaudio's additive attention mask [B, 1, T, T]."""
        b, t, _ = x.shape
        pad = torch.arange(t, device=x.device).expand(b, t) >= lengths.to(x.device)[:, None]
        return pad, (-10000.0 * pad[:, None, None, :].to(x.dtype)).expand(b, 1, t, t)

    def _run_layers(self, x: torch.Tensor, lengths: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        _, mask = self._attention_mask(x, lengths)
        # LayerDrop (a pretraining regulariser) is left out: the base always runs in eval mode here.
        # The position bias is WavLM-only and None for these models.
        for layer in self.encoder.transformer.layers[start:stop]:
            x, _ = layer(x, mask)
        return x

    def encode_prefix(self, inputs: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        # Mirrors torchaudio's Encoder._preprocess + Transformer._preprocess (tests compare the two).
        x = self.encoder.feature_projection(inputs)
        pad, _ = self._attention_mask(x, lengths)
        x = x.masked_fill(pad[..., None], 0.0)
        tr = self.encoder.transformer
        x = x + tr.pos_conv_embed(x)
        if tr.layer_norm_first:
            x = tr.layer_norm(x)
        x = tr.dropout(x)
        return self._run_layers(x, lengths, 0, k), lengths

    def forward_from(self, hidden: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        tr = self.encoder.transformer
        x = self._run_layers(hidden, lengths, k, len(tr.layers))
        if not tr.layer_norm_first:
            x = tr.layer_norm(x)
        return self.aux(x).float().log_softmax(dim=-1), lengths
