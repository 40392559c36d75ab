"""The words and specs an adapter's placement is written in: positions, block-set specs
and LoRA target specs, each checked as far as that can be told without a model.

Below ``hparams`` (whose rules use these checks) and ``results.placement`` (which maps a spec
onto a model's blocks), so that a spec of the wrong form in ``search.space``, ``search.grid`` or
``adapter`` fails when the config loads, not in a trial or in the results table halfway through a
search.
"""

from __future__ import annotations

import re
from typing import Any, Callable, List, Optional, Tuple

# Where inside a block an adapter goes (what each backbone offers: docs/backbones.md):
# post = the block's output; mha = its self-attention branch (encoder blocks); ffn = its feed-forward
# branch; self_attn / cross_attn = a decoder block's self-attention / attention over the encoder.
POSITIONS = ("post", "mha", "ffn", "self_attn", "cross_attn")
# Stacks of blocks a placement can name (CTC models have an encoder only; Whisper has both).
STACKS = ("encoder", "decoder")
BLOCK_FORMS = ("all, top:K, bottom:K, every:N, window:A-B (blocks A..B-1), or a list such as 0,2,5; on a model "
               "with an encoder and a decoder, each prefixed by its stack and joined by '+', e.g. decoder:all, "
               "encoder:top:2, encoder:all+decoder:top:1")

TARGET_FORMS = "all (every linear layer a block lists), or names such as q,v or q,k,v,out,ffn_in,ffn_out"


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
