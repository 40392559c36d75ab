"""Block-set specs (``all``, ``top:K``, ...): which encoder blocks a placement adapts.

Pure Python on purpose: the adapters inject with it, and the dashboard reads the ``blocks``
column of ``trials.parquet`` with it, without importing torch.
"""

from __future__ import annotations

import re
from typing import List

from raysearch_adapters.errors import UserError

BLOCK_FORMS = "all, top:K, bottom:K, every:N, window:A-B (blocks A..B-1), or a list such as 0,2,5"


class PlacementError(UserError):
    """A block-set spec or position the backbone cannot satisfy."""


def parse_blocks(spec: str, num_blocks: int) -> List[int]:
    """Block indices (sorted) selected by ``spec`` in a backbone of ``num_blocks`` blocks.

    ``all``; ``top:K`` the last K blocks; ``bottom:K`` the first K; ``every:N`` blocks
    0, N, 2N, ...; ``window:A-B`` blocks A..B-1; ``0,2,5`` exactly those blocks.
    """
    s = str(spec).strip().replace(" ", "")

    def bad(why: str) -> PlacementError:
        return PlacementError(f"adapter.blocks: got {spec!r} ({why}); the model has {num_blocks} blocks "
                              f"(0-{num_blocks - 1}); allowed: {BLOCK_FORMS}")

    if s == "all":
        return list(range(num_blocks))
    m = re.fullmatch(r"(top|bottom|every):(\d+)", s)
    if m:
        kind, n = m.group(1), int(m.group(2))
        if kind == "every":
            if n < 1:
                raise bad("N must be >= 1")
            return list(range(0, num_blocks, n))
        if not 1 <= n <= num_blocks:
            raise bad(f"K must be between 1 and {num_blocks}")
        return list(range(num_blocks - n, num_blocks)) if kind == "top" else list(range(n))
    m = re.fullmatch(r"window:(\d+)-(\d+)", s)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if not 0 <= a < b <= num_blocks:
            raise bad(f"need 0 <= A < B <= {num_blocks}")
        return list(range(a, b))
    if re.fullmatch(r"\d+(,\d+)*", s):
        idx = [int(t) for t in s.split(",")]
        out_of_range = [i for i in idx if i >= num_blocks]
        if out_of_range:
            raise bad(f"block {out_of_range[0]} does not exist")
        if len(set(idx)) != len(idx):
            raise bad("a block is listed twice")
        return sorted(idx)
    raise bad("not a block-set spec")
