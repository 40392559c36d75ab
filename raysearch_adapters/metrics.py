"""Word and character error rates (jiwer), in percent."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import jiwer


def utterance_error_counts(refs: Sequence[str], hyps: Sequence[str]) -> Tuple[List[int], List[int]]:
    """Per utterance: (word errors, reference words), from one alignment of the whole set; an utterance with an
    empty reference counts (0, 0), as it does in the corpus WER."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    scored = [i for i, r in enumerate(refs) if r.strip()]
    errors, words = [0] * len(refs), [0] * len(refs)
    if not scored:
        return errors, words
    out = jiwer.process_words([refs[i] for i in scored], [hyps[i] for i in scored])
    for i, chunks in zip(scored, out.alignments):
        errors[i] = sum(c.hyp_end_idx - c.hyp_start_idx if c.type == "insert" else c.ref_end_idx - c.ref_start_idx
                        for c in chunks if c.type != "equal")
        words[i] = len(refs[i].split())
    return errors, words


def error_counts(refs: Sequence[str], hyps: Sequence[str]) -> Tuple[int, int]:
    """(word errors, reference words): the sums that reduce correctly across shards and ranks."""
    errors, words = utterance_error_counts(refs, hyps)
    return sum(errors), sum(words)


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
