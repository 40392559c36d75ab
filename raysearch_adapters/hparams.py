"""The searched hyperparameters: one row each, and everything derived from the rows.

A row says what a hyperparameter takes (its kind and the rule one value must pass), which adapter
types have it, which config field it sets in a trial (and so where its unsearched default comes
from), and how the results and the dashboard show it. From the rows come the ``search.space``
entries and their checks, the order in which Optuna suggests them, the typed config of each
trial, the columns of ``trials.parquet`` and the dashboard's trial table.

Adding a hyperparameter is adding a row: if its ``field`` is one the training code already reads
(say ``train.warmup_steps``), nothing else changes; a trial sets that field from its value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from raysearch_adapters.adapter_types import names as adapter_type_names
from raysearch_adapters.space_values import (BLOCK_FORMS, POSITIONS, TARGET_FORMS, block_spec_problem,
                                             targets_spec_problem)

Rule = Callable[[Any], Optional[str]]  # a value -> what is wrong with it ("must be ..."), or None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _must_be(test: Callable[[Any], bool], allowed: str) -> Rule:
    return lambda v: None if test(v) else f"must be {allowed}"


WHOLE_POSITIVE = _must_be(lambda v: _is_number(v) and float(v).is_integer() and v >= 1, "a whole number >= 1")
WHOLE_NON_NEGATIVE = _must_be(lambda v: _is_number(v) and float(v).is_integer() and v >= 0, "a whole number >= 0")
UNIT = _must_be(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
NON_NEGATIVE = _must_be(lambda v: _is_number(v) and v >= 0, "a number >= 0")
POSITIVE = _must_be(lambda v: _is_number(v) and v > 0, "a number > 0")
BOOLEAN = _must_be(lambda v: isinstance(v, bool), "true or false")


def one_of(values: Tuple[str, ...]) -> Rule:
    return lambda v: None if isinstance(v, str) and v in values else f"allowed: {', '.join(values)}"


def _block_spec(v: Any) -> Optional[str]:
    why = block_spec_problem(v)
    return None if why is None else f"a block-set spec ({why}); allowed: {BLOCK_FORMS}"


def _targets_spec(v: Any) -> Optional[str]:
    why = targets_spec_problem(v)
    return None if why is None else f"a targets spec ({why}); allowed: {TARGET_FORMS}"


@dataclass(frozen=True)
class HParam:
    """One searched hyperparameter (module docstring)."""

    name: str  # its key in search.space, search.start_points, trials.parquet and a trial's values
    kind: type  # int | float | str | bool: int and float ones may be searched as low..high ranges
    rule: Rule  # what one value must be
    field: str  # the config field a trial's value sets, "section.name"; unsearched, the field's value is used
    doc: str  # the trials.parquet column's description
    label: str  # the dashboard's column header
    types: Tuple[str, ...] = ()  # the adapter types that have it (others: not suggested, null); () = every type
    space: Dict[str, Any] = dataclasses.field(default_factory=dict)  # the default search.space entry ({}: unset)
    # A config field that holds a list of such values (adapter.positions): a trial's value is its one item.
    listed: bool = False

    @property
    def section(self) -> str:
        return self.field.split(".")[0]

    @property
    def key(self) -> str:
        return self.field.split(".")[1]

    @property
    def rangeable(self) -> bool:
        return self.kind in (int, float)

    def applies_to(self, adapter_type: Optional[str]) -> bool:
        return not self.types or adapter_type in self.types

    def from_config(self, cfg) -> Any:
        """The value this hyperparameter has when it is not searched: its config field's."""
        value = getattr(getattr(cfg, self.section), self.key)
        return value[0] if self.listed else value

    def to_field(self, value: Any) -> Any:
        """A trial's value as its config field holds it."""
        value = self.kind(value)
        return [value] if self.listed else value


_CONV = ("bottleneck", "parallel")  # the adapter types with a bottleneck branch

# The order is the order Optuna suggests them in: the type first, the parameters that depend on it after.
HPARAMS: Tuple[HParam, ...] = (
    HParam("type", str, one_of(adapter_type_names()), "adapter.type",
           "adapter type: bottleneck (serial), lora, parallel", "type"),
    HParam("dim", int, WHOLE_POSITIVE, "adapter.dim",
           "adapter bottleneck width h (bottleneck, parallel; null for lora)", "dim", types=_CONV,
           space={"choices": [32, 64, 128]}),
    HParam("rank", int, WHOLE_POSITIVE, "adapter.rank", "LoRA rank r (lora; null otherwise)", "LoRA rank",
           types=("lora",)),
    HParam("alpha", float, POSITIVE, "adapter.alpha",
           "LoRA scale alpha: the update is (alpha / rank) B A (lora; null otherwise)", "LoRA alpha", types=("lora",)),
    HParam("targets", str, _targets_spec, "adapter.targets",
           "LoRA target linear layers of each adapted block (lora; null otherwise)", "LoRA targets", types=("lora",)),
    HParam("blocks", str, _block_spec, "adapter.blocks", "block-set spec of the adapted blocks (all, top:K, ...)",
           "blocks", space={"choices": ["all", "every:2", "bottom:3"]}),
    HParam("position", str, one_of(POSITIONS), "adapter.positions",
           "where inside each block the adapter sits (post, mha, ffn; null for lora)", "position", types=_CONV,
           space={"choices": ["post", "ffn"]}, listed=True),
    HParam("lr", float, POSITIVE, "train.lr", "peak learning rate (AdamW)", "lr",
           space={"low": 1.5e-3, "high": 8e-3, "log": True}),
    HParam("warmup_steps", int, WHOLE_NON_NEGATIVE, "train.warmup_steps",
           "steps of linear learning-rate warm-up from 0 to lr", "warm-up"),
    HParam("dropout", float, UNIT, "adapter.dropout",
           "dropout on the adapter output (lora: rank dropout of the update)", "dropout", space={"value": 0.0}),
    HParam("stochastic_depth", float, UNIT, "adapter.stochastic_depth",
           "probability of skipping the adapter branch in training (bottleneck, parallel; null for lora)",
           "stoch. depth", types=_CONV, space={"value": 0.0}),
    HParam("l2_lambda", float, NON_NEGATIVE, "adapter.l2_lambda",
           "L2 penalty on the adapter output (bottleneck, parallel; null for lora)", "L2", types=_CONV,
           space={"value": 0.0}),
    HParam("weight_decay", float, NON_NEGATIVE, "train.weight_decay", "AdamW weight decay", "weight decay",
           space={"value": 0.0}),
    HParam("steps", int, WHOLE_POSITIVE, "train.steps",
           "the most optimiser steps the trial could train (with a budget: to the finalists' end; column `step` is "
           "how far it went)", "steps"),
    HParam("specaugment", bool, BOOLEAN, "train.specaugment", "SpecAugment on training batches", "SpecAugment"),
    HParam("replay", float, UNIT, "train.replay",
           "share of each training batch's audio from the replay set (original domain)", "replay",
           space={"low": 0.0, "high": 0.5}),
    HParam("distill_weight", float, NON_NEGATIVE, "train.distill_weight",
           "weight of KL(p_base || p_adapted) on original-domain audio (0 = off)", "distill λ",
           space={"low": 5.0, "high": 100.0, "log": True}),
)

BY_NAME: Dict[str, HParam] = {h.name: h for h in HPARAMS}
NAMES: Tuple[str, ...] = tuple(BY_NAME)
RANGE_PARAMS: Tuple[str, ...] = tuple(h.name for h in HPARAMS if h.rangeable)
INT_PARAMS: Tuple[str, ...] = tuple(h.name for h in HPARAMS if h.kind is int)
# The hyperparameters of some adapter types only, by type (a trial of another type has them null).
TYPE_PARAMS: Dict[str, Tuple[str, ...]] = {t: tuple(h.name for h in HPARAMS if h.types and t in h.types)
                                           for t in adapter_type_names()}


def applies_to(name: str, adapter_type: Optional[str]) -> bool:
    """Whether hyperparameter ``name`` is one of an adapter of ``adapter_type``."""
    return BY_NAME[name].applies_to(adapter_type)


def value_problem(name: str, value: Any) -> Optional[str]:
    """What is wrong with ``value`` for hyperparameter ``name`` ("must be ..."), or None when it fits."""
    return BY_NAME[name].rule(value)


def fields_of(section: str) -> List[HParam]:
    """The hyperparameters that set a field of config section ``section`` (``adapter``, ``train``)."""
    return [h for h in HPARAMS if h.section == section]
