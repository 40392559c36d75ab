"""Adapter training and dev evaluation of one trial: plain PyTorch, no Ray.

Only the adapter parameters train (AdamW, linear warm-up then ``train.lr_schedule``, gradient
clipping, bf16 autocast when asked). A step's loss protects the original domain while the
adapters learn the new one (docs/protecting.md)::

    loss = mean over utterances of L(adapted, new batch  +  replay batch)      # train.replay
         + distill_weight * mean KL(p_base || p_adapted) on original audio   # train.distill_weight
         + the adapters' L2 term

where ``L`` is the backbone's own supervised loss (CTC for CTC models), the replay batch is
labelled original-domain audio (``replay`` of the batch's audio), and the teacher ``p_base``
is the same model with the adapters disabled, cached once per utterance (``train.prefix``).

Every ``eval_every`` steps both dev sets are decoded and ``report`` gets the metrics of that
evaluation *and* of the trial's best one so far: the feasible evaluation (degradation <= the
limit; with ``feasibility="upper"`` the degradation's upper confidence bound, a paired bootstrap
over the original-domain dev utterances) with the lowest new-domain WER, else the least
infeasible one. A trial's result is that best evaluation, and its checkpoint keeps that
evaluation's adapter weights.

Several ranks (DDP) are supported through one callable, ``all_reduce`` (an in-place sum
over ranks, e.g. ``torch.distributed.all_reduce``): it averages the adapter gradients and
sums the per-utterance error counts of each rank's shard of the dev sets, so every rank sees the same
WER and the same bounds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from raysearch_adapters.adapters.inject import AdapterHandle
from raysearch_adapters.config import SpecAugmentConfig, TrainConfig
from raysearch_adapters.data.batching import SecondsSampler, duration_batches
from raysearch_adapters.data.cache import FeatureSet, concat_padded
from raysearch_adapters.data.features import SpecAugment
from raysearch_adapters.metrics import is_looping
from raysearch_adapters.models.base import BackboneView, as_view
from raysearch_adapters.schedule import cooldown_factor, lr_factor
from raysearch_adapters.train.evaluate import autocast_context, evaluate
from raysearch_adapters.results.select import within_limits
from raysearch_adapters.train.objective import FEASIBILITY_MODES, degradation, degradation_bounds, evaluation_rank

AllReduce = Callable[[torch.Tensor], object]  # sums a tensor over ranks, in place
Report = Callable[[dict, dict], None]  # (metrics, train state to checkpoint beside the adapter weights)

# The metrics of one evaluation that the trial's best evaluation carries as its result.
# degradation_lower / _upper: its one-sided confidence bounds; held_degradation: what feasibility holds to the limit.
# new_loops: protected dev utterances whose hypothesis loops (metrics.is_looping) where the base model's does not.
# With several protected sets the single values are the binding set's (the one furthest over, or least under, its
# limit: binding_set), new_loops is their sum, and ``sets`` holds every set's own (:func:`evaluation_metrics`).
EVAL_KEYS = ("step", "eval_index", "dev_wer_new", "dev_wer_original", "base_dev_wer_original", "degradation",
             "degradation_lower", "degradation_upper", "held_degradation", "new_loops", "binding_set", "sets",
             "feasible")


@dataclass(frozen=True)
class Protected:
    """A protected dev set as a trial holds it: its name, the base model's per-utterance errors on it (or only its
    WER: then no bounds and no loop count), and the degradation it allows (``limit``, in ``kappa_mode`` units)."""

    name: str
    base: "Union[UtteranceErrors, float]"
    limit: float = math.inf
    kappa_mode: str = "absolute"

    @property
    def paired(self) -> bool:
        return isinstance(self.base, UtteranceErrors)

    @property
    def base_wer(self) -> float:
        return self.base.wer if self.paired else float(self.base)


class AdapterNoOpError(RuntimeError):
    """The adapters do not change the model's output: they are not in the forward path."""


class NonFiniteError(RuntimeError):
    """A training loss or an adapter's output is NaN or inf: the trial stops instead of training or measuring on it."""

    # What usually makes a loss or an output non-finite, and what to do about it.
    HINTS = ("a learning rate too high for these adapters (lower train.lr or search.space.lr's range; "
             "train.grad_clip > 0 bounds each step), or bad audio (NaN/inf samples or features: check the manifests' "
             "audio)")


@dataclass
class TrainSets:
    """What a trial trains on, each as the view's inputs (features, or frozen-prefix outputs at the view's k).

    ``replay``: labelled original-domain audio mixed into every batch (``train.replay`` of its
    audio); ``distill`` + ``teacher``: original-domain audio and the base model's cached outputs
    on it, for the distillation term (``train.distill_weight``); unused ones may be None."""

    new: FeatureSet
    replay: Optional[FeatureSet] = None
    distill: Optional[FeatureSet] = None
    teacher: Optional[FeatureSet] = None


def num_evals(steps: int, eval_every: int) -> int:
    """Dev evaluations of a trial of ``steps`` steps (one every ``eval_every``, and one at the end)."""
    return math.ceil(steps / eval_every)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass(frozen=True)
class UtteranceErrors:
    """Word errors and reference words of each utterance of a dev set, in its order, and whether its hypothesis
    loops (:func:`~raysearch_adapters.metrics.is_looping`; None: not known)."""

    errors: np.ndarray  # int64, one per utterance
    words: np.ndarray
    looping: Optional[np.ndarray] = None  # bool, one per utterance

    @property
    def wer(self) -> float:
        """The set's WER (percent): its errors over its reference words."""
        return float(100.0 * self.errors.sum() / max(int(self.words.sum()), 1))


def new_loops(adapted: UtteranceErrors, base: UtteranceErrors) -> Optional[int]:
    """Utterances whose hypothesis loops with the adapters and not without (None when either is not known)."""
    if adapted.looping is None or base.looping is None:
        return None
    return int(np.count_nonzero(adapted.looping & ~base.looping))


def dev_errors(view: BackboneView, feature_set: FeatureSet, batch_seconds: float, precision: str = "auto",
               rank: int = 0, world_size: int = 1, all_reduce: Optional[AllReduce] = None) -> UtteranceErrors:
    """Per-utterance errors of the whole ``feature_set``: each rank decodes its share, the ranks' counts are summed
    (each utterance is counted by one rank, the others add 0)."""
    device = _device_of(view)
    mine = list(range(rank, len(feature_set), world_size))
    result = evaluate(view, feature_set, mine, batch_seconds, device, precision)
    counts = torch.zeros(3, len(feature_set), dtype=torch.float64, device=device)
    counts[:, mine] = torch.tensor([result["utterance_errors"], result["utterance_words"],
                                    [float(is_looping(h)) for h in result["hypotheses"]]], dtype=torch.float64,
                                   device=device)
    if all_reduce is not None:
        all_reduce(counts)
    out = counts.cpu().numpy().astype(np.int64)
    return UtteranceErrors(out[0], out[1], out[2] > 0)


def dev_wer(view: BackboneView, feature_set: FeatureSet, batch_seconds: float, precision: str = "auto",
            rank: int = 0, world_size: int = 1, all_reduce: Optional[AllReduce] = None) -> float:
    """Dev WER (percent) of the whole ``feature_set`` (:func:`dev_errors`)."""
    return dev_errors(view, feature_set, batch_seconds, precision, rank, world_size, all_reduce).wer


def base_dev_errors(view: BackboneView, handle: AdapterHandle, dev_sets: Dict[str, FeatureSet], batch_seconds: float,
                    precision: str, rank: int = 0, world_size: int = 1,
                    all_reduce: Optional[AllReduce] = None) -> Dict[str, UtteranceErrors]:
    """Per-utterance errors of the base model through exactly the trial's path (same view, precision and
    batches), adapters disabled: a trial's degradation then carries no offset from another path or precision."""
    with handle.disabled():
        return {d: dev_errors(view, s, batch_seconds, precision, rank, world_size, all_reduce)
                for d, s in dev_sets.items()}


def base_dev_wers(view: BackboneView, handle: AdapterHandle, dev_sets: Dict[str, FeatureSet], batch_seconds: float,
                  precision: str, rank: int = 0, world_size: int = 1,
                  all_reduce: Optional[AllReduce] = None) -> Dict[str, float]:
    """Dev WERs of :func:`base_dev_errors`."""
    return {d: e.wer for d, e in base_dev_errors(view, handle, dev_sets, batch_seconds, precision, rank, world_size,
                                                 all_reduce).items()}


@torch.no_grad()
def check_in_forward_path(view: BackboneView, handle: AdapterHandle, inputs: torch.Tensor,
                          lengths: torch.Tensor) -> None:
    """Raise :class:`AdapterNoOpError` unless every adapter wrapper runs in this batch's forward pass
    and changes its module's output.

    One hook per wrapper, not a comparison of the model's output: one bypassed wrapper among
    many still changes the output through the others. A silently skipped adapter shows zero
    degradation and would look like the perfect feasible trial (NeMo#14848)."""
    view = as_view(view)
    device = _device_of(view)
    changed: Dict[str, bool] = {}
    finite: Dict[str, bool] = {}

    def hook(name: str):
        def record(module: torch.nn.Module, args, output) -> None:
            # The adapter's contribution: a bottleneck's or a LoRA update's output, or (a LoRA update of
            # fused weights) the weight updates themselves.
            deltas = [output] if isinstance(output, torch.Tensor) else [t for t in output if isinstance(t, torch.Tensor)]
            # NaN > 0 is False: a NaN contribution must not pass for none
            finite[name] = finite.get(name, True) and all(bool(torch.isfinite(d.detach()).all()) for d in deltas)
            changed[name] = changed.get(name, False) or any(bool(d.detach().abs().amax() > 0) for d in deltas)
        return record

    hooks = [w.adapter.register_forward_hook(hook(w.name)) for w in handle.wrappers]
    was_training = view.training
    view.eval()
    try:
        view.transcribe(inputs.to(device), lengths.to(device))
    finally:
        for h in hooks:
            h.remove()
        view.train(was_training)
    skipped = [w.name for w in handle.wrappers if w.name not in changed]
    zero = [name for name, c in changed.items() if not c]
    non_finite = [name for name, f in finite.items() if not f]
    if non_finite:
        raise NonFiniteError(f"the adapters at {_listed(non_finite)} output NaN/inf on a dev batch; their WERs "
                             f"would be meaningless, so the trial fails instead. Likely: {NonFiniteError.HINTS}")
    if skipped:
        raise AdapterNoOpError(_no_op_message(skipped, "never run in the forward pass"))
    if zero:
        raise AdapterNoOpError(_no_op_message(zero, "do not change their module's output"))


def _listed(names: List[str]) -> str:
    return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


def _no_op_message(names: List[str], what: str) -> str:
    return (f"the adapters at {_listed(names)} {what}: they are not in the forward path; this trial's WERs would be "
            "the base model's, so it fails instead of reporting them")


def _non_finite_loss_message(step: int, loss: float, terms: Dict[str, float], lr: float) -> str:
    # loss = supervised + distill_weight * distill + the adapters' L2 term: when the first two are finite, the last
    # is not
    bad = [f"{name} = {value}" for name, value in terms.items() if not math.isfinite(value)] or [
        "the adapters' L2 term (adapter.l2_lambda)"]
    return (f"step {step}: the training loss is {loss} (non-finite: {', '.join(bad)}; learning rate {lr:.3g}); the "
            f"trial stops instead of training on it. Likely: {NonFiniteError.HINTS}")


def _train_batches(train_set: FeatureSet, max_seconds: float, seed: int, rank: int,
                   world_size: int) -> Iterator[List[int]]:
    """Endless index batches, reshuffled each epoch; every rank gets the same number per epoch (DDP lockstep)."""
    epoch = 0
    while True:
        batches = duration_batches(train_set.durations, max_seconds, shuffle=True, seed=seed, epoch=epoch)
        for k in range(max(1, len(batches) // world_size)):
            yield batches[(k * world_size + rank) % len(batches)]
        epoch += 1


class BatchPlan:
    """The index batches of every step: new-domain audio, the replay share, the distillation batch.

    The new-domain part fills ``(1 - replay)`` of ``train.max_batch_seconds``; the replay part
    then takes utterances of the replay set until its audio is ``replay`` of the whole batch
    (within one utterance), so a 20 s batch with replay 0.5 holds ~10 s of each. The
    distillation batch is ``train.distill_seconds`` of the distillation set. Deterministic per
    (seed, rank): a resumed trial replays the same sequence."""

    def __init__(self, sets: TrainSets, cfg: TrainConfig, replay: float, distill: bool, rank: int, world_size: int):
        self.sets = sets
        self.replay = replay
        self.distill_seconds = cfg.distill_seconds if distill else 0.0
        self._new = _train_batches(sets.new, cfg.max_batch_seconds * (1.0 - replay), cfg.seed, rank, world_size)
        seed = [cfg.seed, rank]
        self._replay = SecondsSampler(sets.replay.durations, seed + [1]) if replay > 0 else None
        self._distill = SecondsSampler(sets.distill.durations, seed + [2]) if self.distill_seconds > 0 else None

    def next(self) -> Tuple[List[int], List[int], List[int]]:
        """(new-domain indices, replay indices, distillation indices) of the next step."""
        new = next(self._new)
        replay: List[int] = []
        if self._replay is not None:
            new_seconds = sum(self.sets.new.durations[i] for i in new)
            replay = self._replay.take(new_seconds * self.replay / (1.0 - self.replay))
        # Every step (and every rank) has a distillation batch: the loss keeps the same terms throughout.
        distill = self._distill.take(self.distill_seconds, at_least_one=True) if self._distill is not None else []
        return new, replay, distill


def step_inputs(sets: TrainSets, batch: Tuple[List[int], List[int], List[int]],
                specaugment: Optional[SpecAugment] = None):
    """One padded batch of a step's utterances: the labelled ones (new domain, then replay; SpecAugment
    on them when on) and then the distillation ones; their texts; the teacher's outputs for the latter."""
    new, replay, distill = batch
    parts = [sets.new.collate(new)] + ([sets.replay.collate(replay)] if replay else [])
    x, lengths = concat_padded([(x, lengths) for x, lengths, _ in parts])
    texts = [t for _, _, part_texts in parts for t in part_texts]
    if specaugment is not None:
        x = specaugment(x)
    teacher = teacher_lengths = None
    if distill:
        xd, ld, _ = sets.distill.collate(distill)
        teacher, teacher_lengths, _ = sets.teacher.collate(distill)
        x, lengths = concat_padded([(x, lengths), (xd, ld)])
    return x, lengths, texts, teacher, teacher_lengths


def step_loss(view: BackboneView, handle: AdapterHandle, sets: TrainSets, batch: Tuple[List[int], List[int], List[int]],
              distill_weight: float, device: torch.device, precision: str,
              specaugment: Optional[SpecAugment] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The loss of one step (see the module docstring) and its terms as floats; the model runs once."""
    x, lengths, texts, teacher, teacher_lengths = step_inputs(sets, batch, specaugment)
    with autocast_context(device, precision):
        supervised, kd = view.step_terms(x.to(device), lengths.to(device), texts,
                                         None if teacher is None else teacher.to(device),
                                         None if teacher_lengths is None else teacher_lengths.to(device))
        supervised = supervised.mean()
        loss = supervised
        terms = {"supervised": float(supervised.detach())}
        if kd is not None:
            kd = kd.mean()
            loss = loss + distill_weight * kd
            terms["distill"] = float(kd.detach())
    loss = loss + handle.aux_loss()
    return loss, terms


def evaluation_metrics(step: int, eval_index: int, measured: Dict[str, "UtteranceErrors"], targets: Sequence[str],
                       protected: Sequence[Protected], feasibility: str = "point", confidence: float = 0.95,
                       seed: int = 0, max_new_loops: Optional[int] = None) -> dict:
    """One evaluation's metrics (:data:`EVAL_KEYS`) from each dev set's per-utterance errors.

    ``dev_wer_new`` is the mean dev WER of the ``targets`` (the objective). Each protected set gets its degradation
    against its base, the confidence bounds (a paired bootstrap seeded by ``seed``, the step and the set's place:
    a re-run gives the same bounds), the degradation held to its limit (``feasibility``) and the looping utterances
    it added; ``sets`` holds them by name, targets first. The single values are the binding set's: the protected set with
    the largest held degradation over its limit (the first on ties); the evaluation is feasible when every set is
    within its limit and the sets' new loops are at most ``max_new_loops`` (None: not held)."""
    sets = [{"set": t, "role": "target", "dev_wer": measured[t].wer, "base_dev_wer": None, "degradation": None,
             "degradation_lower": None, "degradation_upper": None, "held_degradation": None, "limit": None,
             "new_loops": None, "feasible": None} for t in targets]
    for i, p in enumerate(protected):
        m = measured[p.name]
        deg = degradation(m.wer, p.base_wer, p.kappa_mode)
        low = high = loops = None
        if p.paired:
            low, high = degradation_bounds(m.errors, p.base.errors, m.words, p.kappa_mode, confidence,
                                           seed=[seed, step] + ([i] if i else []))
            loops = new_loops(m, p.base)
        held = high if feasibility == "upper" else deg
        sets.append({"set": p.name, "role": "protected", "dev_wer": m.wer, "base_dev_wer": p.base_wer,
                     "degradation": deg, "degradation_lower": low, "degradation_upper": high, "held_degradation": held,
                     "limit": p.limit, "new_loops": loops, "feasible": held <= p.limit})
    guarded = [s for s in sets if s["role"] == "protected"]
    binding = max(guarded, key=lambda s: s["held_degradation"] - s["limit"])  # max keeps the first of equals
    loops = [s["new_loops"] for s in guarded]
    current = {"step": step, "eval_index": eval_index,
               "dev_wer_new": float(np.mean([s["dev_wer"] for s in sets if s["role"] == "target"])),
               "dev_wer_original": binding["dev_wer"], "base_dev_wer_original": binding["base_dev_wer"],
               **{k: binding[k] for k in ("degradation", "degradation_lower", "degradation_upper", "held_degradation")},
               "new_loops": None if None in loops else int(sum(loops)), "binding_set": binding["set"],
               "sets": {s["set"]: s for s in sets}}  # by name, in order (a mapping: Tune's loggers flatten it)
    current["feasible"] = within_limits(current, binding["limit"], max_new_loops)
    return current


def _better(a: dict, b: Optional[dict], limit: float, max_new_loops: Optional[int]) -> bool:
    return b is None or evaluation_rank(a, limit, max_new_loops) < evaluation_rank(b, limit, max_new_loops)


def train_adapters(view: BackboneView, handle: AdapterHandle, sets: TrainSets, dev_sets: Dict[str, FeatureSet],
                   train_cfg: TrainConfig, base_original: Union[UtteranceErrors, float], report: Report, *,
                   limit: float = math.inf, max_new_loops: Optional[int] = None, patience: int = 0,
                   kappa_mode: str = "absolute", targets: Sequence[str] = ("new",),
                   protected: Optional[Sequence[Protected]] = None,
                   feasibility: str = "point", confidence: float = 0.95, eval_batch_seconds: float = 120.0,
                   specaugment_cfg: SpecAugmentConfig = SpecAugmentConfig(), resume: Optional[dict] = None,
                   rank: int = 0, world_size: int = 1, all_reduce: Optional[AllReduce] = None) -> dict:
    """Train ``handle``'s adapters for ``train_cfg.steps`` steps; evaluate and ``report`` as it goes.

    ``view`` is the model as the inputs of ``sets`` and ``dev_sets`` need it (a backbone: the whole
    model on features; a ``TopOfModel``: the top on frozen-prefix outputs). ``base_original`` is the base
    model's per-utterance errors on the original-domain dev set (or only its WER: then no bounds, and
    ``feasibility`` must be ``point``). ``limit`` is the degradation a feasible evaluation may have, held by
    ``feasibility``: the degradation itself (``point``) or its upper bound at ``confidence`` (``upper``); with
    ``max_new_loops`` an int, a feasible evaluation also adds at most that many looping hypotheses on the
    original-domain dev set (``new_loops``; needs ``base_original`` per utterance). ``dev_sets`` holds the ``new`` and
    ``original`` dev sets. ``train_cfg`` is the trial's (its searched values in their fields: ``lr``,
    ``steps``, ``replay``, ``distill_weight``, ...). ``resume`` is a train state passed to an earlier
    ``report``; the adapter weights must already be loaded. Returns the last report's metrics.
    ``patience`` (> 0): after that many evaluations in a row that did not improve on its best one the
    trial ends (its last report ``final``), or with ``train.lr_schedule=wsd`` cools down over
    ``train.decay_steps`` steps and then ends.

    Each report's metrics hold this evaluation's values (``eval_*``) and the trial's best
    evaluation so far (``dev_wer_new``, ``degradation``, ``best_step``, ...); the train state
    holds that best evaluation's adapter weights (``best_state_dict``)."""
    if feasibility not in FEASIBILITY_MODES:
        raise ValueError(f"feasibility: got {feasibility!r}; allowed: {', '.join(FEASIBILITY_MODES)}")
    if protected is None:
        protected = [Protected("original", base_original, limit, kappa_mode)]
    paired = all(p.paired for p in protected)
    if feasibility == "upper" and not paired:
        raise ValueError("feasibility='upper' needs the base model's per-utterance errors (base_dev_errors), "
                         "not only its WER")
    if max_new_loops is not None and not paired:
        raise ValueError("max_new_loops needs the base model's per-utterance errors and loops (base_dev_errors), "
                         "not only its WER")
    view = as_view(view)
    device = _device_of(view)
    steps, lr = train_cfg.steps, train_cfg.lr
    replay, distill_weight = train_cfg.replay, train_cfg.distill_weight
    params = list(handle.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=train_cfg.weight_decay)
    specaugment = SpecAugment(specaugment_cfg).train() if train_cfg.specaugment else None
    step, eval_index, best, best_state = 0, 0, None, None
    # wsd: the step its cool-down starts (None: not yet), and the step the trial then ends
    decay_steps = train_cfg.decay_steps if train_cfg.lr_schedule == "wsd" else 0
    decay_start, end = None, steps
    torch.manual_seed(train_cfg.seed)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        step, eval_index = int(resume["step"]), int(resume["eval_index"])
        best, best_state = resume["best"], resume["best_state_dict"]
        decay_start, end = resume.get("decay_start"), int(resume.get("end", steps))
        torch.set_rng_state(resume["rng"])  # SpecAugment, dropout, stochastic depth continue as uninterrupted
    plan = BatchPlan(sets, train_cfg, replay, distill_weight > 0, rank, world_size)
    for _ in range(step):  # the same batch sequence as an uninterrupted run
        plan.next()
    if step >= end or (resume is not None and resume["metrics"].get("final")):
        # the run had finished when its trial was interrupted: report its result again
        report(resume["metrics"], resume)
        return resume["metrics"]
    probe = dev_sets[targets[0]].collate(range(min(2, len(dev_sets[targets[0]]))))[:2]
    start = time.monotonic()
    sums: Dict[str, float] = {}
    count = 0
    metrics: dict = {}
    handle.train()
    while step < end:
        if decay_steps and decay_start is None and step >= steps - decay_steps:
            decay_start = max(0, steps - decay_steps)  # the trial's last possible steps: cool down before them
        current_lr = lr * lr_factor(train_cfg.lr_schedule, step, train_cfg.warmup_steps, steps)
        if decay_start is not None:
            current_lr *= cooldown_factor(step, decay_start, end - decay_start)
        for group in optimizer.param_groups:
            group["lr"] = current_lr
        loss, terms = step_loss(view, handle, sets, plan.next(), distill_weight, device, train_cfg.precision,
                                specaugment)
        if not torch.isfinite(loss):
            raise NonFiniteError(_non_finite_loss_message(step + 1, float(loss.detach()), terms, current_lr))
        if not loss.requires_grad:
            raise AdapterNoOpError(_no_op_message(handle.targeted, "receive no gradient"))
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        if all_reduce is not None:
            for p in params:
                if p.grad is None:  # a branch skipped by stochastic depth on this rank only
                    p.grad = torch.zeros_like(p)
                all_reduce(p.grad)
                p.grad /= world_size
        if train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
        optimizer.step()
        for name, value in {"loss": float(loss.detach()), **terms}.items():
            sums[name] = sums.get(name, 0.0) + value
        count += 1
        step += 1
        if step % train_cfg.eval_every == 0 or step == end:
            eval_index += 1
            handle.eval()
            check_in_forward_path(view, handle, *probe)
            measured = {name: dev_errors(view, dev_sets[name], eval_batch_seconds, train_cfg.precision, rank,
                                         world_size, all_reduce) for name in [*targets, *(p.name for p in protected)]}
            handle.train()
            means = _mean_over_ranks(sums, count, device, all_reduce)
            current = evaluation_metrics(step, eval_index, measured, targets, protected, feasibility, confidence,
                                         train_cfg.seed, max_new_loops)
            if _better(current, best, limit, max_new_loops):
                best, best_state = current, handle.state_dict()
            # Patience: this many evaluations since the best one, none better: the trial has stopped improving.
            # It ends now, or (wsd) cools down first; once cooling down it finishes the cool-down.
            stalled = patience > 0 and eval_index - best["eval_index"] >= patience and decay_start is None
            if stalled and decay_steps:
                decay_start, end = step, min(steps, step + decay_steps)
            final = step >= end or (stalled and not decay_steps)
            metrics = {"final": final, "step": step, "eval_index": eval_index, "lr": current_lr,
                       "train_loss": means["loss"], "supervised_loss": means["supervised"],
                       "distill_loss": means.get("distill"), "time_s": time.monotonic() - start,
                       **{f"eval_{k}": current[k] for k in EVAL_KEYS[2:]},
                       **{k: best[k] for k in EVAL_KEYS[2:]}, "best_step": best["step"],
                       "best_eval_index": best["eval_index"]}
            sums, count = {}, 0
            report(metrics, {"optimizer": optimizer.state_dict(), "step": step, "eval_index": eval_index,
                             "metrics": metrics, "best": best, "best_state_dict": best_state,
                             "rng": torch.get_rng_state(), "decay_start": decay_start, "end": end})
            if final:
                break
    handle.eval()
    return metrics


def _mean_over_ranks(sums: Dict[str, float], count: int, device: torch.device,
                     all_reduce: Optional[AllReduce]) -> Dict[str, float]:
    names = sorted(sums)
    t = torch.tensor([sums[n] for n in names] + [count], dtype=torch.float64, device=device)
    if all_reduce is not None:
        all_reduce(t)  # the mean over every rank's steps
    return {n: float(t[i] / t[-1].clamp(min=1)) for i, n in enumerate(names)}

