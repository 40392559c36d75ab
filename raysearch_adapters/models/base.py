"""The one interface every backbone implements, and the view the train loop and evaluation use.

A backbone turns *cached inputs* (what the feature cache stores: log-mel features for the
Conformer, the frozen convolutional features for wav2vec2) into its own outputs, lists its
adaptable blocks so adapters can be injected without touching its code, and owns what
depends on its kind of output: the supervised loss, greedy decoding, and what a
distillation teacher stores and how a student is compared with it (CTC here in
``models/ctc.py``; an encoder-decoder defines its own). Everything past the frozen prefix
is expressed "from block k", so the same code serves the whole model (k = 0 on the
prefix of the inputs) and the frozen-prefix cache (k = the lowest adapted block).

Blocks form one or two stacks (``BlockInfo.stack``): CTC models have an encoder; an
encoder-decoder (Whisper) lists its encoder blocks first, then its decoder blocks, with global
indices. Only a prefix that is a fixed function of the cached inputs can be cached: decoder
blocks see the tokens, so :meth:`Backbone.prefix_block` says where the cache of a placement
starting at block k really starts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn


@dataclass(frozen=True)
class FusedWeight:
    """A linear map whose weight [out, in] is a parameter (or a row slice of one) that its module reads
    itself, instead of an ``nn.Linear`` it calls: ``nn.MultiheadAttention`` keeps q, k and v as the row
    thirds of one ``in_proj_weight`` [3D, D] and hands ``out_proj.weight`` to its kernel directly.
    LoRA wraps ``module`` and runs it with the updated weight."""

    module: str  # module path of the module that reads the parameter, e.g. "encoder.layers.0.mha.attn"
    weight: str  # the parameter's name inside ``module``, e.g. "in_proj_weight" or "out_proj.weight"
    rows: Optional[Tuple[int, int]] = None  # output rows [start, stop) of this map inside the weight; None: all


@dataclass(frozen=True)
class BlockInfo:
    """One adaptable block: its index, module path, residual width and what each adapter type can target.

    A backbone only declares; the adapters inject from the outside (``adapters.inject``):

    * ``positions`` (bottleneck adapters, serial): module paths whose output gets the adapter added;
    * ``parallel`` (parallel adapters): which of those positions a branch can sit beside, and the name of
      their module's input argument (the hidden states [.., width] the branch is fed);
    * ``linears`` (LoRA): the block's linear layers by name. Use the shared names where they fit (``q``,
      ``k``, ``v``, ``out`` for self-attention, ``ffn_in``, ``ffn_out`` for the feed-forward) so that a
      search space carries over from one backbone to another.
    """

    index: int
    name: str  # module path of the block inside the backbone, e.g. "encoder.layers.3"
    width: int  # width D of the tensor an adapter sees at every position of this block
    # position -> module path whose output (a tensor, or a tuple whose first item is the
    # tensor) gets the adapter added residually
    positions: Dict[str, str] = field(default_factory=dict)
    stack: str = "encoder"  # encoder | decoder: what a placement spec's stack prefix names
    # position (a key of `positions`) -> the name of its module's input argument: a parallel branch is fed the
    # first positional argument of the call, or this keyword argument when the block passes it by name
    parallel: Dict[str, str] = field(default_factory=dict)
    # LoRA target name -> the module path of an nn.Linear the block calls, or a FusedWeight
    linears: Dict[str, Union[str, FusedWeight]] = field(default_factory=dict)


def block_layout(blocks: List[BlockInfo]) -> List[Tuple[str, int]]:
    """``[(stack, number of blocks), ...]`` in block order (the ``Layout`` placement specs are read against)."""
    out: List[Tuple[str, int]] = []
    for b in blocks:
        if out and out[-1][0] == b.stack:
            out[-1] = (b.stack, out[-1][1] + 1)
        elif any(name == b.stack for name, _ in out):
            raise ValueError(f"block {b.index} ({b.name}): the blocks of stack {b.stack!r} are not contiguous")
        else:
            out.append((b.stack, 1))
    return out


def weights_sha256(module: nn.Module) -> str:
    """sha256 of a module's state (names and fp32 values): what a featurizer key names its weights by."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class PerUtterance(nn.Module):
    """A featurizer that runs on each utterance alone (:meth:`one`) and pads the results into a batch.

    For front ends whose output would depend on batch-mates otherwise: normalisation over time
    (group-norm conv extractors, a processor's waveform normalisation) or a window maximum
    (Whisper's log-mel); cached features must not depend on how they were batched."""

    def one(self, wave: torch.Tensor) -> torch.Tensor:
        """One utterance's samples [1, S] -> its features [T, F]."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feats = [self.one(wav[None, :n]) for wav, n in zip(waveforms, lengths.tolist())]
        out_lengths = torch.tensor([f.shape[0] for f in feats], device=waveforms.device)
        return nn.utils.rnn.pad_sequence(feats, batch_first=True), out_lengths


class Backbone(nn.Module):
    """Base class of backbones. Subclasses set ``tokenizer`` and implement the methods."""

    name: str = "backbone"
    sample_rate: int = 16000
    # The longest utterance (seconds) a manifest line may hold unless data.max_duration says otherwise: a bound
    # that keeps one utterance's activations (attention grows with its square) well within a GPU's memory.
    max_duration: float = 60.0
    tokenizer: "object"  # raysearch_adapters.models.tokenizer.Tokenizer
    # The attribute holding the Hugging Face transformers model that PEFT wraps (``PeftModel.from_pretrained(base,
    # folder)``): export also writes a LoRA winner as a PEFT adapter folder. "": a model PEFT does not load.
    peft_root: str = ""
    # Whether export converts the merged model with CTranslate2 and checks its transcripts (ctranslate2.models.Whisper).
    ctranslate2: bool = False
    # Whether an utterance's encode_prefix output is the same computation whatever its batch-mates: every input is
    # brought to one fixed shape first (Whisper's 30 s window), so the frozen-prefix cache can be built in batches
    # (checked bit for bit against one at a time on each machine: train/prefix.py). False where padding to the
    # longest utterance of a batch changes an utterance's convolutions, attention or normalisation.
    fixed_input_shape: bool = False

    # ---- what its registration (raysearch_adapters.backbones) asks of a backbone class
    @classmethod
    def from_model_config(cls, cfg) -> "Backbone":
        """The pretrained model the ``model`` section (``ModelConfig``) names."""
        raise NotImplementedError

    @classmethod
    def input_files(cls, cfg) -> List[str]:
        """Local files of the ``model`` section that every trial worker reads (a cluster's nodes must see them)."""
        return []

    @classmethod
    def weights_key(cls, cfg) -> dict:
        """What identifies the weights beyond the ``model`` section's values (a file's size and time, a folder's
        files), so that a changed file is never taken for a cached copy."""
        return {}

    @classmethod
    def evaluate_args(cls, cfg) -> str:
        """How ``raysearch-adapters evaluate`` names this model."""
        return f"model.name={cfg.name} model.checkpoint={cfg.checkpoint}"

    def featurizer(self) -> nn.Module:
        """Module mapping (waveform [B, S], lengths [B]) -> (inputs [B, T, F], lengths [B]).

        Its outputs are what the feature cache stores; it is frozen and deterministic."""
        raise NotImplementedError

    def featurizer_key(self) -> dict:
        """What identifies the featurizer's outputs (config, weights fingerprint) for the cache."""
        raise NotImplementedError

    def adaptable_blocks(self) -> List[BlockInfo]:
        """The ordered list of blocks adapters can go into."""
        raise NotImplementedError

    def config_dict(self) -> dict:
        """Everything needed to rebuild this backbone (stored in checkpoints)."""
        raise NotImplementedError

    def prefix_block(self, k: int) -> int:
        """Where the frozen-prefix cache of a placement whose lowest adapted block is ``k`` starts.

        The highest k' <= k whose prefix is a fixed function of the cached inputs: ``k`` itself
        for an encoder; an encoder-decoder's decoder blocks see the tokens, so for them it is the
        end of the encoder, and every decoder-only placement shares one cache."""
        return k

    def wer_text(self, text: str) -> str:
        """The text WER compares, applied to references and hypotheses alike (by ``train.evaluate``).

        References arrive as ``data.text.normalize_text`` of the manifest; a CTC model spells
        its output in those terms already (identity). A model that writes its own way
        (Whisper: "539", "5, 3, 9") maps both onto one canonical form."""
        return text

    # ---- a merged export (``raysearch-adapters export``): the backbone's own file format
    def save_export(self, out_dir: Path, meta: dict) -> Tuple[Path, str]:
        """Write this model (LoRA already merged into its weights) into ``out_dir`` in the backbone's own
        format; returns the file or folder written and a one-line note on how to load it."""
        raise NotImplementedError

    @classmethod
    def load_export(cls, path: Path) -> "Backbone":
        """The model :meth:`save_export` wrote at ``path`` (eval mode)."""
        raise NotImplementedError

    # ---- the frozen-prefix split: run blocks [0, k) once, reuse for blocks [k, n)
    def encode_prefix(self, inputs: torch.Tensor, lengths: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Everything before block ``k`` -> (hidden [B, T', D], lengths). Exact: the rest of the
        model on this output equals the whole model on ``inputs``."""
        raise NotImplementedError

    # ---- everything from block k on, on an encode_prefix(.., k) output
    def losses_from(self, hidden: torch.Tensor, lengths: torch.Tensor, k: int, texts: List[str]) -> torch.Tensor:
        """The supervised training loss of each utterance [B] (normalised per target token)."""
        raise NotImplementedError

    def transcribe_from(self, hidden: torch.Tensor, lengths: torch.Tensor, k: int) -> List[str]:
        """Greedy transcripts of the batch (WER is scored on :meth:`wer_text` of them)."""
        raise NotImplementedError

    def teacher_from(self, hidden: torch.Tensor, lengths: torch.Tensor, k: int) -> List[torch.Tensor]:
        """What the distillation teacher cache stores per utterance: a float tensor [T_i, C] each.

        Called on the base model (adapters disabled); :meth:`distill_from` compares the
        adapted model with it."""
        raise NotImplementedError

    def output_scores(self, row: torch.Tensor) -> torch.Tensor:
        """The scores in one :meth:`teacher_from` tensor, the part two models' outputs are compared on (export's
        largest output difference): all of it by default; token ids stored beside the scores are left out."""
        return row

    def distill_from(self, hidden: torch.Tensor, lengths: torch.Tensor, k: int, teacher: torch.Tensor,
                     teacher_lengths: torch.Tensor) -> torch.Tensor:
        """The distillation loss of each utterance [B]: how far this model's outputs are from the
        teacher's (padded [B, T, C] batch of :meth:`teacher_from` tensors); 0 where they agree."""
        raise NotImplementedError

    def step_terms_from(self, hidden: torch.Tensor, lengths: torch.Tensor, k: int, texts: List[str],
                        teacher: Optional[torch.Tensor] = None, teacher_lengths: Optional[torch.Tensor] = None
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """A training step's terms on one batch: rows ``[0, len(texts))`` are labelled (their supervised
        losses), the other rows are distillation inputs (their losses against ``teacher``); None without.

        This default runs the two parts apart; a backbone whose one forward serves both (CTC) overrides it
        and runs the model once per step."""
        n = len(texts)
        supervised = self.losses_from(hidden[:n, : int(lengths[:n].max())], lengths[:n], k, texts)
        if teacher is None:
            return supervised, None
        rest = lengths[n:]
        return supervised, self.distill_from(hidden[n:, : int(rest.max())], rest, k, teacher, teacher_lengths)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor):
        """The whole model on cached inputs (backbone-specific outputs)."""
        raise NotImplementedError


class BackboneView(nn.Module):
    """A backbone seen from block ``k`` on: what the train loop and evaluation call.

    With ``k=None`` its inputs are the cached features and it runs the whole model (the
    input stage included, e.g. under SpecAugment); with ``k`` an int its inputs are
    ``encode_prefix(features, lengths, k)`` outputs, e.g. from the frozen-prefix cache.
    Either way the same backbone code runs from the same block, so the base model and an
    adapted one are measured on one path (``train.evaluate``).

    Modes: ``train(True)`` sets only this wrapper's flag, ``eval()`` reaches the whole model.
    The frozen base must never enter training mode (dropout, BatchNorm statistics); the
    adapters' own modes belong to :meth:`AdapterHandle.train`.
    """

    def __init__(self, model: Backbone, k: Optional[int] = None):
        super().__init__()
        self.model = model
        self.k = k
        self.training = model.training

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def _hidden(self, x: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
        if self.k is None:
            return (*self.model.encode_prefix(x, lengths, 0), 0)
        return x, lengths, self.k

    def losses(self, x: torch.Tensor, lengths: torch.Tensor, texts: List[str]) -> torch.Tensor:
        """Per-utterance supervised losses [B]."""
        return self.model.losses_from(*self._hidden(x, lengths), texts)

    def transcribe(self, x: torch.Tensor, lengths: torch.Tensor) -> List[str]:
        """Greedy transcripts of the batch."""
        return self.model.transcribe_from(*self._hidden(x, lengths))

    def teacher(self, x: torch.Tensor, lengths: torch.Tensor) -> List[torch.Tensor]:
        """Per-utterance teacher outputs (see :meth:`Backbone.teacher_from`)."""
        return self.model.teacher_from(*self._hidden(x, lengths))

    def distill(self, x: torch.Tensor, lengths: torch.Tensor, teacher: torch.Tensor,
                teacher_lengths: torch.Tensor) -> torch.Tensor:
        """Per-utterance distillation losses [B]."""
        return self.model.distill_from(*self._hidden(x, lengths), teacher, teacher_lengths)

    def step_terms(self, x: torch.Tensor, lengths: torch.Tensor, texts: List[str],
                   teacher: Optional[torch.Tensor] = None, teacher_lengths: Optional[torch.Tensor] = None
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Supervised losses of the first ``len(texts)`` rows, distillation losses of the rest (see
        :meth:`Backbone.step_terms_from`)."""
        return self.model.step_terms_from(*self._hidden(x, lengths), texts, teacher, teacher_lengths)

    def train(self, mode: bool = True) -> "BackboneView":
        """Sets only this wrapper's flag, except that eval mode reaches the whole model."""
        self.training = mode
        if not mode:
            self.model.eval()
        return self


def as_view(model) -> BackboneView:
    """``model`` itself when it is a view, else the whole backbone as a view (k=None)."""
    return model if isinstance(model, BackboneView) else BackboneView(model, None)
