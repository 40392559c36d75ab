"""The "Fixed and broken" view: what the winner fixed and what it broke, utterance by utterance, from
``hypotheses.parquet``; and the one audio file of an utterance, for its player.

Per set (domain and split): how many utterances the winner fixed (fewer word errors than the base
model), broke (more) or left as they were; every utterance with the word alignment of both models on
one grid (jiwer's alignment, marked fixed/broken per word); the most frequent substitutions before and
after. The audio of an utterance is named by its row in ``hypotheses.parquet``, never by a path from
the request, and served only when it is a regular file that soundfile reads as audio and that is the
very file the row names (a link to another file is refused).
"""

from __future__ import annotations

import collections
import os
import stat
from pathlib import Path
from typing import List, Optional, Tuple

import soundfile

from raysearch_adapters.dashboard.data import ResultFileError, _read, _readable, result_file
from raysearch_adapters.errors import UserError
from raysearch_adapters.results import read_table
from raysearch_adapters.results.hypotheses import (DOMAINS, HYPOTHESES_FILE, HYPOTHESES_SCHEMA, OUTCOMES, SPLITS,
                                                   alignment_grids, outcome, substitutions, wer)

SUBSTITUTIONS_SHOWN = 10  # rows of each substitution table
# soundfile's format names -> the media type a browser plays
AUDIO_TYPES = {"WAV": "audio/wav", "WAVEX": "audio/wav", "FLAC": "audio/flac", "OGG": "audio/ogg",
               "MP3": "audio/mpeg", "AIFF": "audio/aiff"}


def _set_key(row: dict) -> Tuple[int, str]:
    """Sort key and label of a row's set: the search's default sets in a fixed order, then other named sets, then
    other manifests."""
    order = [(d, s) for s in SPLITS for d in DOMAINS]
    if (row["domain"], row["split"]) in order:
        return order.index((row["domain"], row["split"])), f"{row['domain']} {row['split']}"
    if row["domain"] is not None:
        return len(order), f"{row['domain']} {row['split']}"
    return len(order) + 1, Path(row["manifest"]).name


def _substitution_table(base: collections.Counter, winner: collections.Counter, model: str) -> List[list]:
    """The most frequent substitutions of ``model``: [reference word, hypothesis word, base count, winner count]."""
    counts = base if model == "base" else winner
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:SUBSTITUTIONS_SHOWN]
    return [[ref, hyp, base[(ref, hyp)], winner[(ref, hyp)]] for (ref, hyp), _ in top]


def _utterance(index: int, row: dict, grid) -> dict:
    delta = None if row["winner_errors"] is None else row["winner_errors"] - row["base_errors"]
    return {"row": index, "id": row["utterance_id"], "domain": row["domain"], "split": row["split"],
            "outcome": outcome(row), "base_errors": row["base_errors"], "winner_errors": row["winner_errors"],
            "base_looping": bool(row["base_looping"]), "winner_looping": row["winner_looping"],
            "delta": delta, "words": row["reference_words"], "manifest": row["manifest"], "line": row["line"],
            "audio": bool(row["audio_path"]), "offset": row["offset"], "duration": row["duration"],
            "grid": [[c.ref, *c.base, *(c.winner or (None, None)), c.mark] for c in grid]}


def _most_changed(utterances: List[dict], top: int) -> List[dict]:
    """The ``top`` most fixed and the ``top`` most broken utterances (the report's selection)."""
    fixed = [u for u in utterances if u["outcome"] == "fixed"][:top]
    broken = [u for u in utterances if u["outcome"] == "broken"][::-1][:top]
    # every utterance the winner loops on and the base does not, however many
    looping = [u for u in utterances if u["winner_looping"] and not u["base_looping"] and u not in fixed + broken]
    return fixed + broken[::-1] + looping


def fixed_broken_view(results_dir: Path, errors: List[str], top: Optional[int] = None) -> dict:
    """The view of ``hypotheses.parquet``: per set its counts, WERs, substitution tables and utterances (sorted
    by the change in word errors, the most fixed first); ``top``: only the ``top`` most fixed and most broken
    utterances of each set (the report). Unreadable files go to ``errors``."""
    path = _readable(Path(results_dir), HYPOTHESES_FILE, errors)
    if path is None:
        return {"message": f"no {HYPOTHESES_FILE} yet: the search writes it when it ends (the base model and the "
                           "winner decode the dev and test sets of both domains)"}
    table = _read(path, HYPOTHESES_SCHEMA, errors)
    if table is None:
        return {"message": f"{HYPOTHESES_FILE} cannot be read (see the messages at the top)"}
    by_set = collections.defaultdict(list)
    for i, row in enumerate(table.to_pylist()):
        by_set[_set_key(row)].append((i, row))
    sets = []
    for (_, label), part in sorted(by_set.items()):
        rows = [r for _, r in part]
        has_winner = all(r["winner_hypothesis"] is not None for r in rows)
        grids = alignment_grids([r["reference"] for r in rows], [r["base_hypothesis"] for r in rows],
                                [r["winner_hypothesis"] for r in rows] if has_winner else None)
        utterances = sorted((_utterance(i, r, g) for (i, r), g in zip(part, grids)),
                            key=lambda u: (u["delta"] or 0, -(u["base_errors"]), u["id"]))
        base_subs, winner_subs = substitutions(grids, "base"), substitutions(grids, "winner")
        counts = collections.Counter(outcome(r) for r in rows)
        sets.append({
            "label": label, "domain": rows[0]["domain"], "split": rows[0]["split"], "total": len(rows),
            "has_winner": has_winner, "counts": {o: counts[o] for o in OUTCOMES},
            "wer": {"base": wer(rows, "base"), "winner": wer(rows, "winner") if has_winner else None},
            "substitutions": {"base": _substitution_table(base_subs, winner_subs, "base"),
                              "winner": _substitution_table(base_subs, winner_subs, "winner") if has_winner else []},
            "utterances": utterances if top is None else _most_changed(utterances, top),
        })
    headline = "; ".join(f"{s['label']}: {s['counts']['fixed']} fixed, {s['counts']['broken']} broken"
                         for s in sets if s["has_winner"])
    return {"sets": sets, "headline": headline or "no winner: the base model's transcripts only",
            "shown": "all utterances" if top is None else f"the {top} most fixed and most broken of each set"}


def audio_file(results_dir: Path, row: int) -> Optional[Tuple[Path, str]]:
    """The audio file row ``row`` of ``hypotheses.parquet`` names, and its media type; None when there is no such
    row or file. Raises ResultFileError for a file the dashboard does not serve: hypotheses.parquet unreadable or
    a link out of the results folder, or the named file a link (or behind one) to another file, not a regular
    file, or not audio."""
    path = result_file(Path(results_dir), HYPOTHESES_FILE)
    if path is None:
        return None
    try:
        names = read_table(path, HYPOTHESES_SCHEMA).column("audio_path")
    except UserError as e:
        raise ResultFileError(str(e)) from None
    named = names[row].as_py() if 0 <= row < len(names) else None
    if not named:
        return None
    if not os.path.isabs(named) or os.path.realpath(named) != os.path.normpath(named):
        raise ResultFileError(f"{named}: not the file {HYPOTHESES_FILE} names (a link, or a path through one, to "
                              "another file); the dashboard plays only the very files it names")
    try:
        mode = os.stat(named).st_mode
    except OSError:
        return None
    if not stat.S_ISREG(mode):
        raise ResultFileError(f"{named}: not a regular file")
    try:  # soundfile is the project's audio reader: what it cannot read is not served as audio
        media = AUDIO_TYPES.get(soundfile.info(named).format, "application/octet-stream")
    except RuntimeError as e:  # soundfile's LibsndfileError: not audio it can read
        raise ResultFileError(f"{named}: not an audio file ({e})") from None
    return Path(named), media
