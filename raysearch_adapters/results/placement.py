"""Placement specs (``all``, ``top:K``, ``decoder:all``, ...): which blocks a placement adapts.

Pure Python on purpose: the adapters inject with it, and the dashboard reads the ``blocks``
column of ``trials.parquet`` with it, without importing torch. The spec's syntax (what can be
checked without a model, when the config loads) is ``space_values.parse_placement``.

A model's blocks form one or two *stacks* (its layout): CTC models have one, the encoder;
Whisper has an encoder and a decoder, indexed globally encoder first. A spec without a stack
(``top:2``) means the only stack of a one-stack model; on a two-stack model every part names
its stack (``encoder:top:2+decoder:all``), since "the top two blocks" of an encoder-decoder
has no obvious meaning.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

from raysearch_adapters.errors import UserError
from raysearch_adapters.space_values import BLOCK_FORMS, parse_placement

# (stack name, number of blocks) per stack in block order; an int n is one stack, the encoder.
Layout = Union[int, Sequence[Tuple[str, int]]]


class PlacementError(UserError):
    """A placement spec or position the backbone cannot satisfy."""


def layout_stacks(layout: Layout) -> List[Tuple[str, int]]:
    """``layout`` as ``[(stack, number of blocks), ...]``."""
    if isinstance(layout, int):
        return [("encoder", layout)]
    return [(str(name), int(n)) for name, n in layout]


def describe_layout(layout: Layout) -> str:
    """'6 blocks (0-5)' or 'encoder blocks 0-3 and decoder blocks 4-7' (global indices)."""
    stacks = layout_stacks(layout)
    if len(stacks) == 1:
        n = stacks[0][1]
        return f"{n} blocks (0-{n - 1})"
    parts, start = [], 0
    for name, n in stacks:
        parts.append(f"{name} blocks {start}-{start + n - 1}")
        start += n
    return " and ".join(parts)


def _select(form: str, numbers: List[int], n: int, bad) -> List[int]:
    """Indices 0..n-1 of one stack selected by one block-set form."""
    if form == "all":
        return list(range(n))
    if form == "every":
        return list(range(0, n, numbers[0]))
    if form in ("top", "bottom"):
        k = numbers[0]
        if k > n:
            raise bad(f"K must be between 1 and {n}")
        return list(range(n - k, n)) if form == "top" else list(range(k))
    if form == "window":
        a, b = numbers
        if b > n:
            raise bad(f"need 0 <= A < B <= {n}")
        return list(range(a, b))
    out_of_range = [i for i in numbers if i >= n]
    if out_of_range:
        raise bad(f"block {out_of_range[0]} does not exist")
    return sorted(numbers)


def parse_blocks(spec: str, layout: Layout) -> List[int]:
    """Global block indices (sorted) selected by ``spec`` in a backbone with ``layout``.

    Per stack: ``all``; ``top:K`` the last K blocks; ``bottom:K`` the first K; ``every:N`` blocks
    0, N, 2N, ...; ``window:A-B`` blocks A..B-1; ``0,2,5`` exactly those blocks (numbers count
    within the stack). ``STACK:SET`` picks the stack, ``+`` joins stacks.
    """
    stacks = layout_stacks(layout)

    def bad(why: str) -> PlacementError:
        return PlacementError(f"adapter.blocks: got {spec!r} ({why}); the model has {describe_layout(layout)}; "
                              f"allowed: {BLOCK_FORMS}")

    try:
        parts = parse_placement(spec)
    except ValueError as e:
        raise bad(str(e)) from None
    offsets, start = {}, 0
    for name, n in stacks:
        offsets[name] = (start, n)
        start += n
    out: List[int] = []
    for stack, form, numbers in parts:
        if stack is None:
            if len(stacks) > 1:
                names = ", ".join(name for name, _ in stacks)
                raise bad(f"this model has several stacks ({names}): name the stack, e.g. "
                          f"{stacks[-1][0]}:{spec} or {'+'.join(f'{s}:{spec}' for s, _ in stacks)}")
            stack = stacks[0][0]
        if stack not in offsets:
            raise bad(f"the model has no {stack} blocks")
        first, n = offsets[stack]
        out += [first + i for i in _select(form, numbers, n, bad)]
    return sorted(out)
