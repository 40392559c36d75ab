"""Typed configuration: frozen dataclasses filled from YAML files and ``key=value`` overrides.

The dataclass defaults *are* the embedded demo (``conf/demo.yaml`` spells them out), so
``raysearch-adapters search`` with no arguments runs the demo. ``load_config`` merges the
defaults, then each YAML file, then the dotlist overrides (Hydra/NeMo style) through
``OmegaConf.structured``; unknown keys fail with the closest valid key, bad values fail
with the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from raysearch_adapters.backbones import BACKBONES, names as backbone_names
from raysearch_adapters.errors import UserError, first_line
from raysearch_adapters.halving import HalvingError, HalvingPlan, halving_plan
from raysearch_adapters.hparams import BY_NAME as HPARAM, HPARAMS, TYPE_PARAMS, applies_to, fields_of, value_problem
from raysearch_adapters.schedule import HORIZON_FREE, SCHEDULES
from raysearch_adapters.space_values import POSITIONS

# Where the demo corpus, feature cache and other generated data live unless told otherwise.
DEFAULT_HOME = "${oc.env:RAYSEARCH_ADAPTERS_HOME,'~/.cache/raysearch-adapters'}"


class ConfigError(UserError):
    """A bad configuration value or key; the message names the key, the value and what is allowed."""


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}: got {value!r}; {allowed}")


def _check_choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        _fail(key, value, f"allowed: {', '.join(map(str, allowed))}")


def _check_range(key: str, value: float, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        _fail(key, value, "must be a number")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else (f"< {high}" if high_open else f"<= {high}")
        _fail(key, value, "must be " + " and ".join(s for s in (lo, hi) if s))


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel front end; defaults follow NeMo's Conformer models."""

    sample_rate: int = 16000  # audio is resampled to this rate (Hz)
    n_mels: int = 80  # mel filterbank channels
    win_length_ms: float = 25.0  # analysis window
    hop_length_ms: float = 10.0  # frame shift
    n_fft: int = 512  # FFT size; must cover the window
    normalize: str = "per_feature"  # per_feature | none: per-utterance mean/variance per mel bin

    def validate(self, key: str) -> None:
        _check_range(f"{key}.sample_rate", self.sample_rate, 1000, 192000)
        _check_range(f"{key}.n_mels", self.n_mels, 1, 512)
        _check_range(f"{key}.hop_length_ms", self.hop_length_ms, 0, None, low_open=True)
        _check_range(f"{key}.win_length_ms", self.win_length_ms, self.hop_length_ms, None)
        win = int(round(self.sample_rate * self.win_length_ms / 1000))
        if self.n_fft < win:
            _fail(f"{key}.n_fft", self.n_fft, f"must be >= the window length in samples ({win})")
        _check_choice(f"{key}.normalize", self.normalize, ("per_feature", "none"))


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment at train time only (torchaudio Frequency/TimeMasking)."""

    freq_masks: int = 2  # number of frequency masks
    freq_width: int = 15  # max mel bins per frequency mask
    time_masks: int = 2  # number of time masks
    time_width: int = 40  # max frames per time mask

    def validate(self, key: str) -> None:
        for name in ("freq_masks", "freq_width", "time_masks", "time_width"):
            _check_range(f"{key}.{name}", getattr(self, name), 0, None)


@dataclass(frozen=True)
class DataConfig:
    """Manifests of both domains, the feature cache and batching.

    Manifests are NeMo JSON-lines (``.json``/``.jsonl``) or Parquet (``.parquet``). The
    defaults point at the embedded demo corpus, which is built on first use.
    """

    demo_dir: str = DEFAULT_HOME + "/demo"  # the embedded demo corpus (built on first use)
    new_train: str = "${data.demo_dir}/new/train.json"  # new-domain adapter training data
    new_dev: str = "${data.demo_dir}/new/dev.json"  # new-domain dev (selection)
    new_test: str = "${data.demo_dir}/new/test.json"  # new-domain test (final evaluation only)
    original_train: str = "${data.demo_dir}/original/train.json"  # original domain: pretraining, replay, distillation
    original_dev: str = "${data.demo_dir}/original/dev.json"  # degradation is measured here
    original_test: str = "${data.demo_dir}/original/test.json"  # final evaluation only
    # Labelled original-domain audio mixed into adapter training batches (train.replay); null = none.
    replay_manifest: Optional[str] = "${data.original_train}"
    # Original-domain audio the adapted model is distilled to the base on (train.distill_weight); its
    # transcripts are not used, so untranscribed audio works; null = none. Never the dev or test sets.
    distill_manifest: Optional[str] = "${data.original_train}"
    # At most this many hours of each of the two above are used: a fixed subset chosen by utterance
    # id (the same in every trial and process), so a large original corpus costs what a trial uses.
    # 0 = all of it.
    pool_hours: float = 0.5
    cache_dir: str = DEFAULT_HOME + "/features"  # feature cache; may live on shared storage
    on_error: str = "fail"  # fail | skip: what a bad manifest line does
    duration_tolerance: float = 0.25  # seconds a manifest duration may differ from the audio
    max_batch_seconds: float = 120.0  # batches are filled up to this much audio
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)

    def validate(self, key: str) -> None:
        _check_choice(f"{key}.on_error", self.on_error, ("fail", "skip"))
        _check_range(f"{key}.duration_tolerance", self.duration_tolerance, 0, None)
        _check_range(f"{key}.max_batch_seconds", self.max_batch_seconds, 0, None, low_open=True)
        _check_range(f"{key}.pool_hours", self.pool_hours, 0, None)
        self.frontend.validate(f"{key}.frontend")
        self.specaugment.validate(f"{key}.specaugment")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ConformerConfig:
    """Built-in Conformer-CTC size (used by ``pretrain``; a checkpoint carries its own)."""

    d_model: int = 128  # model width
    num_layers: int = 6  # Conformer blocks (the adaptable blocks)
    num_heads: int = 4  # attention heads; must divide d_model
    ffn_dim: int = 320  # feed-forward hidden width
    conv_kernel: int = 15  # depthwise convolution kernel (odd)
    subsampling_channels: int = 64  # channels of the convolutional subsampling
    subsampling_factor: int = 4  # 4 or 8: frames are 40 or 80 ms after subsampling
    dropout: float = 0.1  # dropout in the feed-forward, attention and convolution modules (pretrain)
    vocab_size: int = 128  # SentencePiece BPE vocabulary (without the CTC blank)

    def validate(self, key: str) -> None:
        for name in ("d_model", "num_layers", "num_heads", "ffn_dim", "subsampling_channels"):
            _check_range(f"{key}.{name}", getattr(self, name), 1, None)
        if self.d_model % self.num_heads:
            _fail(f"{key}.num_heads", self.num_heads, f"must divide d_model ({self.d_model})")
        if self.conv_kernel % 2 == 0 or self.conv_kernel < 1:
            _fail(f"{key}.conv_kernel", self.conv_kernel, "must be a positive odd number")
        _check_choice(f"{key}.subsampling_factor", self.subsampling_factor, (4, 8))
        _check_range(f"{key}.dropout", self.dropout, 0, 1, high_open=True)
        _check_range(f"{key}.vocab_size", self.vocab_size, 8, 32000)


NEMO_HEADS = ("auto", "rnnt", "ctc")


@dataclass(frozen=True)
class ModelConfig:
    """The base model: the shipped demo model, a checkpoint file, a torchaudio bundle, a Hugging Face model, or a
    NeMo model."""

    name: str = "conformer_ctc"  # conformer_ctc | wav2vec2 | hf_ctc | whisper | nemo (raysearch_adapters.backbones)
    # conformer_ctc: 'demo' (shipped) or a checkpoint path; hf_ctc, whisper: a folder written by
    # save_pretrained or a Hugging Face hub id (downloaded on first use where there is internet);
    # nemo: a .nemo file or a NeMo pretrained model name (downloaded by NeMo, e.g. stt_en_conformer_ctc_small)
    checkpoint: str = "demo"
    bundle: str = "WAV2VEC2_ASR_BASE_960H"  # wav2vec2: a torchaudio.pipelines ASR bundle
    language: str = "en"  # whisper: the language token of a multilingual checkpoint (English-only ones ignore it)
    max_new_tokens: int = 128  # whisper: greedy decoding stops at <|endoftext|> or after this many tokens
    # nemo: the decoder a hybrid RNNT-CTC model trains and decodes with (rnnt | ctc); auto: the model's own
    # (RNNT for a hybrid)
    nemo_head: str = "auto"
    conformer: ConformerConfig = field(default_factory=ConformerConfig)

    def validate(self, key: str) -> None:
        _check_choice(f"{key}.name", self.name, backbone_names())
        _check_choice(f"{key}.nemo_head", self.nemo_head, NEMO_HEADS)
        needs = BACKBONES[self.name].needs
        if needs and self.checkpoint in ("", "demo"):
            _fail(f"{key}.checkpoint", self.checkpoint, f"{key}.name={self.name} needs {needs}")
        if not self.language or not re.fullmatch(r"[A-Za-z-]+", self.language):
            _fail(f"{key}.language", self.language, "must be a language code such as en or de")
        _check_range(f"{key}.max_new_tokens", self.max_new_tokens, 1, 440)
        self.conformer.validate(f"{key}.conformer")


# --------------------------------------------------------------------------- adapters

ACTIVATIONS = ("swish", "relu", "gelu", "tanh")

@dataclass(frozen=True)
class AdapterConfig:
    """One adapter config: its type, the type's own fields (NeMo's LinearAdapter fields for a bottleneck,
    rank/alpha/targets for LoRA) and the placement.

    ``blocks`` is a block-set spec: ``all``, ``top:K``, ``bottom:K``, ``every:N``,
    ``window:A-B`` (blocks A..B-1) or an explicit list such as ``0,2,5``.
    """

    # bottleneck: norm -> down -> act -> up added to a position's output (serial);
    # parallel: the same bottleneck beside a position's module, fed its input, added to its output;
    # lora: a low-rank update (alpha / rank) * B @ A of linear layers of each block (B starts at zero).
    type: str = "bottleneck"
    dim: int = 32  # bottleneck width h (bottleneck, parallel)
    rank: int = 8  # LoRA rank r
    alpha: float = 16.0  # LoRA scale: the update is (alpha / rank) * B @ A
    # LoRA: which linear layers of each adapted block (the names its backbone lists; `all` = every one)
    targets: str = "q,v"
    activation: str = "swish"  # swish | relu | gelu | tanh
    norm_position: str = "pre"  # pre | post: LayerNorm before the down or after the up projection
    # bottleneck/parallel: dropout on the adapter output; lora: rank dropout (each of the r components of
    # the update is dropped with this probability in a training forward; see adapters/lora.py)
    dropout: float = 0.0
    stochastic_depth: float = 0.0  # probability of skipping the adapter branch in training (bottleneck, parallel)
    l2_lambda: float = 0.0  # L2 penalty on the adapter output (NeMo's residual-add strategy; bottleneck, parallel)
    blocks: str = "all"  # which blocks get adapters (block-set spec)
    positions: List[str] = field(default_factory=lambda: ["post"])  # where inside each block (bottleneck, parallel)

    def validate(self, key: str) -> None:
        _check_hparam_fields(self, key, "adapter")
        _check_choice(f"{key}.activation", self.activation, ACTIVATIONS)
        _check_choice(f"{key}.norm_position", self.norm_position, ("pre", "post"))
        if self.type == "lora":
            for name in ("stochastic_depth", "l2_lambda"):
                if getattr(self, name):
                    _fail(f"{key}.{name}", getattr(self, name), "applies to bottleneck and parallel adapters; type "
                          "lora has no branch output to skip or penalise: set 0")
        if not self.positions:
            _fail(f"{key}.positions", list(self.positions), f"needs at least one of {', '.join(POSITIONS)}")


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """Adapter training of one trial (plain PyTorch loop)."""

    steps: int = 800  # optimiser steps of a fixed-length trial (search.budget_steps=0); a budget decides otherwise
    lr: float = 3e-3  # peak learning rate (AdamW)
    # After a linear warm-up of warmup_steps: wsd (constant, then a linear cool-down to 0 over decay_steps,
    # started before the trial's last possible step or once it stops improving) | constant | inverse_sqrt
    # (no horizon: a trial the budget lets go on continues as if planned that long) | cosine (decays to 0 at
    # `steps`; fixed-length trials only).
    lr_schedule: str = "wsd"
    warmup_steps: int = 100  # steps of linear warm-up to lr, before lr_schedule takes over
    decay_steps: int = 400  # wsd: length of the cool-down (a multiple of eval_every)
    weight_decay: float = 0.0  # AdamW weight decay on adapter weights
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    max_batch_seconds: float = 10.0  # audio per training batch (new domain + replay)
    eval_every: int = 200  # steps between dev evaluations (each is one ASHA rung)
    specaugment: bool = False  # SpecAugment on labelled training batches (turns the prefix cache off)
    # Protecting the original domain (docs/protecting.md): `replay` is the share of each batch's audio taken
    # from data.replay_manifest (labelled, trained on with the same loss); `distill_weight` (lambda)
    # weighs KL(p_base || p_adapted) on `distill_seconds` of data.distill_manifest audio per step.
    replay: float = 0.0
    distill_weight: float = 0.0  # lambda of the distillation term (0 = off)
    distill_seconds: float = 5.0  # seconds of distillation audio per step
    # Frozen-prefix cache: the frozen blocks below a trial's lowest adapter run once per
    # utterance (cached on disk, shared by trials), and trials train and evaluate the top only.
    # Exact (same outputs); used by trials without SpecAugment, which changes the prefix's input.
    prefix_cache: bool = True
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    seed: int = 0  # seeds the adapters' init, batch order, replay and distillation draws, dropout

    def validate(self, key: str) -> None:
        _check_hparam_fields(self, key, "train")
        _check_choice(f"{key}.lr_schedule", self.lr_schedule, SCHEDULES)
        _check_range(f"{key}.decay_steps", self.decay_steps, 0, None)
        if self.lr_schedule == "wsd" and self.decay_steps % self.eval_every:
            _fail(f"{key}.decay_steps", self.decay_steps, f"must be a multiple of {key}.eval_every "
                  f"({self.eval_every}): a cool-down ends on an evaluation")
        _check_range(f"{key}.grad_clip", self.grad_clip, 0, None)
        _check_range(f"{key}.max_batch_seconds", self.max_batch_seconds, 0, None, low_open=True)
        _check_range(f"{key}.eval_every", self.eval_every, 1, None)
        _check_choice(f"{key}.precision", self.precision, ("auto", "fp32", "bf16"))
        _check_range(f"{key}.distill_seconds", self.distill_seconds, 0, None, low_open=True)


@dataclass(frozen=True)
class PretrainConfig:
    """``raysearch-adapters pretrain``: train a base Conformer-CTC on the original domain."""

    out_dir: str = "pretrain"  # checkpoints, tokenizer and logs
    epochs: int = 40  # passes over data.original_train (max_minutes may stop sooner)
    lr: float = 1e-3  # peak learning rate (AdamW)
    warmup_steps: int = 300  # linear warm-up, then cosine decay to 1% at the last epoch (or max_minutes)
    weight_decay: float = 1e-3  # AdamW weight decay
    grad_clip: float = 5.0  # max gradient norm (0 = off)
    max_batch_seconds: float = 30.0  # audio per batch: small batches leave the CTC blank plateau sooner
    # SpecAugment starts at this step: with it from step 0 a small CTC model sits on the
    # all-blank plateau for thousands of steps (measured: unregularised it leaves it at ~250).
    specaugment_from_step: int = 1500
    precision: str = "auto"  # auto | fp32 | bf16
    seed: int = 0  # seeds the model's init and batch order
    max_minutes: float = 0.0  # wall-time budget: LR decays over it, training stops at it (0 = none)

    def validate(self, key: str) -> None:
        _check_range(f"{key}.epochs", self.epochs, 1, None)
        _check_range(f"{key}.lr", self.lr, 0, None, low_open=True)
        _check_range(f"{key}.warmup_steps", self.warmup_steps, 0, None)
        _check_range(f"{key}.specaugment_from_step", self.specaugment_from_step, 0, None)
        _check_range(f"{key}.weight_decay", self.weight_decay, 0, None)
        _check_range(f"{key}.grad_clip", self.grad_clip, 0, None)
        _check_range(f"{key}.max_batch_seconds", self.max_batch_seconds, 0, None, low_open=True)
        _check_choice(f"{key}.precision", self.precision, ("auto", "fp32", "bf16"))
        _check_range(f"{key}.max_minutes", self.max_minutes, 0, None)


# --------------------------------------------------------------------------- search


def _check_param(key: str, name: str, value: Any) -> None:
    problem = value_problem(name, value)
    if problem:
        _fail(key, value, problem)


def _check_hparam_fields(section_cfg: Any, key: str, section: str) -> None:
    """The fields of ``section`` that a searched hyperparameter sets, each by that hyperparameter's rule."""
    for h in fields_of(section):
        value = getattr(section_cfg, h.key)
        for i, v in enumerate(value) if h.listed else [(None, value)]:
            _check_param(f"{key}.{h.key}" + ("" if i is None else f"[{i}]"), h.name, v)


@dataclass(frozen=True)
class ParamSpec:
    """One searched hyperparameter: a fixed ``value``, a list of ``choices``, or ``low``..``high``.

    In a YAML file or a ``search.space.NAME=...`` override an entry given whole replaces the
    default entry: ``{low: 4, high: 64}``, ``64`` (= ``{value: 64}``) or ``[8, 16]`` (= ``{choices:
    [8, 16]}``); ``search.space.NAME.FIELD=...`` changes one field of it."""

    value: Optional[Any] = None  # fixed: not searched
    choices: Optional[List[Any]] = None  # categorical
    low: Optional[float] = None  # range lower bound (inclusive)
    high: Optional[float] = None  # range upper bound (inclusive)
    log: bool = False  # sample the range on a log scale
    # A range that may also be exactly 0 (off), e.g. a log range of distillation weights: the
    # sampler first chooses on/off (an extra parameter '<name>_on'), then the value when on.
    allow_zero: bool = False

    def kind(self) -> str:
        """'value', 'choices', 'range', or 'unset' (all empty: the train/adapter section's value is used)."""
        if self.value is None and self.choices is None and self.low is None and self.high is None:
            return "unset"
        if self.value is not None:
            return "value"
        return "choices" if self.choices is not None else "range"

    def validate(self, key: str, name: str) -> None:
        """One form (value, choices or range), each value one that hyperparameter ``name`` takes."""
        kind = self.kind()
        if (self.value is not None) + (self.choices is not None) + (self.low is not None or self.high is not None) > 1:
            _fail(key, dataclasses.asdict(self), "give exactly one of value, choices, or low and high")
        if kind == "value":
            _check_param(f"{key}.value", name, self.value)
        elif kind == "choices":
            if not self.choices:
                _fail(f"{key}.choices", list(self.choices), "needs at least one choice")
            for i, v in enumerate(self.choices):
                _check_param(f"{key}.choices[{i}]", name, v)
        elif kind == "range":
            if not HPARAM[name].rangeable:
                _fail(key, dataclasses.asdict(self), f"{name} takes a value or choices, not a low/high range")
            if self.low is None or self.high is None:
                _fail(key, dataclasses.asdict(self), "a range needs both low and high")
            for bound in ("low", "high"):
                v = getattr(self, bound)
                _check_param(f"{key}.{bound}", name, v)
                if self.log and v <= 0:
                    _fail(f"{key}.{bound}", v, "must be > 0 (log scale)")
            if self.low > self.high:
                _fail(f"{key}.low", self.low, f"must be <= high ({self.high})")
        if self.allow_zero and kind != "range":
            _fail(f"{key}.allow_zero", True, "applies to a low/high range only")


def _fixed(v: Any) -> Any:
    return field(default_factory=lambda: ParamSpec(value=v))


def _space_validate(self, key: str) -> None:
    for f in dataclasses.fields(self):
        getattr(self, f.name).validate(f"{key}.{f.name}", f.name)


def _space_values(self, name: str, default: Any) -> List[Any]:
    """The values entry ``name`` can take: its value, its choices, or ``default`` (the section's value) when
    unset; a range's bounds."""
    spec = getattr(self, name)
    kind = spec.kind()
    if kind == "unset":
        return [default]
    if kind == "value":
        return [spec.value]
    return list(spec.choices) if kind == "choices" else [spec.low, spec.high]


# The search space: one ParamSpec per row of the hyperparameter table (raysearch_adapters.hparams), in its
# order, each defaulting to the row's space entry. Fixed entries are not searched, unset ones take the
# adapter/train field the row names. A row of some adapter types only is used by trials of those types.
SpaceConfig = dataclasses.make_dataclass(
    "SpaceConfig",
    [(h.name, ParamSpec, field(default_factory=lambda entry=h.space: ParamSpec(**entry))) for h in HPARAMS],
    namespace={"validate": _space_validate, "values": _space_values, "__module__": __name__,
               "__field_docs__": {h.name: f"{h.doc}; unset: the value of {h.field}" for h in HPARAMS},
               "__doc__": "The search space: one entry per searched hyperparameter (raysearch_adapters.hparams)."},
    frozen=True)


@dataclass(frozen=True)
class GridConfig:
    """The NeMo-style grid baseline (lr x dim x stochastic depth; other params fixed)."""

    lr: List[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])  # learning rates swept
    dim: List[int] = field(default_factory=lambda: [8, 32, 64])  # bottleneck widths swept
    stochastic_depth: List[float] = field(default_factory=lambda: [0.0, 0.2])  # stochastic depths swept

    def size(self) -> int:
        """Number of configs of the grid."""
        return math.prod(len(getattr(self, f.name)) for f in dataclasses.fields(self))

    def validate(self, key: str) -> None:
        for f in dataclasses.fields(self):
            values = getattr(self, f.name)
            if not values:
                _fail(f"{key}.{f.name}", list(values), "needs at least one value")
            for i, v in enumerate(values):
                _check_param(f"{key}.{f.name}[{i}]", f.name, v)


@dataclass(frozen=True)
class AshaConfig:
    """ASHA early stopping on dev new-domain WER (one rung per evaluation)."""

    enabled: bool = True  # without a budget: ASHA stops weak trials (false: every trial runs its steps)
    grace_period: int = 1  # evaluations before a trial can be stopped
    reduction_factor: int = 2  # each rung is this many times further; about 1/this of the trials go on

    def validate(self, key: str) -> None:
        _check_range(f"{key}.grace_period", self.grace_period, 1, None)
        _check_range(f"{key}.reduction_factor", self.reduction_factor, 2, None)


SAMPLERS = ("tpe", "random", "grid", "nsga2")


# The demo's start point (conf/demo.yaml): an adapter 64 wide in every block, distilled to the base.
DEMO_START_POINTS = [{"dim": 64, "blocks": "all", "position": "post", "lr": 3e-3, "replay": 0.0,
                      "distill_weight": 30.0}]


@dataclass(frozen=True)
class SearchConfig:
    """The search: sampler, budget, the degradation limit kappa and the space."""

    name: str = "demo"  # search id; results go to results.dir/name
    # The compute the search spends, in optimiser steps over all trials (0: no budget; every trial trains
    # train.steps, and ASHA stops the weak ones). A cohort of trials is halved rung by rung, then the
    # finalists train on while they improve (docs: "How a budget is spent").
    budget_steps: int = 8000
    # With a budget: the cohort size (0: as many as half the budget can halve). Without: the number of
    # trials. The grid sampler runs its whole grid, capped by this when set.
    num_trials: int = 0
    finalists: int = 2  # trials that train on after the halving, each with an equal share of what is left
    patience: int = 3  # evaluations without a better best evaluation after which a trial stops (0: never)
    sampler: str = "tpe"  # tpe (constrained) | random | grid | nsga2 (multi-objective)
    kappa: float = 1.0  # allowed degradation of original-domain dev WER
    kappa_mode: str = "absolute"  # absolute (WER points) | relative (fraction of base WER)
    seed: int = 0  # the sampler's seed
    asha: AshaConfig = field(default_factory=AshaConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    # Configs the sampler tries first (e.g. the adapter you use today, or a published recipe): each
    # maps searched parameters to a value of their space entry; the parameters it leaves out are
    # sampled. TPE learns from them like from any trial. Not for the grid, which has its own list.
    # The default is the demo's hand-picked point; a search whose space it does not fit runs without it.
    start_points: List[Dict[str, Any]] = field(default_factory=lambda: [dict(p) for p in DEMO_START_POINTS])

    def without_unfitting_demo_start_points(self, adapter_type: str) -> "SearchConfig":
        """This config, without the built-in demo start point when it was left at its default and does not
        fit the space (another model's space, a space searching the adapter type, say); a start point the
        user gave is checked strictly. ``adapter_type``: adapter.type (the type when the space leaves it unset)."""
        if self.start_points != DEMO_START_POINTS:
            return self
        try:
            self.space.validate("search.space")
        except ConfigError:
            return self  # the space's own error is what validate() reports
        try:
            self._validate_start_points("search", adapter_type)
        except ConfigError:
            return dataclasses.replace(self, start_points=[])
        return self

    def _point_type(self, point: Dict[str, Any], adapter_type: str) -> Optional[str]:
        """The adapter type of a start point: its own ``type``, else the space's only one (None: the space
        searches the type and the point does not say)."""
        if "type" in point:
            return point["type"]
        types = self.space.values("type", adapter_type)
        return types[0] if len(types) == 1 else None

    def _validate_start_points(self, key: str, adapter_type: str) -> None:
        if self.start_points and self.sampler == "grid":
            _fail(f"{key}.start_points", self.start_points, "applies to the tpe, random and nsga2 samplers; the "
                  "grid sweeps search.grid")
        for i, point in enumerate(self.start_points):
            for name, v in point.items():
                where = f"{key}.start_points[{i}].{name}"
                spec = getattr(self.space, name, None)
                if not isinstance(spec, ParamSpec):
                    _fail(where, v, f"not a searched parameter; allowed: {', '.join(f.name for f in dataclasses.fields(self.space))}")
                kind = spec.kind()
                if kind in ("value", "unset"):
                    _fail(where, v, f"search.space.{name} is not searched (it is {kind}); a start point sets "
                          "searched parameters only")
                _check_param(where, name, v)
                if kind == "choices" and v not in spec.choices:
                    _fail(where, v, f"allowed: one of search.space.{name}.choices {list(spec.choices)}")
                if kind == "range" and not (spec.low <= v <= spec.high or (spec.allow_zero and v == 0)):
                    _fail(where, v, f"must be in search.space.{name}'s range [{spec.low}, {spec.high}]"
                          + (" or 0" if spec.allow_zero else ""))
            point_type = self._point_type(point, adapter_type)
            for name, v in point.items():
                owners = [t for t, names in TYPE_PARAMS.items() if name in names]
                if owners and point_type is None:
                    _fail(f"{key}.start_points[{i}].{name}", v, f"a parameter of {'/'.join(owners)} adapters, and "
                          "search.space.type is searched: give the point's type too")
                if point_type is not None and not applies_to(name, point_type):
                    _fail(f"{key}.start_points[{i}].{name}", v, f"a parameter of {'/'.join(owners)} adapters; this "
                          f"point's type is {point_type}")

    def _validate_types(self, key: str, adapter_type: str) -> None:
        grid_type = self.space.type.value if self.space.type.kind() == "value" else adapter_type
        if self.sampler == "grid" and not applies_to("dim", grid_type):
            _fail(f"{key}.sampler", self.sampler, f"the NeMo-style grid sweeps dim and stochastic_depth, which "
                  f"{grid_type} adapters do not have; allowed with type {grid_type}: tpe, random, nsga2")

    def validate(self, key: str, adapter_type: str = "bottleneck") -> None:
        """``adapter_type``: adapter.type, the type of trials when the space leaves it unset."""
        if not self.name or "/" in self.name or self.name.startswith("."):
            _fail(f"{key}.name", self.name, "must be a non-empty folder name without '/'")
        _check_range(f"{key}.budget_steps", self.budget_steps, 0, None)
        _check_range(f"{key}.num_trials", self.num_trials, 0 if self.budget_steps else 1, None)
        _check_range(f"{key}.finalists", self.finalists, 1, None)
        _check_range(f"{key}.patience", self.patience, 0, None)
        _check_choice(f"{key}.sampler", self.sampler, SAMPLERS)
        _check_range(f"{key}.kappa", self.kappa, 0, None)
        _check_choice(f"{key}.kappa_mode", self.kappa_mode, ("absolute", "relative"))
        self.asha.validate(f"{key}.asha")
        self.space.validate(f"{key}.space")
        self.grid.validate(f"{key}.grid")
        self._validate_types(key, adapter_type)
        self._validate_start_points(key, adapter_type)


@dataclass(frozen=True)
class ResourcesConfig:
    """Where trials run: CPU, a fraction of one GPU per trial, or N DDP workers per trial."""

    use_gpu: bool = False  # trials train on GPUs; the driver computes the caches on one
    num_workers: int = 1  # Ray Train workers per trial (DDP when > 1)
    gpus_per_worker: float = 1.0  # < 1 shares one GPU between trials (then num_workers must be 1)
    cpus_per_worker: float = 1.0  # CPUs Ray reserves per worker (what bounds concurrent CPU trials)
    max_concurrent_trials: int = 0  # 0 = derived from the cluster's resources
    gpu_memory_fraction: float = 0.0  # per-process CUDA memory cap (0 = gpus_per_worker)
    # auto: a one-worker trial trains inside its Tune trial actor, which Tune reuses for the
    # next trial (no new processes, model or data loading per trial); ray_train: every trial
    # starts a Ray Train TorchTrainer (always the case when num_workers > 1).
    trial_runner: str = "auto"

    def uses_ray_train(self) -> bool:
        """Whether trials run through a Ray Train ``TorchTrainer`` (else inside the reused Tune trial actor)."""
        return self.trial_runner == "ray_train" or self.num_workers > 1

    def validate(self, key: str) -> None:
        _check_choice(f"{key}.trial_runner", self.trial_runner, ("auto", "ray_train"))
        _check_range(f"{key}.num_workers", self.num_workers, 1, None)
        _check_range(f"{key}.gpus_per_worker", self.gpus_per_worker, 0, None, low_open=True)
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            _fail(f"{key}.gpus_per_worker", self.gpus_per_worker, "must be <= 1 or a whole number")
        if self.use_gpu and self.gpus_per_worker < 1 and self.num_workers > 1:
            _fail(f"{key}.num_workers", self.num_workers,
                  "must be 1 when gpus_per_worker < 1 (DDP workers cannot share one GPU: NCCL refuses)")
        _check_range(f"{key}.cpus_per_worker", self.cpus_per_worker, 0, None)
        _check_range(f"{key}.max_concurrent_trials", self.max_concurrent_trials, 0, None)
        _check_range(f"{key}.gpu_memory_fraction", self.gpu_memory_fraction, 0, 1)


@dataclass(frozen=True)
class ResultsConfig:
    """Where results, the Optuna study and Ray's own storage go."""

    dir: str = "results"  # results/<search.name>/ holds trials.parquet, summary.json, ...
    study_storage: Optional[str] = None  # SQLAlchemy URL; None = sqlite optuna.db in the results folder
    storage_path: Optional[str] = None  # Ray Tune/Train storage (local, NFS, s3://); None = results folder

    def validate(self, key: str) -> None:
        if not self.dir:
            _fail(f"{key}.dir", self.dir, "must be a folder path")


@dataclass(frozen=True)
class Config:
    """Every section of a raysearch-adapters run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            if f.name == "search":  # the space's trials have adapter.type where the space leaves it unset
                self.search.validate(f.name, self.adapter.type)
            else:
                getattr(self, f.name).validate(f.name)
        if self.search.budget_steps:
            self._validate_budget()

    def _validate_budget(self) -> None:
        """A budget the search can spend: horizon-free trials, rungs that fit, a grid that fits."""
        s, t = self.search, self.train
        if t.lr_schedule not in HORIZON_FREE:
            _fail("train.lr_schedule", t.lr_schedule, f"with search.budget_steps a trial may be continued past any "
                  f"length planned at its start; allowed: {', '.join(HORIZON_FREE)} (or search.budget_steps=0 for "
                  "fixed-length trials)")
        if s.space.steps.kind() != "unset":
            _fail("search.space.steps", dataclasses.asdict(s.space.steps), "with search.budget_steps the budget "
                  "decides how long each trial trains; leave it unset (or set search.budget_steps=0)")
        grace = s.asha.grace_period * t.eval_every
        if s.budget_steps < grace:
            _fail("search.budget_steps", s.budget_steps, f"must be 0 (no budget) or at least one rung: "
                  f"search.asha.grace_period x train.eval_every = {grace} steps")
        cohort = self.cohort_size_asked()
        try:
            plan = self.budget_plan()
        except HalvingError as e:
            if s.sampler == "grid":
                _fail("search.sampler", s.sampler, f"the grid's {cohort} configs cannot be spent in "
                      f"search.budget_steps={s.budget_steps}: {e}; allowed: a larger budget, a smaller grid "
                      "(search.grid), or search.num_trials to cap it")
            _fail("search.num_trials", s.num_trials, f"with search.budget_steps={s.budget_steps}: {e}; allowed: "
                  "fewer trials, 0 (as many as the budget holds), or a larger budget")
        if t.lr_schedule == "wsd" and t.decay_steps > plan.finalist_share:
            _fail("train.decay_steps", t.decay_steps, f"the cool-down must fit in the finalists' share of the budget "
                  f"({plan.finalist_share} steps each after the halving); allowed: at most {plan.finalist_share}, or "
                  "a larger search.budget_steps")

    def budget_plan(self) -> HalvingPlan:
        """How ``search.budget_steps`` is spent (raises HalvingError when it cannot be)."""
        s, t = self.search, self.train
        return halving_plan(s.budget_steps, s.asha.grace_period * t.eval_every, s.asha.reduction_factor,
                            s.finalists, t.eval_every, self.cohort_size_asked())

    def trial_steps(self) -> int:
        """The most steps a trial may train: train.steps, or with a budget the finalists' end."""
        if not self.search.budget_steps:
            return self.train.steps
        plan = self.budget_plan()
        return plan.milestones[-1] + plan.finalist_share

    def cohort_size_asked(self) -> Optional[int]:
        """The cohort the config asks for: the grid's size (capped by search.num_trials), search.num_trials,
        or None (the budget decides)."""
        s = self.search
        if s.sampler == "grid":
            return min(s.grid.size(), s.num_trials) if s.num_trials else s.grid.size()
        return s.num_trials or None


# --------------------------------------------------------------------------- loading


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            k = f"{prefix}{f.name}"
            keys.append(k)
            keys.extend(_all_keys(getattr(node, f.name), k + "."))
    return keys


# Keys that were replaced: a config using one fails with the key to use instead.
RENAMED_KEYS = {"train.warmup_ratio": "train.warmup_steps (a number of steps; the decay after it is "
                                      "train.lr_schedule)"}


def _unknown_key_error(full_key: str, where: str) -> ConfigError:
    if full_key in RENAMED_KEYS:
        return ConfigError(f"{where}'{full_key}' is no longer a key: use {RENAMED_KEYS[full_key]}")
    valid = _all_keys(Config())
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    siblings = [k for k in valid if "." in k and k.rsplit(".", 1)[0] == parent] if parent else [
        k for k in valid if "." not in k]
    leaf = full_key.rsplit(".", 1)[-1]
    close = [(parent + "." if parent else "") + c for c in
             difflib.get_close_matches(leaf, [s.rsplit(".", 1)[-1] for s in siblings], n=1, cutoff=0.5)]
    if not close:  # the name, or a near one, in another section (the first such key); never a parent
        elsewhere: dict = {}
        for k in valid:
            if not full_key.startswith(k + "."):
                elsewhere.setdefault(k.rsplit(".", 1)[-1], k)
        close = [elsewhere[c] for c in difflib.get_close_matches(leaf, list(elsewhere), n=1, cutoff=0.75)]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    allowed = ", ".join(s.rsplit(".", 1)[-1] for s in siblings)
    return ConfigError(f"{where}unknown key '{full_key}'{hint} (allowed under "
                       f"'{parent or '<top>'}': {allowed})")


def _omegaconf_error(e: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(e, "full_key", "") or ""
    return ConfigError(f"{where}{key + ': ' if key else ''}{first_line(e)}")


def _merge(base: Any, other: Any, where: str) -> Any:
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as e:
        raise _unknown_key_error(str(e.full_key), where) from None
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, where) from None


def _writable_schema() -> Any:
    """The defaults as an OmegaConf schema that files and overrides may fill.

    OmegaConf 2.3 marks every node of a frozen dataclass read-only; the frozen dataclass built at
    the end of loading is what keeps a loaded config immutable, so the flags are cleared here."""
    cfg = OmegaConf.structured(Config)

    def clear(node: Any) -> None:
        OmegaConf.set_readonly(node, None)
        if node._is_none() or node._is_missing():
            return
        for key in (range(len(node)) if OmegaConf.is_list(node) else list(node.keys())):
            child = node._get_node(key)
            if OmegaConf.is_config(child):
                clear(child)

    clear(cfg)
    return cfg


_DOTTED_KEY = re.compile(r"[A-Za-z_]\w*(\.\w+)*")
_EMPTY_ENTRY = dataclasses.asdict(ParamSpec())


def _whole_entry(node: Any) -> dict:
    """A space entry given whole, with every field: a mapping as given, a list as choices, else a value."""
    if isinstance(node, dict):
        return {**_EMPTY_ENTRY, **node}
    if isinstance(node, list):
        return {**_EMPTY_ENTRY, "choices": node}
    return {**_EMPTY_ENTRY, "value": node}


def _replace_whole_entries(node: Any, depth: int) -> Any:
    """``node`` (a YAML file, or an override whose key has ``depth`` parts) with each search.space entry
    it gives whole spelled out in full, so that merging replaces the default entry instead of mixing
    with it (``{low: 4, high: 64}`` over the default ``choices`` would give both)."""
    if depth > 3:  # search.space.NAME.FIELD=...: one field of the entry, merged into it
        return node
    tree = OmegaConf.to_container(node)
    space = tree.get("search", {}).get("space") if isinstance(tree, dict) and isinstance(
        tree.get("search"), dict) else None
    if not isinstance(space, dict):
        return node
    names = {f.name for f in dataclasses.fields(SpaceConfig)}  # other keys fail the merge, named
    space.update({k: _whole_entry(v) for k, v in space.items() if k in names})
    return OmegaConf.create(tree)


def load_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Config:
    """Defaults ← each YAML in ``paths`` ← ``key=value`` ``overrides``; validated, interpolations resolved."""
    cfg = _writable_schema()
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ConfigError(f"config file {path}: {'not a file' if path.exists() else 'not found'}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as e:  # yaml.YAMLError carries the line
            raise ConfigError(f"config file {path}: not valid YAML: {e}".replace("\n", " ")) from None
        if not OmegaConf.is_dict(loaded):
            raise ConfigError(f"config file {path}: the top level is a list; expected sections such as "
                              "search: and train:")
        cfg = _merge(cfg, _replace_whole_entries(loaded, 0), f"{path}: ")
    for ov in overrides:
        key = ov.split("=", 1)[0]
        if "=" not in ov or not _DOTTED_KEY.fullmatch(key):
            raise ConfigError(f"override {ov!r}: expected key=value with a dotted key (e.g. search.num_trials=4)")
        try:
            dot = OmegaConf.from_dotlist([ov])
        except (OmegaConfBaseException, yaml.YAMLError) as e:
            raise ConfigError(f"override {ov!r}: the value is not valid YAML ({first_line(e)})") from None
        cfg = _merge(cfg, _replace_whole_entries(dot, len(key.split("."))), f"override {ov!r}: ")
    try:
        obj: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, "") from None
    obj = _expand_user_paths(obj)
    obj = dataclasses.replace(obj, search=obj.search.without_unfitting_demo_start_points(obj.adapter.type))
    obj.validate()
    return obj


def _expand_user_paths(cfg: Config) -> Config:
    d = cfg.data
    paths = {f.name: str(Path(getattr(d, f.name)).expanduser()) for f in dataclasses.fields(d)
             if f.name in ("demo_dir", "new_train", "new_dev", "new_test", "original_train",
                           "original_dev", "original_test", "replay_manifest", "distill_manifest", "cache_dir")
             and getattr(d, f.name)}
    return dataclasses.replace(cfg, data=dataclasses.replace(d, **paths))


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what ``config show`` prints and results store)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    """A plain dict of a config dataclass (for JSON files and Ray)."""
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    """Inverse of :func:`to_dict` (validated)."""
    cfg = OmegaConf.merge(_writable_schema(), OmegaConf.create(d))
    obj: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    obj.validate()
    return obj
