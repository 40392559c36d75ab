"""NVIDIA NeMo ASR models (a ``.nemo`` Conformer or FastConformer: CTC, RNNT/TDT, hybrid RNNT-CTC) as a backbone.

The NeMo model is wrapped, never changed: its own preprocessor (eval mode: no dither) is the
featurizer, its ``encoder.layers`` are the adaptable blocks, and its own loss modules (CTC, RNNT,
TDT) and decoding modules (greedy) are what :meth:`losses_from` and :meth:`transcribe_from` call.
Adapters go in through the project's one seam (``adapters.inject``) at module paths of the
unmodified model, e.g. ``asr.encoder.layers.3`` (``post``: the layer's output, where NeMo's own
``LinearAdapter`` sits), ``asr.encoder.layers.3.self_attn`` (``mha``) and
``asr.encoder.layers.3.feed_forward2`` (``ffn``).

The frozen-prefix split follows ``ConformerEncoder.forward_internal`` in eval mode without a
streaming cache: pre-encode (subsampling, which masks padded frames), the positional encoding,
the masks from the lengths, ``layers[:k]`` (with the time reduction where the model has one);
masks and the relative positional embedding depend only on the lengths and the number of
frames, so blocks ``[k, n)`` are recomputed exactly from a prefix output. Padded frames never
reach a valid frame (masked subsampling, masked attention, the convolution module zeroes
padding), so an utterance's outputs do not depend on its batch-mates.

Distillation (label-free, to the base = the same model with adapters disabled):

* CTC head: the whole per-frame posterior (NeMo's blank is the last index; the KL does not care).
* RNNT/TDT head: along the teacher's own greedy path. The teacher (base) decodes the utterance
  greedily with NeMo's decoding; its tokens and their frames give a monotone path through the
  transducer lattice: at each frame t the nodes (t, u) of the tokens emitted there, then the
  node where it moves on (t, u(t)). At each node the teacher's joint distribution over tokens is
  stored as its top ``RNNT_TEACHER_TOPK`` entries plus the remaining mass (all of them when the
  vocabulary is no larger), and for TDT its whole distribution over durations. The student's joint
  is computed at the same nodes with the teacher's tokens as the prediction network's history, and
  the loss is the mean KL over nodes. Zero when the student equals the teacher; if the student's
  distributions equal the teacher's along the path, its greedy transcript is the teacher's.

Over 600 lines on purpose: one backbone serving three decoders (CTC, RNNT, TDT) whose restore, prefix split,
losses, decoding and distillation lattice share the same NeMo internals; split, each part would import the
others' private helpers.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import tarfile
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from raysearch_adapters.config import NEMO_HEADS as HEADS
from raysearch_adapters.data.text import normalize_text
from raysearch_adapters.errors import UserError, first_line
from raysearch_adapters.fileio import atomic_write, atomic_write_text
from raysearch_adapters.models.base import Backbone, BlockInfo
from raysearch_adapters.models.checkpoint import file_key
from raysearch_adapters.models.ctc import frame_kl
from raysearch_adapters.models.tokenizer import Tokenizer

# Model classes this backbone adapts (by class name, as a .nemo's config names them) and their kind.
SUPPORTED_CLASSES = {"EncDecCTCModel": "ctc", "EncDecCTCModelBPE": "ctc", "EncDecRNNTModel": "rnnt",
                     "EncDecRNNTBPEModel": "rnnt", "EncDecHybridRNNTCTCModel": "hybrid",
                     "EncDecHybridRNNTCTCBPEModel": "hybrid"}
SUPPORTED_ENCODERS = ("ConformerEncoder", "ConformerEncoderAdapter")
EXPORT_FILE = "model.nemo"  # a merged LoRA winner (save_export)
# Teacher entries kept per RNNT lattice node (plus the remaining mass); vocabularies up to this size are kept whole.
RNNT_TEACHER_TOPK = 64


class NemoModelError(UserError):
    """A .nemo file or pretrained name that cannot be adapted, named with what was found and what is allowed."""


def _class_name(target: str) -> str:
    return str(target).rsplit(".", 1)[-1]


def read_nemo_config(path: Path) -> dict:
    """The model config inside a ``.nemo`` archive, read without restoring the model."""
    try:
        with tarfile.open(path, "r:*") as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("model_config.yaml")), None)
            if member is None:
                raise NemoModelError(f"model.checkpoint: {path}: not a .nemo file (the archive holds no "
                                     "model_config.yaml); expected a model saved by NeMo's save_to()")
            cfg = yaml.safe_load(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, yaml.YAMLError) as e:
        raise NemoModelError(f"model.checkpoint: {path}: not a readable .nemo file ({type(e).__name__}: "
                             f"{first_line(e)}); expected a model saved by NeMo's "
                             "save_to() (a tar archive)") from None
    if not isinstance(cfg, dict):
        raise NemoModelError(f"model.checkpoint: {path}: its model_config.yaml is not a mapping")
    return cfg


def check_supported(cfg: dict, where: str) -> str:
    """The kind (ctc | rnnt | hybrid) of a NeMo model config this backbone supports, else a NemoModelError."""
    cls = _class_name(cfg.get("target", ""))
    if cls not in SUPPORTED_CLASSES:
        raise NemoModelError(f"model.checkpoint: {where} is a NeMo {cls or 'model without a target class'}; "
                             f"supported: {', '.join(SUPPORTED_CLASSES)} (Conformer/FastConformer encoders)")
    encoder = _class_name((cfg.get("encoder") or {}).get("_target_", ""))
    if encoder not in SUPPORTED_ENCODERS:
        raise NemoModelError(f"model.checkpoint: {where} ({cls}) has the encoder {encoder or 'none'}; supported: "
                             f"{', '.join(SUPPORTED_ENCODERS)} (Conformer and FastConformer)")
    return SUPPORTED_CLASSES[cls]


def _require_nemo() -> None:
    try:
        import nemo.collections.asr  # noqa: F401  (heavy: imported only when a NeMo model is used)
    except ImportError as e:
        raise NemoModelError(f"model.name=nemo needs NVIDIA NeMo ({e}); install the extra: "
                             "pip install 'raysearch-adapters[nemo]' (nemo_toolkit[asr]==3.0.0)") from None


@contextlib.contextmanager
def _quiet_nemo() -> Iterator[None]:
    """NeMo's INFO and WARNING logs (hundreds of lines per restore) held back; errors still show."""
    from nemo.utils import logging as nemo_logging

    with nemo_logging.temp_verbosity(nemo_logging.ERROR):
        yield


def restore_nemo(checkpoint: str, override_config=None):
    """The NeMo ASR model of a ``.nemo`` file or a pretrained name (downloaded by NeMo), on the CPU, in eval mode.

    ``override_config``: a model config restored instead of the file's own (NeMo's ``override_config_path``)."""
    path = Path(checkpoint).expanduser()
    _require_nemo()
    if path.is_file():
        kind_cfg = read_nemo_config(path)
        check_supported(kind_cfg, str(path))
        from nemo.collections.asr import models as nemo_models

        cls = getattr(nemo_models, _class_name(kind_cfg["target"]))
        try:
            with _quiet_nemo():
                model = cls.restore_from(str(path), map_location="cpu", override_config_path=override_config)
        except Exception as e:  # a damaged archive member, weights that do not fit the config
            raise NemoModelError(f"model.checkpoint: {path}: NeMo cannot restore it ({type(e).__name__}: "
                                 f"{first_line(e)})") from None
        return model.eval()
    if path.suffix == ".nemo" or "/" in checkpoint or checkpoint.startswith("."):
        raise NemoModelError(f"model.checkpoint: {path}: no such .nemo file; give a .nemo file or a NeMo "
                             "pretrained model name (e.g. stt_en_conformer_ctc_small)")
    from nemo.collections.asr.models import ASRModel

    try:
        with _quiet_nemo():
            model = ASRModel.from_pretrained(model_name=checkpoint, map_location="cpu",
                                             override_config_path=override_config)
    except Exception as e:  # offline, an unknown name, a hub error
        raise NemoModelError(f"model.checkpoint: {checkpoint!r} is not a file, and NeMo could not get the pretrained "
                             f"model of that name ({type(e).__name__}: {first_line(e)[:200]}); NeMo downloads pretrained "
                             "models from NGC / Hugging Face, so this needs internet (or NeMo's cache); offline, "
                             "give a .nemo file") from None
    check_supported({"target": type(model).__name__, "encoder": {"_target_": type(model.encoder).__name__}},
                    repr(checkpoint))
    return model.eval()


# --------------------------------------------------------------------------- tokenizer


class NemoTokenizer(Tokenizer):
    """The NeMo model's own tokenizer (SentencePiece/WordPiece, or the characters of a char model).

    Normalised text (lower case a-z, apostrophe, space) is put in the model's case first: upper case
    when its vocabulary has upper-case letters only, else as it is (a cased model then learns
    lower-case targets; its hypotheses are normalised before WER either way)."""

    def __init__(self, asr):
        self.subword = getattr(asr, "tokenizer", None) is not None
        if self.subword:
            self.tk = asr.tokenizer
            self.vocab_size = int(self.tk.vocab_size)
            pieces = [self.tk.ids_to_tokens([i])[0] for i in range(self.vocab_size)]
        else:
            head = asr.decoder if hasattr(asr.decoder, "vocabulary") else asr.joint
            pieces = [str(c) for c in head.vocabulary]
            self.vocab_size = len(pieces)
            self._labels = pieces
            self._index = {c: i for i, c in enumerate(pieces)}
        # special pieces (<unk>, [PAD], ...) say nothing about the model's case
        letters = set("".join(p for p in pieces if not (p[:1], p[-1:]) in (("<", ">"), ("[", "]"))))
        lower = any(c in letters for c in "abcdefghijklmnopqrstuvwxyz")
        upper = any(c in letters for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        self.case = "upper" if upper and not lower else "lower"
        self._representable: Dict[str, bool] = {" ": self.subword or " " in getattr(self, "_index", {})}

    def _cased(self, text: str) -> str:
        return text.upper() if self.case == "upper" else text

    def encode(self, text: str) -> List[int]:
        text = self._cased(text)
        if self.subword:
            return list(self.tk.text_to_ids(text))
        return [self._index[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        if self.subword:
            return normalize_text(self.tk.ids_to_text(list(ids)))
        return normalize_text("".join(self._labels[i] for i in ids))

    def _can_encode(self, ch: str) -> bool:
        if ch not in self._representable:
            cased = self._cased(ch)
            if self.subword:
                ids = list(self.tk.text_to_ids(cased))
                unk = getattr(self.tk, "unk_id", None)
                self._representable[ch] = bool(ids) and (unk is None or unk not in ids)
            else:
                self._representable[ch] = cased in self._index
        return self._representable[ch]

    def unsupported_chars(self, text: str) -> set[str]:
        return {c for c in set(text) if not self._can_encode(c)}


# --------------------------------------------------------------------------- featurizer


class NemoFeaturizer(nn.Module):
    """Waveforms [B, S] + lengths -> the model's own features [B, T, F] + lengths, one utterance at a time.

    The NeMo preprocessor in eval mode (no dither, no narrow-band augmentation); per utterance so that
    normalisation over time never sees another utterance's padding. Frames past the length (the
    preprocessor's ``pad_to`` padding) are dropped: the encoder masks them anyway."""

    def __init__(self, preprocessor: nn.Module):
        super().__init__()
        self.preprocessor = preprocessor

    @torch.no_grad()
    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feats = []
        for wav, n in zip(waveforms, lengths.tolist()):
            x, length = self.preprocessor(input_signal=wav[None, :n].float(),
                                          length=torch.tensor([n], device=wav.device))
            feats.append(x[0, :, : int(length[0])].transpose(0, 1))
        out_lengths = torch.tensor([f.shape[0] for f in feats], device=waveforms.device)
        return nn.utils.rnn.pad_sequence(feats, batch_first=True), out_lengths


def _state_sha256(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        v = t.detach().cpu().contiguous()
        h.update(f"{name}:{v.dtype}:{tuple(v.shape)};".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def _plain_cfg(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=False)


# --------------------------------------------------------------------------- the backbone


class NemoASR(Backbone):
    """A NeMo Conformer/FastConformer ASR model (CTC, RNNT/TDT or hybrid) seen through the backbone interface.

    ``head`` chooses the decoder a hybrid model is trained and decoded with (``rnnt`` or ``ctc``;
    ``auto``: the model's own kind, RNNT for a hybrid)."""

    name = "nemo"

    def __init__(self, asr, head: str = "auto", source: str = ""):
        super().__init__()
        kind = check_supported({"target": type(asr).__name__, "encoder": {"_target_": type(asr.encoder).__name__}},
                               source or type(asr).__name__)
        if head not in HEADS:
            raise NemoModelError(f"model.nemo.head: got {head!r}; allowed: {', '.join(HEADS)}")
        allowed = {"ctc": ("ctc",), "rnnt": ("rnnt",), "hybrid": ("rnnt", "ctc")}[kind]
        resolved = allowed[0] if head == "auto" else head
        if resolved not in allowed:
            raise NemoModelError(f"model.nemo.head: got {head!r}, but {source or 'the model'} ({type(asr).__name__}) "
                                 f"has no {head} decoder; allowed: auto, {', '.join(allowed)}")
        self.asr = asr.eval()
        self.source = source
        self.kind = kind
        self.head = resolved
        self.is_tdt = resolved == "rnnt" and int(getattr(asr.joint, "num_extra_outputs", 0)) > 0
        self.sample_rate = int(asr.cfg.get("sample_rate", None) or asr.preprocessor._sample_rate)
        self.tokenizer = NemoTokenizer(asr)
        self._use_greedy_decoding()
        if resolved == "ctc":
            from nemo.collections.asr.losses.ctc import CTCLoss

            # NeMo's own CTC loss (blank = the last index), per utterance; the model's own instance may
            # reduce over the batch.
            self._ctc_per_utt = CTCLoss(num_classes=self._ctc_decoder.num_classes_with_blank - 1,
                                        zero_infinity=True, reduction="none")

    # ---- construction
    @classmethod
    def from_model_config(cls, cfg) -> "NemoASR":
        return cls.load(cfg.checkpoint, cfg.nemo.head)

    @classmethod
    def input_files(cls, cfg) -> List[str]:
        return [cfg.checkpoint] if cfg.checkpoint.endswith(".nemo") else []  # a pretrained name is no file

    @classmethod
    def weights_key(cls, cfg) -> dict:
        return file_key(Path(cfg.checkpoint))

    @classmethod
    def evaluate_args(cls, cfg) -> str:
        return f"model.name=nemo model.checkpoint={cfg.checkpoint} model.nemo.head={cfg.nemo.head}"

    @classmethod
    def load(cls, checkpoint: str, head: str = "auto") -> "NemoASR":
        """The backbone of a ``.nemo`` file or a NeMo pretrained model name (eval mode, CPU)."""
        return cls(restore_nemo(checkpoint), head, checkpoint)

    def _use_greedy_decoding(self) -> None:
        """Greedy decoding (the project measures greedy WER); a model whose config says beam is switched."""
        from omegaconf import open_dict

        if self.head == "ctc" and self.kind == "hybrid":
            cfg = copy.deepcopy(self.asr.cfg.aux_ctc.decoding)
        else:
            cfg = copy.deepcopy(self.asr.cfg.decoding)
        if str(cfg.get("strategy", "greedy")).startswith("greedy"):
            return
        with open_dict(cfg):
            cfg.strategy = "greedy_batch"
        with _quiet_nemo():
            if self.kind == "hybrid":
                self.asr.change_decoding_strategy(decoding_cfg=cfg, decoder_type=self.head, verbose=False)
            else:
                self.asr.change_decoding_strategy(decoding_cfg=cfg, verbose=False)

    def __deepcopy__(self, memo):
        # NeMo wraps some bound methods of a model instance (training_step: telemetry) in wrapt proxies,
        # which deepcopy refuses; they are not state, and the copy uses the class's own methods.
        proxies = {k: v for k, v in vars(self.asr).items() if hasattr(v, "__wrapped__") and not isinstance(v, nn.Module)}
        for k in proxies:
            del self.asr.__dict__[k]
        try:
            new = self.__class__.__new__(self.__class__)
            memo[id(self)] = new
            new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        finally:
            self.asr.__dict__.update(proxies)
        return new

    # ---- what the caches key on
    @property
    def _ctc_decoder(self) -> nn.Module:
        return self.asr.ctc_decoder if self.kind == "hybrid" else self.asr.decoder

    @property
    def _ctc_decoding(self):
        return self.asr.ctc_decoding if self.kind == "hybrid" else self.asr.decoding

    def featurizer(self) -> nn.Module:
        return NemoFeaturizer(self.asr.preprocessor).eval()

    def featurizer_key(self) -> dict:
        return {"featurizer": "nemo-preprocessor", "config": _plain_cfg(self.asr.cfg.preprocessor),
                "sample_rate": self.sample_rate, "weights_sha256": _state_sha256(self.asr.preprocessor)}

    def config_dict(self) -> dict:
        # The model's config without its data and optimiser sections (where it was trained, not what it is).
        cfg = {k: v for k, v in _plain_cfg(self.asr.cfg).items()
               if k not in ("train_ds", "validation_ds", "test_ds", "optim")}
        return {"name": self.name, "class": type(self.asr).__name__, "head": self.head, "cfg": cfg}

    # ---- a merged export (``raysearch-adapters export`` of a LoRA winner): a .nemo file NeMo restores
    def save_export(self, out_dir: Path, meta: dict) -> Tuple[Path, str]:
        """``model.nemo`` (NeMo's ``save_to`` of the merged model) and ``model.json`` beside it (the head this
        backbone decodes with, and ``meta``)."""
        path = Path(out_dir) / EXPORT_FILE
        atomic_write(path, lambda tmp: self.asr.save_to(str(tmp)))
        atomic_write_text(path.with_suffix(".json"), json.dumps({"nemo_head": self.head, "meta": meta}, indent=2,
                                                                default=str) + "\n")
        return path, (f"NeMo: ASRModel.restore_from('{path}') (a plain model: the adapter is in its weights); or "
                      f"raysearch-adapters evaluate --model {path} model.nemo.head={self.head} --manifest M")

    @classmethod
    def load_export(cls, path: Path) -> "NemoASR":
        head = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))["nemo_head"]
        return cls.load(str(path), head)

    def adaptable_blocks(self) -> List[BlockInfo]:
        width = int(self.asr.encoder.d_model)
        out = []
        for i in range(len(self.asr.encoder.layers)):
            p = f"asr.encoder.layers.{i}"
            att, ff1, ff = f"{p}.self_attn", f"{p}.feed_forward1", f"{p}.feed_forward2"
            # The built-in Conformer's names: ffn is the second (macaron) feed-forward, ffn1 the first.
            linears = {"q": f"{att}.linear_q", "k": f"{att}.linear_k", "v": f"{att}.linear_v",
                       "out": f"{att}.linear_out", "ffn1_in": f"{ff1}.linear1", "ffn1_out": f"{ff1}.linear2",
                       "ffn_in": f"{ff}.linear1", "ffn_out": f"{ff}.linear2"}
            # ConformerLayer.forward calls its layer with x=, its attention with query=, its feed-forward with x.
            out.append(BlockInfo(i, p, width, {"post": p, "mha": att, "ffn": ff},
                                 parallel={"post": "x", "mha": "query", "ffn": "x"}, linears=linears))
        return out

    # ---- the encoder, split at block k (ConformerEncoder.forward_internal, eval mode, no streaming cache)
    def _masks(self, x: torch.Tensor, lengths: torch.Tensor):
        enc = self.asr.encoder
        needed = x.shape[1]
        have = enc.pos_enc.pe.shape[1]
        if (2 * needed - 1 if type(enc.pos_enc).__name__ == "RelPositionalEncoding" else needed) > have:
            # Growing the buffer would change the base model's fingerprint mid-search; NeMo sizes it from
            # the config's pos_emb_max_len.
            raise UserError(f"NeMo model: an utterance of {needed} encoder frames is longer than the model's "
                            f"positional encoding (encoder.pos_emb_max_len); split the audio into shorter segments")
        _, pos_emb = enc.pos_enc(x=x, cache_len=0)  # depends on the number of frames only
        pad_mask, att_mask = enc._create_masks(att_context_size=enc.att_context_size, padding_length=lengths,
                                               max_audio_length=x.shape[1], offset=None, device=x.device)
        return pos_emb, pad_mask, att_mask

    def _run_layers(self, x: torch.Tensor, lengths: torch.Tensor, start: int, stop: int):
        enc = self.asr.encoder
        pos_emb, pad_mask, att_mask = self._masks(x, lengths)
        for lth in range(start, stop):
            x = enc.layers[lth](x=x, att_mask=att_mask, pos_emb=pos_emb, pad_mask=pad_mask)
            if enc.reduction_position == lth:
                x, lengths = enc.reduction_subsampling(x=x, lengths=lengths)
                pos_emb, pad_mask, att_mask = self._masks(x, lengths)
        return x, lengths

    def encode_prefix(self, inputs: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        enc = self.asr.encoder
        lengths = lengths.to(inputs.device)
        if isinstance(enc.pre_encode, nn.Linear):
            x = enc.pre_encode(inputs)
        else:
            x, lengths = enc.pre_encode(x=inputs, lengths=lengths)
        lengths = lengths.to(torch.int64)
        x, _ = enc.pos_enc(x=x, cache_len=0)  # xscale and (eval: no) dropout
        return self._run_layers(x, lengths, 0, k)

    def encode_from(self, hidden: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Blocks [k, n) and the encoder's output stage -> (encoded [B, D, T], lengths): what NeMo's heads take."""
        enc = self.asr.encoder
        x, lengths = self._run_layers(hidden, lengths.to(hidden.device).to(torch.int64), k, len(enc.layers))
        if enc.out_proj is not None:
            x = enc.out_proj(x)
        if enc.reduction_position == -1:
            x, lengths = enc.reduction_subsampling(x=x, lengths=lengths)
        return x.transpose(1, 2), lengths.to(torch.int64)

    def forward_from(self, hidden: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """CTC head: (log-probs [B, T, V+1], blank last, lengths); RNNT head: (encoded [B, D, T], lengths)."""
        encoded, lengths = self.encode_from(hidden, lengths, k)
        if self.head == "ctc":
            return self._ctc_decoder(encoder_output=encoded).float(), lengths
        return encoded, lengths

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor):
        return self.forward_from(*self.encode_prefix(inputs, lengths, 0), 0)

    # ---- supervised loss and decoding
    def _targets(self, texts: Sequence[str], device) -> Tuple[torch.Tensor, torch.Tensor]:
        ids = [self.tokenizer.encode(t) for t in texts]
        lengths = torch.tensor([len(s) for s in ids], dtype=torch.long)
        out = torch.zeros(len(ids), max(1, int(lengths.max()) if len(ids) else 1), dtype=torch.long)
        for i, s in enumerate(ids):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return out.to(device), lengths.to(device)

    def losses_from(self, hidden, lengths, k, texts) -> torch.Tensor:
        targets, target_lengths = self._targets(texts, hidden.device)
        out, out_lengths = self.forward_from(hidden, lengths, k)
        if self.head == "ctc":
            losses = self._ctc_per_utt(log_probs=out, targets=targets, input_lengths=out_lengths,
                                       target_lengths=target_lengths)
        else:
            decoder_out, decoder_lengths, _ = self.asr.decoder(targets=targets, target_length=target_lengths)
            joint = self.asr.joint.joint(out.transpose(1, 2), decoder_out.transpose(1, 2))
            loss = self._transducer_loss(joint.device)
            reduction, loss.reduction = loss.reduction, None  # NeMo's own RNNT/TDT loss, one value per utterance
            try:
                losses = loss(log_probs=joint, targets=targets, input_lengths=out_lengths,
                              target_lengths=decoder_lengths)
            finally:
                loss.reduction = reduction
        return losses.float() / target_lengths.to(losses.device).clamp(min=1)

    def _transducer_loss(self, device: torch.device) -> nn.Module:
        """The model's own RNNT/TDT loss module (TDT: CUDA only, like every TDT loss NeMo has)."""
        if self.is_tdt and device.type != "cuda":
            raise UserError(f"NeMo TDT model {self.source}: NeMo's TDT losses run on CUDA only, so adapters of a TDT "
                            "model train on a GPU (resources.use_gpu=true); decoding and evaluation work on the CPU")
        return self.asr.loss

    def _rnnt_hypotheses(self, encoded: torch.Tensor, lengths: torch.Tensor):
        return self.asr.decoding.rnnt_decoder_predictions_tensor(encoder_output=encoded, encoded_lengths=lengths,
                                                                 return_hypotheses=True)

    def transcribe_from(self, hidden, lengths, k) -> List[str]:
        out, out_lengths = self.forward_from(hidden, lengths, k)
        if self.head == "ctc":
            hyps = self._ctc_decoding.ctc_decoder_predictions_tensor(decoder_outputs=out, decoder_lengths=out_lengths,
                                                                     return_hypotheses=False)
        else:
            hyps = self._rnnt_hypotheses(out, out_lengths)
        return [normalize_text(h.text if isinstance(h.text, str) else self.tokenizer.decode(h.y_sequence))
                for h in hyps]

    # ---- distillation
    def teacher_from(self, hidden, lengths, k) -> List[torch.Tensor]:
        out, out_lengths = self.forward_from(hidden, lengths, k)
        if self.head == "ctc":
            return [lp[:n].float() for lp, n in zip(out, out_lengths.tolist())]
        rows = []
        for b, hyp in enumerate(self._rnnt_hypotheses(out, out_lengths)):
            tokens = [int(t) for t in hyp.y_sequence]
            frames = [int(t) for t in hyp.timestamp] if len(tokens) else []
            nodes, labels = _greedy_path(tokens, frames, int(out_lengths[b]))
            logits = self._joint_at(out[b:b + 1], out_lengths[b:b + 1], [tokens], [nodes])[0]
            rows.append(self._teacher_rows(nodes, labels, logits))
        return rows

    def _token_count(self) -> int:
        """Outputs of the joint that are tokens (the blank included); TDT's duration outputs come after them."""
        joint = self.asr.joint
        return int(joint.num_classes_with_blank) - (int(joint.num_extra_outputs) if self.is_tdt else 0)

    def _topk(self) -> int:
        return min(RNNT_TEACHER_TOPK, self._token_count())

    def _joint_at(self, encoded: torch.Tensor, lengths: torch.Tensor, tokens: List[List[int]],
                  nodes: List[List[Tuple[int, int]]]) -> List[torch.Tensor]:
        """The joint's outputs [N_b, V+1(+durations)] at lattice nodes (t, u) of each utterance, the prediction
        network run on ``tokens`` (its history at node u: the first u tokens)."""
        targets = torch.zeros(len(tokens), max([1] + [len(t) for t in tokens]), dtype=torch.long)
        for i, t in enumerate(tokens):
            targets[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        target_lengths = torch.tensor([len(t) for t in tokens], dtype=torch.long)
        decoder_out, _, _ = self.asr.decoder(targets=targets.to(encoded.device),
                                             target_length=target_lengths.to(encoded.device))
        f, g = encoded.transpose(1, 2), decoder_out.transpose(1, 2)  # [B, T, D], [B, U+1, H]
        out = []
        for b, bn in enumerate(nodes):
            t = torch.tensor([n[0] for n in bn], dtype=torch.long, device=f.device)
            u = torch.tensor([n[1] for n in bn], dtype=torch.long, device=f.device)
            if len(bn) and int(t.max()) >= int(lengths[b]):
                raise ValueError(f"distillation: the teacher's path reaches frame {int(t.max())} but this model has "
                                 f"{int(lengths[b])} frames; the teacher cache does not belong to this model's inputs")
            # one joint evaluation per node: B = nodes, T = U = 1
            out.append(self.asr.joint.joint(f[b, t][:, None], g[b, u][:, None])[:, 0, 0].float())
        return out

    def _teacher_rows(self, nodes: List[Tuple[int, int]], labels: List[int], logits: torch.Tensor) -> torch.Tensor:
        v = self._token_count()
        logp = logits[:, :v].log_softmax(-1)
        top, idx = logp.topk(self._topk(), dim=-1)
        cols = [torch.tensor(nodes, dtype=torch.float32).reshape(-1, 2), torch.tensor(labels, dtype=torch.float32)[:, None],
                idx.float(), top]
        if self.is_tdt:
            cols.append(logits[:, v:].log_softmax(-1))
        return torch.cat([c.to(logp.device) for c in cols], dim=1)

    def distill_from(self, hidden, lengths, k, teacher, teacher_lengths) -> torch.Tensor:
        out, out_lengths = self.forward_from(hidden, lengths, k)
        if self.head == "ctc":
            return frame_kl(out, out_lengths, teacher, teacher_lengths)
        kk, v = self._topk(), self._token_count()
        nodes, tokens = [], []
        for b, n in enumerate(teacher_lengths.tolist()):
            rows = teacher[b, :n]
            nodes.append([(int(t), int(u)) for t, u in rows[:, :2].tolist()])
            labels = {int(u): int(y) for u, y in rows[:, 1:3].tolist() if y >= 0}
            tokens.append([labels[i] for i in range(len(labels))])
        student = self._joint_at(out, out_lengths, tokens, nodes)
        losses = []
        for b, n in enumerate(teacher_lengths.tolist()):
            rows = teacher[b, :n].to(out.device, torch.float32)
            logq = student[b][:, :v].log_softmax(-1)
            kl = _topk_kl(rows[:, 3 + kk: 3 + 2 * kk], logq, rows[:, 3: 3 + kk].long())
            if self.is_tdt:
                kl = kl + F.kl_div(student[b][:, v:].log_softmax(-1), rows[:, 3 + 2 * kk:], log_target=True,
                                   reduction="none").sum(-1)
            losses.append(kl.mean() if n else kl.sum())
        return torch.stack(losses)


def _greedy_path(tokens: List[int], frames: List[int], num_frames: int) -> Tuple[List[Tuple[int, int]], List[int]]:
    """Lattice nodes (t, u) along a greedy transducer hypothesis and the token emitted at each (-1: none).

    At each frame the nodes of the tokens emitted there, then the node where the decoder moves to the
    next frame (see the module docstring)."""
    nodes, labels, u = [], [], 0
    for t in range(num_frames):
        while u < len(tokens) and frames[u] <= t:
            nodes.append((t, u))
            labels.append(tokens[u])
            u += 1
        nodes.append((t, u))
        labels.append(-1)
    return nodes, labels


def _topk_kl(teacher_top: torch.Tensor, student_logp: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student) per node over the teacher's top-k tokens and one bucket for the rest [N].

    The student's rest is summed in log space (a logsumexp over the tokens outside the top k), not as
    1 - its top-k mass: when the student puts almost all its mass on the teacher's top k, that difference
    is rounding noise in fp32 (0, or a few 1e-8) while the teacher's rest is not, and the rest term, its
    value and its gradient, would be wrong by orders of magnitude."""
    q_top = student_logp.gather(-1, index)
    p_rest = (1.0 - teacher_top.exp().sum(-1)).clamp(min=0.0)
    log_q_rest = student_logp.scatter(-1, index, float("-inf")).logsumexp(-1)
    kl = (teacher_top.exp() * (teacher_top - q_top)).sum(-1)
    # p_rest = 0 (the teacher's top k holds all its mass): no rest term, whatever the student's rest
    return kl + torch.xlogy(p_rest, p_rest) - p_rest * log_q_rest.clamp(min=-1e4)
