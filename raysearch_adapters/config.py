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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from raysearch_adapters.errors import UserError

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
    original_train: str = "${data.demo_dir}/original/train.json"  # original domain (pretrain only)
    original_dev: str = "${data.demo_dir}/original/dev.json"  # degradation is measured here
    original_test: str = "${data.demo_dir}/original/test.json"  # final evaluation only
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
    dropout: float = 0.1
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


MODEL_NAMES = ("conformer_ctc", "wav2vec2")


@dataclass(frozen=True)
class ModelConfig:
    """The base model: the shipped demo model, a checkpoint file, or a torchaudio bundle."""

    name: str = "conformer_ctc"  # conformer_ctc | wav2vec2
    checkpoint: str = "demo"  # conformer_ctc: 'demo' (shipped) or a checkpoint path
    bundle: str = "WAV2VEC2_ASR_BASE_960H"  # wav2vec2: a torchaudio.pipelines ASR bundle
    conformer: ConformerConfig = field(default_factory=ConformerConfig)

    def validate(self, key: str) -> None:
        _check_choice(f"{key}.name", self.name, MODEL_NAMES)
        self.conformer.validate(f"{key}.conformer")


# --------------------------------------------------------------------------- adapters

POSITIONS = ("post", "mha", "ffn")
ACTIVATIONS = ("swish", "relu", "gelu", "tanh")


@dataclass(frozen=True)
class AdapterConfig:
    """One adapter config (NeMo's LinearAdapter fields plus placement).

    ``blocks`` is a block-set spec: ``all``, ``top:K``, ``bottom:K``, ``every:N``,
    ``window:A-B`` (blocks A..B-1) or an explicit list such as ``0,2,5``.
    """

    dim: int = 32  # bottleneck width h
    activation: str = "swish"  # swish | relu | gelu | tanh
    norm_position: str = "pre"  # pre | post: LayerNorm before the down or after the up projection
    dropout: float = 0.0  # dropout on the adapter output
    stochastic_depth: float = 0.0  # probability of skipping the adapter branch in training
    l2_lambda: float = 0.0  # L2 penalty on the adapter output (NeMo's residual-add strategy)
    blocks: str = "all"  # which blocks get adapters (block-set spec)
    positions: List[str] = field(default_factory=lambda: ["post"])  # where inside each block

    def validate(self, key: str) -> None:
        _check_range(f"{key}.dim", self.dim, 1, None)
        _check_choice(f"{key}.activation", self.activation, ACTIVATIONS)
        _check_choice(f"{key}.norm_position", self.norm_position, ("pre", "post"))
        _check_range(f"{key}.dropout", self.dropout, 0, 1, high_open=True)
        _check_range(f"{key}.stochastic_depth", self.stochastic_depth, 0, 1, high_open=True)
        _check_range(f"{key}.l2_lambda", self.l2_lambda, 0, None)
        if not self.positions:
            _fail(f"{key}.positions", list(self.positions), f"needs at least one of {', '.join(POSITIONS)}")
        for i, pos in enumerate(self.positions):
            _check_choice(f"{key}.positions[{i}]", pos, POSITIONS)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """Adapter training of one trial (plain PyTorch loop)."""

    steps: int = 300  # optimiser steps
    lr: float = 1e-3  # peak learning rate (AdamW)
    warmup_ratio: float = 0.1  # fraction of steps with linear warm-up, then cosine decay
    weight_decay: float = 0.0  # AdamW weight decay on adapter weights
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    max_batch_seconds: float = 20.0  # audio per training batch
    eval_every: int = 50  # steps between dev evaluations (each is one ASHA rung)
    specaugment: bool = False  # SpecAugment on new-domain training batches (turns the prefix cache off)
    # Frozen-prefix cache: the frozen blocks below a trial's lowest adapter run once per
    # utterance (cached on disk, shared by trials), and trials train and evaluate the top only.
    # Exact (same outputs); used by trials without SpecAugment, which changes the prefix's input.
    prefix_cache: bool = True
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    seed: int = 0

    def validate(self, key: str) -> None:
        _check_range(f"{key}.steps", self.steps, 1, None)
        _check_range(f"{key}.lr", self.lr, 0, None, low_open=True)
        _check_range(f"{key}.warmup_ratio", self.warmup_ratio, 0, 1, high_open=True)
        _check_range(f"{key}.weight_decay", self.weight_decay, 0, None)
        _check_range(f"{key}.grad_clip", self.grad_clip, 0, None)
        _check_range(f"{key}.max_batch_seconds", self.max_batch_seconds, 0, None, low_open=True)
        _check_range(f"{key}.eval_every", self.eval_every, 1, None)
        _check_choice(f"{key}.precision", self.precision, ("auto", "fp32", "bf16"))


@dataclass(frozen=True)
class PretrainConfig:
    """``raysearch-adapters pretrain``: train a base Conformer-CTC on the original domain."""

    out_dir: str = "pretrain"  # checkpoints, tokenizer and logs
    epochs: int = 40
    lr: float = 1e-3  # peak learning rate (AdamW)
    warmup_steps: int = 300  # linear warm-up, then cosine decay to 1% at the last epoch (or max_minutes)
    weight_decay: float = 1e-3
    grad_clip: float = 5.0
    max_batch_seconds: float = 30.0  # audio per batch: small batches leave the CTC blank plateau sooner
    # SpecAugment starts at this step: with it from step 0 a small CTC model sits on the
    # all-blank plateau for thousands of steps (measured: unregularised it leaves it at ~250).
    specaugment_from_step: int = 1500
    precision: str = "auto"  # auto | fp32 | bf16
    seed: int = 0
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


@dataclass(frozen=True)
class ParamSpec:
    """One searched hyperparameter: a fixed ``value``, a list of ``choices``, or ``low``..``high``."""

    value: Optional[Any] = None  # fixed: not searched
    choices: Optional[List[Any]] = None  # categorical
    low: Optional[float] = None  # range lower bound (inclusive)
    high: Optional[float] = None  # range upper bound (inclusive)
    log: bool = False  # sample the range on a log scale

    def kind(self) -> str:
        """'value', 'choices', 'range', or 'unset' (all empty: the train section's value is used)."""
        if self.value is None and self.choices is None and self.low is None and self.high is None:
            return "unset"
        if self.value is not None:
            return "value"
        return "choices" if self.choices is not None else "range"

    def validate(self, key: str, positive: bool = False, unit: bool = False, optional: bool = False) -> None:
        if optional and self.kind() == "unset":
            return
        given = [n for n in ("value", "choices") if getattr(self, n) is not None]
        if self.low is not None or self.high is not None:
            given.append("low/high")
        if len(given) != 1:
            _fail(key, dataclasses.asdict(self), "give exactly one of value, choices, or low and high")
        if self.choices is not None and not self.choices:
            _fail(f"{key}.choices", list(self.choices), "needs at least one choice")
        if "low/high" in given:
            if self.low is None or self.high is None:
                _fail(key, dataclasses.asdict(self), "a range needs both low and high")
            if self.low > self.high:
                _fail(f"{key}.low", self.low, f"must be <= high ({self.high})")
        values = [self.value] if self.value is not None else list(self.choices or []) + [
            v for v in (self.low, self.high) if v is not None]
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if (positive or self.log) and v <= 0:
                    bound = "low" if v == self.low else "value"
                    _fail(f"{key}.{bound}" if self.kind() != "choices" else f"{key}.choices", v,
                          "must be > 0" + (" (log scale)" if self.log else ""))
                if unit and not 0 <= v < 1:
                    _fail(key, v, "must be in [0, 1)")


def _fixed(v: Any) -> Any:
    return field(default_factory=lambda: ParamSpec(value=v))


@dataclass(frozen=True)
class SpaceConfig:
    """The search space. Each entry is a ParamSpec; fixed ones are not searched."""

    dim: ParamSpec = field(default_factory=lambda: ParamSpec(choices=[4, 8, 16, 32, 64]))
    blocks: ParamSpec = field(default_factory=lambda: ParamSpec(
        choices=["all", "top:1", "top:2", "top:3", "bottom:2", "every:2", "window:2-5"]))
    position: ParamSpec = field(default_factory=lambda: ParamSpec(choices=["post", "mha", "ffn"]))
    lr: ParamSpec = field(default_factory=lambda: ParamSpec(low=3e-5, high=3e-3, log=True))
    dropout: ParamSpec = _fixed(0.0)
    stochastic_depth: ParamSpec = _fixed(0.0)
    l2_lambda: ParamSpec = _fixed(0.0)
    weight_decay: ParamSpec = _fixed(0.0)
    steps: ParamSpec = field(default_factory=ParamSpec)  # unset: train.steps
    specaugment: ParamSpec = field(default_factory=ParamSpec)  # unset: train.specaugment

    def validate(self, key: str) -> None:
        self.dim.validate(f"{key}.dim", positive=True)
        self.blocks.validate(f"{key}.blocks")
        self.position.validate(f"{key}.position")
        for pos in ([self.position.value] if self.position.value is not None else self.position.choices or []):
            _check_choice(f"{key}.position", pos, POSITIONS)
        self.lr.validate(f"{key}.lr", positive=True)
        for name in ("dropout", "stochastic_depth"):
            getattr(self, name).validate(f"{key}.{name}", unit=True)
        for name in ("l2_lambda", "weight_decay"):
            spec = getattr(self, name)
            spec.validate(f"{key}.{name}")
            for v in [spec.value, spec.low, *(spec.choices or [])]:
                if isinstance(v, (int, float)) and v < 0:
                    _fail(f"{key}.{name}", v, "must be >= 0")
        self.steps.validate(f"{key}.steps", positive=True, optional=True)
        self.specaugment.validate(f"{key}.specaugment", optional=True)


@dataclass(frozen=True)
class GridConfig:
    """The NeMo-style grid baseline (lr x dim x stochastic depth; other params fixed)."""

    lr: List[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])
    dim: List[int] = field(default_factory=lambda: [8, 32, 64])
    stochastic_depth: List[float] = field(default_factory=lambda: [0.0, 0.2])

    def validate(self, key: str) -> None:
        for name in ("lr", "dim", "stochastic_depth"):
            values = getattr(self, name)
            if not values:
                _fail(f"{key}.{name}", list(values), "needs at least one value")
        for v in self.lr:
            _check_range(f"{key}.lr", v, 0, None, low_open=True)
        for v in self.dim:
            _check_range(f"{key}.dim", v, 1, None)
        for v in self.stochastic_depth:
            _check_range(f"{key}.stochastic_depth", v, 0, 1, high_open=True)


@dataclass(frozen=True)
class AshaConfig:
    """ASHA early stopping on dev new-domain WER (one rung per evaluation)."""

    enabled: bool = True
    grace_period: int = 1  # evaluations before a trial can be stopped
    reduction_factor: int = 2

    def validate(self, key: str) -> None:
        _check_range(f"{key}.grace_period", self.grace_period, 1, None)
        _check_range(f"{key}.reduction_factor", self.reduction_factor, 2, None)


SAMPLERS = ("tpe", "random", "grid", "nsga2")


@dataclass(frozen=True)
class SearchConfig:
    """The search: sampler, budget, the degradation limit kappa and the space."""

    name: str = "demo"  # search id; results go to results.dir/name
    num_trials: int = 32  # trial budget (the grid sampler runs its whole grid, capped by this)
    sampler: str = "tpe"  # tpe (constrained) | random | grid | nsga2 (multi-objective)
    kappa: float = 1.0  # allowed degradation of original-domain dev WER
    kappa_mode: str = "absolute"  # absolute (WER points) | relative (fraction of base WER)
    seed: int = 0
    asha: AshaConfig = field(default_factory=AshaConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    grid: GridConfig = field(default_factory=GridConfig)

    def validate(self, key: str) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            _fail(f"{key}.name", self.name, "must be a non-empty folder name without '/'")
        _check_range(f"{key}.num_trials", self.num_trials, 1, None)
        _check_choice(f"{key}.sampler", self.sampler, SAMPLERS)
        _check_range(f"{key}.kappa", self.kappa, 0, None)
        _check_choice(f"{key}.kappa_mode", self.kappa_mode, ("absolute", "relative"))
        self.asha.validate(f"{key}.asha")
        self.space.validate(f"{key}.space")
        self.grid.validate(f"{key}.grid")


@dataclass(frozen=True)
class ResourcesConfig:
    """Where trials run: CPU, a fraction of one GPU per trial, or N DDP workers per trial."""

    use_gpu: bool = False
    num_workers: int = 1  # Ray Train workers per trial (DDP when > 1)
    gpus_per_worker: float = 1.0  # < 1 shares one GPU between trials (then num_workers must be 1)
    cpus_per_worker: float = 1.0
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
            getattr(self, f.name).validate(f.name)


# --------------------------------------------------------------------------- loading


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            k = f"{prefix}{f.name}"
            keys.append(k)
            keys.extend(_all_keys(getattr(node, f.name), k + "."))
    return keys


def _unknown_key_error(full_key: str, where: str) -> ConfigError:
    valid = _all_keys(Config())
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    siblings = [k for k in valid if "." in k and k.rsplit(".", 1)[0] == parent] if parent else [
        k for k in valid if "." not in k]
    leaf = full_key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, [s.rsplit(".", 1)[-1] for s in siblings], n=1, cutoff=0.5)
    if not close:
        close = [c.rsplit(".", 1)[-1] for c in difflib.get_close_matches(full_key, valid, n=1, cutoff=0.6)]
    hint = f"; did you mean '{(parent + '.' if parent else '') + close[0]}'?" if close else ""
    allowed = ", ".join(s.rsplit(".", 1)[-1] for s in siblings)
    return ConfigError(f"{where}unknown key '{full_key}'{hint} (allowed under "
                       f"'{parent or '<top>'}': {allowed})")


def _omegaconf_error(e: OmegaConfBaseException, where: str) -> ConfigError:
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ConfigError(f"{where}{getattr(e, 'full_key', '') or ''}: {first_line}")


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


def load_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Config:
    """Defaults ← each YAML in ``paths`` ← ``key=value`` ``overrides``; validated, interpolations resolved."""
    cfg = _writable_schema()
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        try:
            loaded = OmegaConf.load(path)
        except Exception as e:  # yaml.YAMLError carries the line
            raise ConfigError(f"config file {path}: not valid YAML: {e}".replace("\n", " ")) from None
        cfg = _merge(cfg, loaded, f"{path}: ")
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value (e.g. search.num_trials=4)")
    if overrides:
        try:
            dot = OmegaConf.from_dotlist(list(overrides))
        except OmegaConfBaseException as e:
            raise _omegaconf_error(e, "overrides ") from None
        cfg = _merge(cfg, dot, "override ")
    try:
        obj: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, "") from None
    obj = _expand_user_paths(obj)
    obj.validate()
    return obj


def _expand_user_paths(cfg: Config) -> Config:
    d = cfg.data
    paths = {f.name: str(Path(getattr(d, f.name)).expanduser()) for f in dataclasses.fields(d)
             if f.name in ("demo_dir", "new_train", "new_dev", "new_test", "original_train",
                           "original_dev", "original_test", "cache_dir")}
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
