"""Word and character error rates (jiwer), in percent."""

from __future__ import annotations

from typing import Sequence, Tuple

import jiwer


def error_counts(refs: Sequence[str], hyps: Sequence[str]) -> Tuple[int, int]:
    """(word errors, reference words): the sums that reduce correctly across shards and ranks."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        return 0, 0
    out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    return out.substitutions + out.deletions + out.insertions, sum(len(r.split()) for r, _ in pairs)


def word_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """WER in percent over a corpus (errors summed over utterances / reference words)."""
    errors, words = error_counts(refs, hyps)
    return 100.0 * errors / max(words, 1)


def char_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """CER in percent over a corpus."""
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        return 0.0
    return 100.0 * jiwer.cer([r for r, _ in pairs], [h for _, h in pairs])
