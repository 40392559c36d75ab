"""What each searched hyperparameter takes, block-set specs included: pure checks of one value.

Below ``config`` (which reports a problem as a ConfigError naming the key) and
``results.placement`` (which maps a spec onto a model's blocks), so that a value of the wrong
kind in ``search.space``, ``search.grid`` or ``adapter`` fails when the config loads, not in a
trial or in the results table halfway through a search.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

# Where inside a block an adapter goes (what each backbone offers: docs/backbones.md):
# post = the block's output; mha = its self-attention branch (encoder blocks); ffn = its feed-forward
# branch; self_attn / cross_attn = a decoder block's self-attention / attention over the encoder.
POSITIONS = ("post", "mha", "ffn", "self_attn", "cross_attn")
# Stacks of blocks a placement can name (CTC models have an encoder only; Whisper has both).
STACKS = ("encoder", "decoder")
BLOCK_FORMS = ("all, top:K, bottom:K, every:N, window:A-B (blocks A..B-1), or a list such as 0,2,5; on a model "
               "with an encoder and a decoder, each prefixed by its stack and joined by '+', e.g. decoder:all, "
               "encoder:top:2, encoder:all+decoder:top:1")
RANGE_PARAMS = ("dim", "rank", "alpha", "lr", "dropout", "stochastic_depth", "l2_lambda", "weight_decay", "steps",
                "replay", "distill_weight")  # numbers
INT_PARAMS = ("dim", "rank", "steps")  # ranges of these are sampled as integers

ADAPTER_TYPES = ("bottleneck", "lora", "parallel")
# The hyperparameters that belong to some adapter types only; every other one applies to every type.
# A trial of another type does not have them: the space does not suggest them and its row holds null.
TYPE_PARAMS = {
    "bottleneck": ("dim", "position", "stochastic_depth", "l2_lambda"),
    "lora": ("rank", "alpha", "targets"),
    "parallel": ("dim", "position", "stochastic_depth", "l2_lambda"),
}
TARGET_FORMS = "all (every linear layer a block lists), or names such as q,v or q,k,v,out,ffn_in,ffn_out"


def applies_to(name: str, adapter_type: str) -> bool:
    """Whether hyperparameter ``name`` is one of an adapter of ``adapter_type`` (see :data:`TYPE_PARAMS`)."""
    owned = {n for names in TYPE_PARAMS.values() for n in names}
    return name not in owned or name in TYPE_PARAMS.get(adapter_type, ())


def parse_targets_spec(spec: str) -> List[str]:
    """The LoRA target names of a targets spec (``[]`` for ``all``); ValueError saying why it is not one."""
    s = str(spec).strip().replace(" ", "")
    if s == "all":
        return []
    names = s.split(",")
    if not all(re.fullmatch(r"[A-Za-z_]\w*", n) for n in names):
        raise ValueError("not a targets spec")
    if len(set(names)) != len(names):
        raise ValueError("a target is listed twice")
    return names


def targets_spec_problem(spec: Any) -> Optional[str]:
    """Why ``spec`` is not a LoRA targets spec (as far as that can be told without a model), else None."""
    return _spec_problem(spec, parse_targets_spec, "not a string")


def parse_block_spec(spec: str) -> Tuple[str, List[int]]:
    """The form of one block-set spec without a stack (all, top, bottom, every, window, list) and its numbers.

    Checks what needs no model (the syntax, K and N >= 1, A < B, no block twice) and raises
    ValueError saying why not; ``results.placement`` checks the numbers against a model's blocks."""
    s = str(spec).strip().replace(" ", "")
    if s == "all":
        return "all", []
    m = re.fullmatch(r"(top|bottom|every):(\d+)", s)
    if m:
        if int(m.group(2)) < 1:
            raise ValueError(f"{'N' if m.group(1) == 'every' else 'K'} must be >= 1")
        return m.group(1), [int(m.group(2))]
    m = re.fullmatch(r"window:(\d+)-(\d+)", s)
    if m:
        if int(m.group(1)) >= int(m.group(2)):
            raise ValueError("need A < B")
        return "window", [int(m.group(1)), int(m.group(2))]
    if re.fullmatch(r"\d+(,\d+)*", s):
        idx = [int(t) for t in s.split(",")]
        if len(set(idx)) != len(idx):
            raise ValueError("a block is listed twice")
        return "list", idx
    raise ValueError("not a block-set spec")


def parse_placement(spec: str) -> List[Tuple[Optional[str], str, List[int]]]:
    """The parts of a placement spec: ``[(stack or None, form, numbers), ...]``.

    ``top:2`` is one part without a stack; ``encoder:top:2+decoder:all`` two parts, each naming
    its stack (block numbers count from 0 within the stack). Raises ValueError saying why a
    spec is not one: a part that is no block-set spec, a stack named twice, parts without a stack
    joined by '+'."""
    parts = str(spec).strip().replace(" ", "").split("+")
    out: List[Tuple[Optional[str], str, List[int]]] = []
    for part in parts:
        m = re.fullmatch(r"([a-z_]+):(.*)", part)
        stack = m.group(1) if m and m.group(1) in STACKS else None
        form, numbers = parse_block_spec(m.group(2) if stack is not None else part)
        out.append((stack, form, numbers))
    stacks = [p[0] for p in out]
    if len(out) > 1 and None in stacks:
        raise ValueError("parts joined by '+' each name their stack (e.g. encoder:all+decoder:all)")
    if len(set(stacks)) != len(stacks):
        raise ValueError("a stack is named twice")
    return out


def _spec_problem(spec: Any, parse: Callable[[str], Any], not_a_string: str) -> Optional[str]:
    """Why ``parse`` refuses ``spec`` (``not_a_string`` when it is no string), else None."""
    if not isinstance(spec, str):
        return not_a_string
    try:
        parse(spec)
    except ValueError as e:
        return str(e)
    return None


def block_spec_problem(spec: Any) -> Optional[str]:
    """Why ``spec`` is not a placement spec (as far as that can be told without a model), else None."""
    # YAML reads a single block `3` as a number; the results table and placement need the spec text.
    return _spec_problem(spec, parse_placement, "not a string (quote a single block: '3')")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _must_be(test: Callable[[Any], bool], allowed: str) -> Callable[[Any], Optional[str]]:
    return lambda v: None if test(v) else f"must be {allowed}"


_WHOLE_POSITIVE = _must_be(lambda v: _is_number(v) and float(v).is_integer() and v >= 1, "a whole number >= 1")
_UNIT = _must_be(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
_NON_NEGATIVE = _must_be(lambda v: _is_number(v) and v >= 0, "a number >= 0")

_RULES: Dict[str, Callable[[Any], Optional[str]]] = {
    "type": _must_be(lambda v: isinstance(v, str) and v in ADAPTER_TYPES, f"one of {', '.join(ADAPTER_TYPES)}"),
    "dim": _WHOLE_POSITIVE,
    "rank": _WHOLE_POSITIVE,
    "alpha": _must_be(lambda v: _is_number(v) and v > 0, "a number > 0"),
    "targets": lambda v: None if (why := targets_spec_problem(v)) is None else
    f"a targets spec ({why}); allowed: {TARGET_FORMS}",
    "blocks": lambda v: None if (why := block_spec_problem(v)) is None else
    f"a block-set spec ({why}); allowed: {BLOCK_FORMS}",
    "position": _must_be(lambda v: isinstance(v, str) and v in POSITIONS, f"one of {', '.join(POSITIONS)}"),
    "lr": _must_be(lambda v: _is_number(v) and v > 0, "a number > 0"),
    "dropout": _UNIT,
    "stochastic_depth": _UNIT,
    "l2_lambda": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE,
    "steps": _WHOLE_POSITIVE,
    "specaugment": _must_be(lambda v: isinstance(v, bool), "true or false"),
    "replay": _UNIT,
    "distill_weight": _NON_NEGATIVE,
}


def value_problem(name: str, value: Any) -> Optional[str]:
    """What is wrong with ``value`` for hyperparameter ``name`` ("must be ..."), or None when it fits."""
    return _RULES[name](value)
