"""``hypotheses.parquet``: what the base model and the winner transcribed, utterance by utterance, and how
each transcript aligns word by word with its reference (jiwer's alignment, never a hand-written edit distance).

A search writes it once at its end: the dev and test sets of both domains, decoded by the base model
(adapters disabled) and by the winner through the winner's own measurement path, so the base dev
hypotheses are the ones the search measured (``search/run.py``). ``evaluate --hypotheses`` writes the
same schema for the manifests it is given (the adapter given as ``--adapter`` in the winner columns).
The dashboard's "Fixed and broken" view reads it; like the rest of ``results``, no torch here.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import jiwer
import pyarrow as pa

from raysearch_adapters.metrics import is_looping, utterance_error_counts
from raysearch_adapters.results.tables import _f

HYPOTHESES_FILE = "hypotheses.parquet"
DOMAINS = ("new", "original")
SPLITS = ("dev", "test")
# Outcomes of an utterance: the winner makes fewer, more or as many word errors as the base model.
OUTCOMES = ("fixed", "broken", "unchanged")

HYPOTHESES_SCHEMA = pa.schema([
    _f("domain", pa.string(), "the set: new | original, or a name in data.targets / data.protected; null: a "
                              "manifest given to evaluate that is none of the config's sets"),
    _f("split", pa.string(), "dev | test (evaluate: also train); null when domain is"),
    _f("manifest", pa.string(), "the manifest the utterance comes from (absolute path)", nullable=False),
    _f("line", pa.int64(), "where the utterance is in its manifest, numbered as the manifest's error messages "
                           "number it: line (1-based) of JSON-lines, row (0-based) of Parquet"),
    _f("utterance_id", pa.string(), "the manifest's id (its id/utt_id, else the audio path, #offset for a "
                                    "segment)", nullable=False),
    _f("audio_path", pa.string(), "the audio file, absolute with links resolved when written: the only file the "
                                  "dashboard plays for this row"),
    _f("offset", pa.float64(), "seconds into the audio file where the utterance starts"),
    _f("duration", pa.float64(), "seconds of audio of the utterance"),
    _f("reference", pa.string(), "the transcript as WER scores it (the manifest text, normalised)", nullable=False),
    _f("reference_words", pa.int64(), "words of the reference (an utterance with none counts in no WER)",
       nullable=False),
    _f("base_hypothesis", pa.string(), "greedy transcript of the base model (adapters disabled, on the winner's "
                                       "measurement path)", nullable=False),
    _f("base_errors", pa.int64(), "word errors of base_hypothesis: substitutions + deletions + insertions",
       nullable=False),
    _f("winner_hypothesis", pa.string(), "greedy transcript of the winner (evaluate: of the --adapter given); "
                                         "null: no winner (no feasible trial, or evaluate without --adapter)"),
    _f("winner_errors", pa.int64(), "word errors of winner_hypothesis; null when it is null"),
    _f("base_looping", pa.bool_(), "base_hypothesis repeats itself: its zlib compression ratio exceeds 2.4 "
                                   "(metrics.is_looping, openai/whisper's rule)"),
    _f("winner_looping", pa.bool_(), "winner_hypothesis repeats itself (as base_looping); null when it is null"),
])


@dataclass(frozen=True)
class Location:
    """Where an utterance is: its manifest line and its audio (the part of a row the decoder does not know)."""

    line: Optional[int]
    audio_path: Optional[str]
    offset: float
    duration: float


def _chunks(refs: Sequence[str], hyps: Sequence[str]) -> Tuple[list, list, list]:
    """jiwer's word alignment of each (reference, hypothesis) pair: (ref words, hyp words, chunks) per pair."""
    if not refs:
        return [], [], []
    out = jiwer.process_words(list(refs), list(hyps))
    return out.references, out.hypotheses, out.alignments


def word_errors(refs: Sequence[str], hyps: Sequence[str]) -> List[int]:
    """Word errors of each hypothesis against its reference (summed over the utterances with reference words, they
    are ``metrics.error_counts``'s)."""
    return utterance_error_counts(refs, hyps)[0]


def hypothesis_rows(domain: Optional[str], split: Optional[str], manifest: str, ids: Sequence[str],
                    references: Sequence[str], locations: Mapping[str, Location], base: Sequence[str],
                    winner: Optional[Sequence[str]]) -> List[dict]:
    """The rows of one decoded set (utterance ``i``: ``ids[i]``, ``references[i]``, ``base[i]``, ``winner[i]``)."""
    base_errors = word_errors(references, base)
    winner_errors = word_errors(references, winner) if winner is not None else None
    rows = []
    for i, uid in enumerate(ids):
        where = locations.get(uid, Location(None, None, 0.0, 0.0))
        rows.append({"domain": domain, "split": split, "manifest": manifest, "line": where.line, "utterance_id": uid,
                     "audio_path": where.audio_path, "offset": where.offset, "duration": where.duration,
                     "reference": references[i], "reference_words": len(references[i].split()),
                     "base_hypothesis": base[i], "base_errors": base_errors[i],
                     "winner_hypothesis": None if winner is None else winner[i],
                     "winner_errors": None if winner_errors is None else winner_errors[i],
                     "base_looping": is_looping(base[i]),
                     "winner_looping": None if winner is None else is_looping(winner[i])})
    return rows


def wer(rows: Iterable[Mapping], model: str) -> float:
    """Corpus WER (percent) of ``model`` (``base`` or ``winner``) over ``rows``: errors summed over utterances
    with a reference, divided by their words (the search's and ``evaluate``'s formula)."""
    scored = [r for r in rows if r["reference_words"] > 0]
    errors = sum(r[f"{model}_errors"] for r in scored)
    return 100.0 * errors / max(sum(r["reference_words"] for r in scored), 1)


def _by_set(rows: Sequence[Mapping]) -> List[Tuple[Optional[str], Optional[str], List[Mapping]]]:
    """``[(domain, split, its rows), ...]`` of the sets in ``rows``."""
    sets = sorted({(r["domain"], r["split"]) for r in rows}, key=str)
    return [(d, s, [r for r in rows if (r["domain"], r["split"]) == (d, s)]) for d, s in sets]


def set_wers(rows: Sequence[Mapping]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{model: {split: {domain: WER}}}`` of the sets in ``rows`` (winner only where it has hypotheses)."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for model in ("base", "winner"):
        for domain, split, part in _by_set(rows):
            if all(r[f"{model}_errors"] is not None for r in part):
                out.setdefault(model, {}).setdefault(split, {})[domain] = wer(part, model)
    return out


def loop_counts(rows: Sequence[Mapping]) -> Dict[str, Dict[str, Dict[str, int]]]:
    """``{model: {split: {domain: looping hypotheses}}}`` of the sets in ``rows``, plus ``new``: the winner's
    looping hypotheses whose base hypothesis does not loop (winner only where it has hypotheses)."""
    out: Dict[str, Dict[str, Dict[str, int]]] = {}
    for domain, split, part in _by_set(rows):
        out.setdefault("base", {}).setdefault(split, {})[domain] = sum(bool(r["base_looping"]) for r in part)
        if all(r["winner_looping"] is not None for r in part):
            out.setdefault("winner", {}).setdefault(split, {})[domain] = sum(bool(r["winner_looping"]) for r in part)
            out.setdefault("new", {}).setdefault(split, {})[domain] = sum(
                bool(r["winner_looping"]) and not r["base_looping"] for r in part)
    return out


def outcome(row: Mapping) -> Optional[str]:
    """``fixed`` (the winner makes fewer word errors than the base model), ``broken`` (more), ``unchanged``;
    None without a winner."""
    if row.get("winner_errors") is None:
        return None
    delta = row["winner_errors"] - row["base_errors"]
    return "fixed" if delta < 0 else "broken" if delta > 0 else "unchanged"


# One column of an utterance's alignment grid: a reference word (ref set) or a gap between reference
# words where a hypothesis inserted words (ref None). Per model: its words there and how: "=" right,
# "S" substituted, "D" deleted, "I" inserted, "" nothing (a gap where this model inserted nothing).
Cell = Tuple[str, str]  # (op, words)


@dataclass(frozen=True)
class Column:
    """One reference word, or one gap, with each model's words there; ``mark``: ``fixed`` (the base model
    erred here and the winner does not, or less), ``broken`` (the reverse) or ``""``."""

    ref: Optional[str]
    base: Cell
    winner: Optional[Cell]
    mark: str

    def errors(self, cell: Optional[Cell]) -> int:
        """Word errors of ``cell`` in this column."""
        if cell is None or cell[0] in ("", "="):
            return 0
        return len(cell[1].split()) if cell[0] == "I" else 1


def _cells(ref_words: List[str], hyp_words: List[str], chunks) -> Tuple[List[Cell], Dict[int, List[str]]]:
    """Per reference word its cell, and per gap (index of the next reference word) the inserted words."""
    cells: List[Cell] = [("=", w) for w in ref_words]
    inserted: Dict[int, List[str]] = collections.defaultdict(list)
    for c in chunks:
        if c.type == "insert":
            inserted[c.ref_start_idx] += hyp_words[c.hyp_start_idx:c.hyp_end_idx]
        elif c.type == "delete":
            for j in range(c.ref_start_idx, c.ref_end_idx):
                cells[j] = ("D", "")
        elif c.type == "substitute":  # jiwer's substitution chunks pair words one to one
            for j, h in zip(range(c.ref_start_idx, c.ref_end_idx), hyp_words[c.hyp_start_idx:c.hyp_end_idx]):
                cells[j] = ("S", h)
    return cells, inserted


def _mark(base_errors: int, winner_errors: Optional[int]) -> str:
    if winner_errors is None or winner_errors == base_errors:
        return ""
    return "fixed" if winner_errors < base_errors else "broken"


def alignment_grids(references: Sequence[str], base: Sequence[str],
                    winner: Optional[Sequence[str]]) -> List[List[Column]]:
    """Per utterance, the word alignment of the base model and the winner against the reference on one grid
    (gap, word, gap, word, ..., gap; gaps only where some model inserted), each column marked fixed/broken."""
    ref_words, base_words, base_chunks = _chunks(references, base)
    winner_aligned = _chunks(references, winner) if winner is not None else None
    grids = []
    for i, words in enumerate(ref_words):
        base_cells, base_ins = _cells(words, base_words[i], base_chunks[i])
        if winner_aligned is None:
            winner_cells, winner_ins = None, {}
        else:
            winner_cells, winner_ins = _cells(words, winner_aligned[1][i], winner_aligned[2][i])
        grid: List[Column] = []
        for j in range(len(words) + 1):
            if base_ins.get(j) or winner_ins.get(j):
                b = ("I", " ".join(base_ins[j])) if base_ins.get(j) else ("", "")
                w = None if winner_cells is None else ("I", " ".join(winner_ins[j])) if winner_ins.get(j) else ("", "")
                grid.append(Column(None, b, w, ""))
            if j < len(words):
                grid.append(Column(words[j], base_cells[j], None if winner_cells is None else winner_cells[j], ""))
        grids.append([Column(c.ref, c.base, c.winner, _mark(c.errors(c.base), None if c.winner is None
                                                                else c.errors(c.winner))) for c in grid])
    return grids


def substitutions(grids: Iterable[List[Column]], model: str) -> collections.Counter:
    """How often ``model`` (``base`` or ``winner``) substituted each (reference word, hypothesis word)."""
    counts: collections.Counter = collections.Counter()
    for grid in grids:
        for c in grid:
            cell = getattr(c, model)
            if c.ref is not None and cell is not None and cell[0] == "S":
                counts[(c.ref, cell[1])] += 1
    return counts
