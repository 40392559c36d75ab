"""Hugging Face CTC models (``AutoModelForCTC``: wav2vec2, HuBERT, WavLM, data2vec-audio) as a backbone.

The transformers model is kept whole and unmodified (``self.hf``); this file only splits its
forward pass where the project needs it. The frozen convolutional feature extractor is the
featurizer (what the feature cache stores, one utterance at a time); the backbone proper is the
feature projection, the positional convolution, the Transformer layers (the adaptable blocks:
``post`` the layer's output, ``mha`` its attention, ``ffn`` its feed-forward) and the CTC head.

Two things of the checkpoint carry over exactly. The processor's waveform normalisation
(``do_normalize`` in ``preprocessor_config.json``: zero mean, unit variance per utterance) runs in
the featurizer. The vocabulary is the checkpoint's own (``vocab.json``): its pad token is the CTC
blank wherever it sits, and the head's log-probabilities are re-ordered blank first (token ``i`` of
the tokenizer at ``i + 1``), which is what ``models/ctc.py`` expects; manifest texts map onto the
vocabulary's case and word delimiter (``|``).

Padded batches in the encoder get an attention mask and zeroed padded frames, as transformers
does when given ``attention_mask``; group-norm extractors (base models) never see padding at
all, since the featurizer runs per utterance.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from raysearch_adapters.errors import UserError
from raysearch_adapters.models import hf
from raysearch_adapters.models.base import BlockInfo, FusedWeight, PerUtterance, weights_sha256
from raysearch_adapters.models.ctc import CTCBackbone, frame_mask
from raysearch_adapters.models.tokenizer import CharTokenizer

# model_type -> what its transformers layers look like: "bidirectional" (the 4-D mask of
# transformers.masking_utils, wav2vec2 style) or "wavlm" (the [B, T] mask and a relative position bias).
MODEL_TYPES = {"wav2vec2": "bidirectional", "hubert": "bidirectional", "data2vec-audio": "bidirectional",
               "wavlm": "wavlm"}
# LoRA target name -> the projection of the layer's attention (the shared names of BlockInfo.linears)
_ATTENTION_LINEARS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "out_proj"}


class HFCTCFeaturizer(PerUtterance):
    """Waveforms [B, S] + lengths -> conv features [B, T, C] + lengths, one utterance at a time.

    Per utterance because a group-norm extractor normalises each channel over the whole time
    axis (an utterance's features would depend on its batch-mates' lengths), and so does the
    processor's ``do_normalize``."""

    def __init__(self, extractor: nn.Module, do_normalize: bool):
        super().__init__()
        self.extractor = extractor
        self.do_normalize = do_normalize

    def one(self, wave: torch.Tensor) -> torch.Tensor:
        wave = wave.float()
        if self.do_normalize:  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
            wave = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)
        return self.extractor(wave)[0].transpose(0, 1)


def _unwrapped(module: nn.Module) -> nn.Module:
    """The module an adapter wrapper holds (the module itself when it is not wrapped)."""
    return getattr(module, "base_layer", module)


class HFCTC(CTCBackbone):
    """A transformers ``*ForCTC`` model of one of :data:`MODEL_TYPES`, with the checkpoint's vocabulary."""

    name = "hf_ctc"
    peft_root = "hf"

    def __init__(self, model: nn.Module, vocab: dict, blank: int, space: str, special: List[str],
                 do_normalize: bool, sample_rate: int = 16000, processors: Sequence = ()):
        """``processors``: the checkpoint's tokenizer and feature extractor (``save_pretrained`` objects), which
        a merged export writes beside the model."""
        super().__init__()
        cfg = model.config
        if cfg.model_type not in MODEL_TYPES:
            raise UserError(f"model.checkpoint: a {cfg.model_type!r} model; model.name=hf_ctc takes "
                            f"{', '.join(MODEL_TYPES)} CTC checkpoints")
        if getattr(cfg, "add_adapter", False):
            raise UserError("model.checkpoint: the model has a convolutional adapter after its encoder "
                            "(config add_adapter=true); model.name=hf_ctc takes CTC models without one")
        self.hf = model
        self.prefix = model.base_model_prefix  # the attribute holding the encoder: wav2vec2, hubert, ...
        self.kind = MODEL_TYPES[cfg.model_type]
        self.stable = bool(getattr(cfg, "do_stable_layer_norm", False))  # layer norm after the layers, not before
        num_outputs = model.lm_head.out_features
        if not 0 <= blank < num_outputs:
            raise UserError(f"model.checkpoint: the pad token (the CTC blank) has id {blank}, but the CTC head has "
                            f"{num_outputs} outputs")
        order = [blank] + [i for i in range(num_outputs) if i != blank]
        by_id = {i: token for token, i in vocab.items()}
        self.labels = [by_id.get(i, f"<unused-{i}>") for i in order[1:]]
        self.blank = int(blank)
        self.space = space
        self.special = sorted({t for t in special if t != space} | {t for t in self.labels if t.startswith("<unused-")})
        self.do_normalize = bool(do_normalize)
        self.sample_rate = int(sample_rate)
        # Output i of the head, read in this order, puts the blank at 0 and token i of the tokenizer at i + 1.
        self.register_buffer("output_order", torch.tensor(order), persistent=False)
        self.tokenizer = CharTokenizer(self.labels, space=space, ignore=self.special)
        self.input_dim = cfg.conv_dim[-1]
        self.processors = list(processors)

    # ---- construction
    @classmethod
    def from_model_config(cls, cfg) -> "HFCTC":
        return cls.from_pretrained(cfg.checkpoint)

    @classmethod
    def weights_key(cls, cfg) -> dict:
        return {"files": hf.files_key(cfg.checkpoint)}

    @classmethod
    def from_pretrained(cls, checkpoint: str) -> "HFCTC":
        """A folder written by ``save_pretrained`` or a hub id (its config, weights, tokenizer and processor)."""
        from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer, Wav2Vec2FeatureExtractor

        src = hf.source(checkpoint, cls.name)
        cfg = hf.config(src)
        if cfg.model_type not in MODEL_TYPES:
            raise UserError(f"model.checkpoint: {checkpoint} is a {cfg.model_type!r} model; model.name=hf_ctc takes "
                            f"{', '.join(MODEL_TYPES)} CTC checkpoints (model.name=whisper takes Whisper)")
        architectures = list(getattr(cfg, "architectures", None) or [])
        if architectures and not any(a.endswith("ForCTC") for a in architectures):
            raise UserError(f"model.checkpoint: {checkpoint} has no CTC head (architectures: {', '.join(architectures)}); "
                            "model.name=hf_ctc takes a model fine-tuned with CTC (*ForCTC)")
        tok = hf.load("tokenizer (vocab.json)", src, AutoTokenizer.from_pretrained)
        if not hasattr(tok, "word_delimiter_token") or tok.pad_token_id is None:
            raise UserError(f"model.checkpoint: {checkpoint}: its tokenizer ({type(tok).__name__}) is not a CTC "
                            "character vocabulary with a pad token (Wav2Vec2CTCTokenizer, vocab.json)")
        if cfg.pad_token_id is not None and cfg.pad_token_id != tok.pad_token_id:
            raise UserError(f"model.checkpoint: {checkpoint}: the config's pad_token_id {cfg.pad_token_id} (the CTC "
                            f"blank) is not the tokenizer's pad token id {tok.pad_token_id}")
        try:
            fe = AutoFeatureExtractor.from_pretrained(src, local_files_only=True)
        except (OSError, ValueError):
            fe = Wav2Vec2FeatureExtractor()  # no preprocessor_config.json: the defaults transformers would use
        model = hf.pretrained(AutoModelForCTC, src, cfg)
        return cls(model, tok.get_vocab(), tok.pad_token_id, tok.word_delimiter_token or " ",
                   list(tok.all_special_tokens), bool(getattr(fe, "do_normalize", True)), int(fe.sampling_rate),
                   processors=[tok, fe]).eval()

    def config_dict(self) -> dict:
        hf_cfg = {k: v for k, v in self.hf.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        return {"name": self.name, "model_type": self.hf.config.model_type, "hf_config": hf_cfg, "labels": self.labels,
                "blank": self.blank, "space": self.space, "special": self.special, "do_normalize": self.do_normalize,
                "sample_rate": self.sample_rate}

    # ---- a merged export: the transformers folder itself
    def save_export(self, out_dir: Path, meta: dict) -> Tuple[Path, str]:
        """``hf_model/``: ``save_pretrained`` of the merged model with the checkpoint's tokenizer and feature
        extractor, an ordinary Hugging Face folder."""
        folder = hf.save_export(self.hf, self.processors, out_dir, {}, meta)
        return folder, (f"transformers: AutoModelForCTC.from_pretrained('{folder}') and AutoProcessor.from_pretrained("
                        f"'{folder}'); or raysearch-adapters evaluate model.name={self.name} model.checkpoint={folder} "
                        "--manifest M")

    @classmethod
    def load_export(cls, path: Path) -> "HFCTC":
        return cls.from_pretrained(str(path), **hf.export_settings(path))

    # ---- featurizer (cached once per search)
    @property
    def _base(self) -> nn.Module:
        return getattr(self.hf, self.prefix)

    def featurizer(self) -> nn.Module:
        return HFCTCFeaturizer(self._base.feature_extractor, self.do_normalize).eval()

    def featurizer_key(self) -> dict:
        return {"featurizer": "hf-ctc-conv", "model_type": self.hf.config.model_type, "sample_rate": self.sample_rate,
                "do_normalize": self.do_normalize, "weights_sha256": weights_sha256(self._base.feature_extractor)}

    # ---- blocks
    def adaptable_blocks(self) -> List[BlockInfo]:
        width = self.hf.config.hidden_size
        out = []
        for i in range(len(self._base.encoder.layers)):
            p = f"hf.{self.prefix}.encoder.layers.{i}"
            att, ff = f"{p}.attention", f"{p}.feed_forward"
            if self.kind == "wavlm":  # its attention hands q/k/v/out's weights to F.multi_head_attention_forward
                linears = {n: FusedWeight(att, f"{proj}.weight") for n, proj in _ATTENTION_LINEARS.items()}
            else:
                linears = {n: f"{att}.{proj}" for n, proj in _ATTENTION_LINEARS.items()}
            linears.update(ffn_in=f"{ff}.intermediate_dense", ffn_out=f"{ff}.output_dense")
            # The layer, its attention and its feed-forward each take the hidden states first.
            out.append(BlockInfo(i, p, width, {"post": p, "mha": att, "ffn": ff}, linears=linears,
                                 parallel={"post": "hidden_states", "mha": "hidden_states", "ffn": "hidden_states"}))
        return out

    def _masks(self, x: torch.Tensor, lengths: torch.Tensor) -> Tuple[Optional[torch.Tensor], object]:
        """(valid-frame mask [B, T] or None without padding, what the layers take as ``attention_mask``)."""
        if bool((lengths == x.shape[1]).all()):
            return None, None  # as transformers runs an unpadded input: no mask at all
        valid = frame_mask(lengths.to(x.device), x.shape[1])
        if self.kind == "wavlm":
            return valid, valid.long()
        from transformers.masking_utils import create_bidirectional_mask

        return valid, create_bidirectional_mask(config=self.hf.config, inputs_embeds=x, attention_mask=valid.long())

    def _run_layers(self, x: torch.Tensor, lengths: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        # LayerDrop (a pretraining regulariser) is left out: the base always runs in eval mode here.
        _, mask = self._masks(x, lengths)
        layers = self._base.encoder.layers
        if self.kind != "wavlm":
            for layer in layers[start:stop]:
                x = layer(x, attention_mask=mask)
            return x
        # WavLM: layer 0's attention computes the relative position bias the others reuse; from any
        # block it is the same function of the sequence length, so the split stays exact.
        b, t, _ = x.shape
        first = _unwrapped(_unwrapped(layers[0]).attention)
        bias = first.compute_bias(t, t).unsqueeze(0).repeat(b, 1, 1, 1).view(b * first.num_heads, t, t)
        for i in range(start, stop):
            x, bias = layers[i](x, attention_mask=mask, position_bias=bias, index=i)
        return x

    def _positions(self, x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        """The positional convolution(s) of ``x``; padded frames are zeroed between data2vec-audio's stacked
        convolutions too, so that each one sees zeros past an utterance's end, as it does alone (transformers
        zeroes them only once, before the first: its padded batches differ from the utterances alone)."""
        embed = self._base.encoder.pos_conv_embed
        stacked = getattr(embed, "layers", None)
        if valid is None or stacked is None:
            return embed(x)
        h = x.transpose(1, 2)
        for layer in stacked:
            h = layer(h).masked_fill(~valid[:, None, :], 0.0)
        return h.transpose(1, 2)

    def encode_prefix(self, inputs: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        # Mirrors the transformers model's forward (feature projection, then the encoder's input stage).
        projected = self._base.feature_projection(inputs)
        x = projected[0] if isinstance(projected, tuple) else projected
        valid, _ = self._masks(x, lengths)
        if valid is not None:
            x = x.masked_fill(~valid[..., None], 0.0)  # "make sure padded tokens output 0"
        encoder = self._base.encoder
        x = x + self._positions(x, valid)
        if not self.stable:
            x = encoder.layer_norm(x)
        x = encoder.dropout(x)
        return self._run_layers(x, lengths, 0, k), lengths

    def forward_from(self, hidden: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        encoder = self._base.encoder
        x = self._run_layers(hidden, lengths, k, len(encoder.layers))
        if self.stable:
            x = encoder.layer_norm(x)
        logits = self.hf.lm_head(self.hf.dropout(x))
        return F.log_softmax(logits.float(), dim=-1).index_select(-1, self.output_order), lengths
