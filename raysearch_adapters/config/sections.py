"""The config sections of the data, the model, the adapter, training, pretraining, resources and results."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional

from raysearch_adapters.backbones import BACKBONES, names as backbone_names
from raysearch_adapters.config.checks import check_choice, check_hparam_fields, check_range, fail
from raysearch_adapters.schedule import SCHEDULES
from raysearch_adapters.adapter_types import ADAPTER_TYPES
from raysearch_adapters.space_values import POSITIONS

# Where the demo corpus, feature cache and other generated data live unless told otherwise.
HOME_ENV, HOME_FALLBACK = "RAYSEARCH_ADAPTERS_HOME", "~/.cache/raysearch-adapters"  # where caches and models go
DEFAULT_HOME = f"${{oc.env:{HOME_ENV},'{HOME_FALLBACK}'}}"


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
        check_range(f"{key}.sample_rate", self.sample_rate, 1000, 192000)
        check_range(f"{key}.n_mels", self.n_mels, 1, 512)
        check_range(f"{key}.hop_length_ms", self.hop_length_ms, 0, None, low_open=True)
        check_range(f"{key}.win_length_ms", self.win_length_ms, self.hop_length_ms, None)
        win = int(round(self.sample_rate * self.win_length_ms / 1000))
        if self.n_fft < win:
            fail(f"{key}.n_fft", self.n_fft, f"must be >= the window length in samples ({win})")
        check_choice(f"{key}.normalize", self.normalize, ("per_feature", "none"))


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment at train time only (torchaudio Frequency/TimeMasking)."""

    freq_masks: int = 2  # number of frequency masks
    freq_width: int = 15  # max mel bins per frequency mask
    time_masks: int = 2  # number of time masks
    time_width: int = 40  # max frames per time mask

    def validate(self, key: str) -> None:
        for name in ("freq_masks", "freq_width", "time_masks", "time_width"):
            check_range(f"{key}.{name}", getattr(self, name), 0, None)


SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class EvalSet:
    """A dev and test set the search measures: a new-domain target (``data.targets``), or an original-domain set it
    protects (``data.protected``) with its limit."""

    name: str = ""  # how tables, the summary and the dashboard name it: letters, digits, '_' and '-'
    dev: str = ""  # manifest measured at every evaluation (new domain: the objective; protected: the constraint)
    test: str = ""  # manifest measured once, for the winner and the base model
    kappa: Optional[float] = None  # protected sets: the degradation this set allows (null: search.kappa)
    kappa_mode: Optional[str] = None  # protected sets: absolute | relative (null: search.kappa_mode)


@dataclass(frozen=True)
class DataConfig:
    """Manifests of both domains, the feature cache and batching.

    Manifests are NeMo JSON-lines (``.json``/``.jsonl``) or Parquet (``.parquet``), Hugging Face datasets or lhotse
    cuts (docs/data.md, "Bring your data"). There are no default manifests: a search needs the five below ``original_train`` given (the demo's are in conf/demo.yaml).
    """

    # The embedded demo corpus: built here on first use when a manifest under it is missing ("": none)
    demo_dir: str = ""
    new_train: str = ""  # new-domain adapter training data
    new_dev: str = ""  # new-domain dev (selection)
    new_test: str = ""  # new-domain test (final evaluation only)
    # Original domain: pretraining, and by default replay and distillation ("": none; the search then needs
    # replay_manifest and distill_manifest for the levers it searches)
    original_train: str = ""
    original_dev: str = ""  # degradation is measured here
    original_test: str = ""  # final evaluation only
    # Several new-domain sets, each {name, dev, test}: the objective is the mean of their dev WERs, each is reported.
    # [] (the default): one set named "new", data.new_dev and data.new_test (leave those "" when listing targets).
    targets: List[EvalSet] = field(default_factory=list)
    # Several original-domain sets to protect, each {name, dev, test, kappa, kappa_mode}: each is a constraint of its
    # own (kappa, kappa_mode: null takes search.kappa, search.kappa_mode); a winner is feasible on all. [] (the
    # default): one set named "original", data.original_dev and data.original_test (leave those "" when listing sets).
    protected: List[EvalSet] = field(default_factory=list)
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
    text_column: str = "text"  # a Hugging Face dataset's transcript column (NeMo manifests and cuts: their fields)
    audio_column: str = "audio"  # a Hugging Face dataset's Audio column (or a column of audio file paths)
    duration_tolerance: float = 0.25  # seconds a manifest duration may differ from the audio
    # A manifest line longer than this many seconds is a bad line (data.on_error). null: the model's bound, 30 s for
    # Whisper (its encoder's window) and 60 s for the others (an unsegmented recording is caught before a batch of
    # it fills the GPU: attention memory grows with the square of an utterance's length).
    max_duration: Optional[float] = None
    max_batch_seconds: float = 120.0  # batches are filled up to this much audio
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)

    def validate(self, key: str) -> None:
        self._validate_sets(key)
        check_choice(f"{key}.on_error", self.on_error, ("fail", "skip"))
        for name, default in (("text_column", "text"), ("audio_column", "audio")):
            if not str(getattr(self, name)).strip():
                fail(f"{key}.{name}", getattr(self, name), f"expected a column name of the datasets (default: {default})")
        if self.text_column == self.audio_column:
            fail(f"{key}.audio_column", self.audio_column, f"expected a column other than {key}.text_column: the "
                 "transcript and the audio are two columns")
        check_range(f"{key}.duration_tolerance", self.duration_tolerance, 0, None)
        if self.max_duration is not None:
            check_range(f"{key}.max_duration", self.max_duration, 0, None, low_open=True)
        check_range(f"{key}.max_batch_seconds", self.max_batch_seconds, 0, None, low_open=True)
        check_range(f"{key}.pool_hours", self.pool_hours, 0, None)
        self.frontend.validate(f"{key}.frontend")
        self.specaugment.validate(f"{key}.specaugment")

    def duration_limit(self, model_max: float) -> float:
        """The longest utterance (seconds) a manifest line may hold: ``max_duration``, else the model's bound."""
        return model_max if self.max_duration is None else self.max_duration

    def _validate_sets(self, key: str) -> None:
        """Named sets, each with a dev set; names unique over targets and protected sets; the single-set keys left
        empty where a list replaces them."""
        seen: dict = {}
        for kind, singles in (("targets", ("new_dev", "new_test")), ("protected", ("original_dev", "original_test"))):
            sets = getattr(self, kind)
            for single in singles if sets else ():
                if getattr(self, single):
                    fail(f"{key}.{single}", getattr(self, single),
                         f"must be empty when {key}.{kind} lists the sets (it replaces {key}.{singles[0]} and "
                         f"{key}.{singles[1]}); list this one in {key}.{kind} instead, or set {key}.{single}=\"\"")
            for i, s in enumerate(sets):
                where = f"{key}.{kind}[{i}]"
                if not SET_NAME.fullmatch(s.name or ""):
                    fail(f"{where}.name", s.name, "must be a name of letters, digits, '_' and '-' (it names the set's "
                         "columns, summary lines and views)")
                if s.name in seen:
                    fail(f"{where}.name", s.name, f"is also the name of {seen[s.name]}; each set needs its own name")
                seen[s.name] = where
                if not s.dev:
                    fail(f"{where}.dev", s.dev, "must name the set's dev manifest (it is measured at every "
                         "evaluation)")
                if not s.test:
                    fail(f"{where}.test", s.test, "must name the set's test manifest (the winner is evaluated on it)")
                if kind == "targets":
                    for field_name in ("kappa", "kappa_mode"):
                        if getattr(s, field_name) is not None:
                            fail(f"{where}.{field_name}", getattr(s, field_name), "applies to protected sets only "
                                 f"(a target's WER is the objective); move it to {key}.protected")
                else:
                    if s.kappa is not None:
                        check_range(f"{where}.kappa", s.kappa, 0, None)
                    if s.kappa_mode is not None:
                        check_choice(f"{where}.kappa_mode", s.kappa_mode, ("absolute", "relative"))
        for name, kind in (("new", "targets"), ("original", "protected")):
            if not getattr(self, kind) and name in seen:  # the default set of the other kind has this name
                fail(f"{seen[name]}.name", name, f"is the name of the default set data.{name}_dev / data.{name}_test "
                     f"measures (data.{kind} is empty); choose another name")


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
            check_range(f"{key}.{name}", getattr(self, name), 1, None)
        if self.d_model % self.num_heads:
            fail(f"{key}.num_heads", self.num_heads, f"must divide d_model ({self.d_model})")
        if self.conv_kernel % 2 == 0 or self.conv_kernel < 1:
            fail(f"{key}.conv_kernel", self.conv_kernel, "must be a positive odd number")
        check_choice(f"{key}.subsampling_factor", self.subsampling_factor, (4, 8))
        check_range(f"{key}.dropout", self.dropout, 0, 1, high_open=True)
        check_range(f"{key}.vocab_size", self.vocab_size, 8, 32000)


@dataclass(frozen=True)
class WhisperOptions:
    """What the whisper backbone decodes with."""

    language: str = "en"  # the language token of a multilingual checkpoint (English-only ones ignore it)
    max_new_tokens: int = 128  # greedy decoding stops at <|endoftext|> or after this many tokens
    # > 0: no n-gram of this many tokens occurs twice in a transcript (transformers' no_repeat_ngram_size, the
    # guard deployments use against a decoder that loops); 0: off. Measure with the decoding you will ship.
    no_repeat_ngram_size: int = 0

    def validate(self, key: str) -> None:
        if not self.language or not re.fullmatch(r"[A-Za-z-]+", self.language):
            fail(f"{key}.language", self.language, "must be a language code such as en or de")
        check_range(f"{key}.max_new_tokens", self.max_new_tokens, 1, 440)
        check_range(f"{key}.no_repeat_ngram_size", self.no_repeat_ngram_size, 0, None)


NEMO_HEADS = ("auto", "rnnt", "ctc")


@dataclass(frozen=True)
class NemoOptions:
    """Which decoder of a NeMo model the nemo backbone trains and decodes with."""

    head: str = "auto"  # a hybrid RNNT-CTC model's decoder: rnnt | ctc; auto: the model's own (RNNT for a hybrid)

    def validate(self, key: str) -> None:
        check_choice(f"{key}.head", self.head, NEMO_HEADS)


@dataclass(frozen=True)
class ModelConfig:
    """The base model: its backbone (``name``), its weights (``checkpoint``) and, per backbone, the options that
    backbone reads (a section named after it; the others are ignored)."""

    name: str = "conformer_ctc"  # conformer_ctc | wav2vec2 | hf_ctc | whisper | nemo (raysearch_adapters.backbones)
    # conformer_ctc: 'demo' (shipped) or a checkpoint path; wav2vec2: a torchaudio.pipelines ASR bundle name
    # (e.g. WAV2VEC2_ASR_BASE_960H); hf_ctc, whisper: a folder written by save_pretrained or a Hugging Face hub
    # id (downloaded on first use where there is internet); nemo: a .nemo file or a NeMo pretrained model name
    # (downloaded by NeMo, e.g. stt_en_conformer_ctc_small)
    checkpoint: str = ""
    conformer: ConformerConfig = field(default_factory=ConformerConfig)  # conformer_ctc: the size `pretrain` builds
    whisper: WhisperOptions = field(default_factory=WhisperOptions)  # whisper: decoding
    nemo: NemoOptions = field(default_factory=NemoOptions)  # nemo: the decoder of a hybrid model

    def validate(self, key: str) -> None:
        check_choice(f"{key}.name", self.name, backbone_names())
        entry = BACKBONES[self.name]
        if self.checkpoint == "demo" and not entry.demo:
            fail(f"{key}.checkpoint", self.checkpoint, f"{key}.name={self.name} takes {entry.takes}")
        self.conformer.validate(f"{key}.conformer")
        self.whisper.validate(f"{key}.whisper")
        self.nemo.validate(f"{key}.nemo")


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
        check_hparam_fields(self, key, "adapter")
        check_choice(f"{key}.activation", self.activation, ACTIVATIONS)
        check_choice(f"{key}.norm_position", self.norm_position, ("pre", "post"))
        kind = ADAPTER_TYPES[self.type]
        for name in kind.zeroed:
            if getattr(self, name):
                fail(f"{key}.{name}", getattr(self, name), f"has no effect on type {self.type} ({kind.why_zeroed}): "
                     "set 0")
        if not self.positions:
            fail(f"{key}.positions", list(self.positions), f"needs at least one of {', '.join(POSITIONS)}")


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
        check_hparam_fields(self, key, "train")
        check_choice(f"{key}.lr_schedule", self.lr_schedule, SCHEDULES)
        check_range(f"{key}.decay_steps", self.decay_steps, 0, None)
        if self.lr_schedule == "wsd" and self.decay_steps % self.eval_every:
            fail(f"{key}.decay_steps", self.decay_steps, f"must be a multiple of {key}.eval_every "
                  f"({self.eval_every}): a cool-down ends on an evaluation")
        check_range(f"{key}.grad_clip", self.grad_clip, 0, None)
        check_range(f"{key}.max_batch_seconds", self.max_batch_seconds, 0, None, low_open=True)
        check_range(f"{key}.eval_every", self.eval_every, 1, None)
        check_choice(f"{key}.precision", self.precision, ("auto", "fp32", "bf16"))
        check_range(f"{key}.distill_seconds", self.distill_seconds, 0, None, low_open=True)


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
        check_range(f"{key}.epochs", self.epochs, 1, None)
        check_range(f"{key}.lr", self.lr, 0, None, low_open=True)
        check_range(f"{key}.warmup_steps", self.warmup_steps, 0, None)
        check_range(f"{key}.specaugment_from_step", self.specaugment_from_step, 0, None)
        check_range(f"{key}.weight_decay", self.weight_decay, 0, None)
        check_range(f"{key}.grad_clip", self.grad_clip, 0, None)
        check_range(f"{key}.max_batch_seconds", self.max_batch_seconds, 0, None, low_open=True)
        check_choice(f"{key}.precision", self.precision, ("auto", "fp32", "bf16"))
        check_range(f"{key}.max_minutes", self.max_minutes, 0, None)


@dataclass(frozen=True)
class ResourcesConfig:
    """Where trials run: CPU, a fraction of one GPU per trial, or N DDP workers per trial."""

    use_gpu: bool = False  # trials train on GPUs; the driver computes the caches on one
    num_workers: int = 1  # Ray Train workers per trial (DDP when > 1)
    gpus_per_worker: float = 1.0  # < 1 shares one GPU between trials (then num_workers must be 1)
    cpus_per_worker: float = 1.0  # CPUs Ray reserves per worker (what bounds concurrent CPU trials)
    # torch/OpenMP threads of each worker; 0 = its CPU share (cpus_per_worker, rounded down, at least 1). More
    # threads than CPUs make the threads wait on each other (a busy machine slows a search many times over).
    threads_per_worker: int = 0
    max_concurrent_trials: int = 0  # 0 = derived from the cluster's resources
    gpu_memory_fraction: float = 0.0  # per-process CUDA memory cap (0 = gpus_per_worker)
    # auto: a one-worker trial trains inside its Tune trial actor, which Tune reuses for the
    # next trial (no new processes, model or data loading per trial); ray_train: every trial
    # starts a Ray Train TorchTrainer (always the case when num_workers > 1).
    trial_runner: str = "auto"

    def worker_threads(self) -> int:
        """The torch/OpenMP threads each trial worker computes with: ``threads_per_worker``, else its CPU share."""
        return self.threads_per_worker or max(1, int(self.cpus_per_worker))

    def uses_ray_train(self) -> bool:
        """Whether trials run through a Ray Train ``TorchTrainer`` (else inside the reused Tune trial actor)."""
        return self.trial_runner == "ray_train" or self.num_workers > 1

    def validate(self, key: str) -> None:
        check_choice(f"{key}.trial_runner", self.trial_runner, ("auto", "ray_train"))
        check_range(f"{key}.num_workers", self.num_workers, 1, None)
        check_range(f"{key}.gpus_per_worker", self.gpus_per_worker, 0, None, low_open=True)
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            fail(f"{key}.gpus_per_worker", self.gpus_per_worker, "must be <= 1 or a whole number")
        if self.use_gpu and self.gpus_per_worker < 1 and self.num_workers > 1:
            fail(f"{key}.num_workers", self.num_workers,
                  "must be 1 when gpus_per_worker < 1 (DDP workers cannot share one GPU: NCCL refuses)")
        check_range(f"{key}.cpus_per_worker", self.cpus_per_worker, 0, None)
        check_range(f"{key}.threads_per_worker", self.threads_per_worker, 0, None)
        check_range(f"{key}.max_concurrent_trials", self.max_concurrent_trials, 0, None)
        check_range(f"{key}.gpu_memory_fraction", self.gpu_memory_fraction, 0, 1)


@dataclass(frozen=True)
class ResultsConfig:
    """Where results, the Optuna study and Ray's own storage go."""

    dir: str = "results"  # results/<search.name>/ holds trials.parquet, summary.json, ...
    study_storage: Optional[str] = None  # SQLAlchemy URL; None = sqlite optuna.db in the results folder
    storage_path: Optional[str] = None  # Ray Tune/Train storage (local, NFS, s3://); None = results folder

    def validate(self, key: str) -> None:
        if not self.dir:
            fail(f"{key}.dir", self.dir, "must be a folder path")
