"""Word and character error rates (jiwer), in percent."""

from __future__ import annotations

import zlib
from typing import List, Sequence, Tuple

import jiwer

# A hypothesis "loops" (repeats itself, as a fine-tuned decoder can until its token limit) when its text compresses
# this well: openai/whisper's compression_ratio_threshold, by which it re-decodes a segment.
LOOP_COMPRESSION_RATIO = 2.4


def utterance_error_counts(refs: Sequence[str], hyps: Sequence[str]) -> Tuple[List[int], List[int]]:
    """Per utterance: (word errors of the hypothesis: substitutions + deletions + insertions, reference words),
    from one alignment of the whole set. An utterance with an empty reference has 0 words (its hypothesis's
    words are all insertions); WERs leave it out (:func:`scored_errors`)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        return [], []
    out = jiwer.process_words(list(refs), list(hyps))
    errors = [sum(c.hyp_end_idx - c.hyp_start_idx if c.type == "insert" else c.ref_end_idx - c.ref_start_idx
                  for c in chunks if c.type != "equal") for chunks in out.alignments]
    return errors, [len(r.split()) for r in refs]


def scored_errors(errors: Sequence[int], words: Sequence[int]) -> List[int]:
    """The errors a WER counts: an utterance without reference words counts none."""
    return [e if w else 0 for e, w in zip(errors, words)]


def error_counts(refs: Sequence[str], hyps: Sequence[str]) -> Tuple[int, int]:
    """(word errors, reference words) counted by the WER: the sums that reduce correctly across shards and ranks."""
    errors, words = utterance_error_counts(refs, hyps)
    return sum(scored_errors(errors, words)), sum(words)


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


def compression_ratio(text: str) -> float:
    """UTF-8 bytes of ``text`` over its zlib-compressed bytes (openai/whisper's measure; 0 for an empty text)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def is_looping(text: str, threshold: float = LOOP_COMPRESSION_RATIO) -> bool:
    """Whether a hypothesis repeats itself: its :func:`compression_ratio` exceeds ``threshold``."""
    return compression_ratio(text) > threshold
