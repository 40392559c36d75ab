"""lhotse ``CutSet`` manifests (JSON-lines, optionally gzipped) as manifests: one utterance per supervision.

A supervision's utterance is its recording's audio from ``cut.start + supervision.start`` for
``supervision.duration`` seconds (a cut of a whole file with one supervision is the whole file).
The audio is read with soundfile like any manifest's (lhotse's own loading, transforms and
channel selection are not used, so a recording with transforms or several channels is a bad line).
``lhotse`` is imported only when such a file is read.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import soundfile as sf

from raysearch_adapters.data.source import (DatasetOptions, Record, Source, embedded_audio, import_reader,
                                            text_problem)
from raysearch_adapters.errors import first_line

GZIP_EXTENSIONS = (".jsonl.gz", ".json.gz")


def _lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.lower().endswith(GZIP_EXTENSIONS) else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from f


def looks_like_cuts(path: Path) -> bool:
    """Whether a JSON-lines file holds lhotse cuts (its first object has a recording or supervisions), not a
    NeMo manifest."""
    try:
        for line in _lines(path):
            if line.strip():
                first = json.loads(line)
                return isinstance(first, dict) and "audio_filepath" not in first and (
                    "supervisions" in first or "recording" in first)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, EOFError):
        return False
    return False


def _recording_audio(cut, options: DatasetOptions, source: Source,
                     seen: Dict[str, Tuple[Optional[Any], str]]) -> Tuple[Optional[str], Optional[str]]:
    """(audio file, None) of a cut's recording, or (None, what is wrong)."""
    rec = cut.recording
    if rec is None:
        return None, f"cut {cut.id!r} has no recording; expected a cut of a recording (audio)"
    if rec.transforms or rec.num_channels != 1 or len(rec.sources) != 1:
        return None, (f"recording {rec.id!r} has {rec.num_channels} channels, {len(rec.sources)} sources and "
                      f"{len(rec.transforms or [])} transforms; expected one mono source without transforms")
    src = rec.sources[0]
    if src.type == "file":
        return os.path.abspath(src.source), None
    if src.type == "memory":
        try:
            stored, info = embedded_audio(src.source, options.audio_folder())
        except (RuntimeError, sf.LibsndfileError) as exc:
            return None, f"recording {rec.id!r}: its audio bytes are unreadable ({first_line(exc)})"
        seen[stored] = (info, "")
        source.embedded[stored] = lambda data=src.source: data
        return stored, None
    return None, f"recording {rec.id!r} has a {src.type!r} source; expected a file or memory source"


def _records(path: Path, options: DatasetOptions, require_text: bool, source: Source,
             seen: Dict[str, Tuple[Optional[Any], str]]) -> Iterator[Record]:
    from lhotse import MonoCut
    from lhotse.serialization import deserialize_item

    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            cut = deserialize_item(json.loads(line))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            yield number, None, f"not a lhotse cut ({first_line(exc)}); expected one cut (JSON object) per line"
            continue
        if not isinstance(cut, MonoCut):
            yield number, None, f"a {type(cut).__name__}; expected a MonoCut (one recording)"
            continue
        if not cut.supervisions:
            yield number, None, (f"cut {cut.id!r} has no supervision; expected a supervision (text, start, duration) "
                                 "per utterance")
            continue
        audio, problem = _recording_audio(cut, options, source, seen)
        for sup in cut.supervisions:
            bad = problem or text_problem(sup.text, f"supervision {sup.id!r}: text", require_text)
            if bad:
                yield number, None, bad
                continue
            # always an offset: a supervision is a segment, whatever part of the file it covers
            record = {"id": sup.id, "audio_filepath": audio, "duration": sup.duration, "text": sup.text or "",
                      "offset": cut.start + sup.start}
            if sup.speaker is not None:
                record["speaker"] = sup.speaker
            yield number, record, None


def cuts_source(path: Path, options: DatasetOptions, require_text: bool) -> Source:
    """A lhotse CutSet file; messages name its lines (``cuts FILE, line N``), one cut a line."""
    import_reader("lhotse", "lhotse", f"cuts {path}")  # one error before any line is read when lhotse is missing
    source = Source(name=f"cuts {path}", read=lambda seen: None, base_dir=path.parent, row="line",
                    at_format="{name}, line {number}", report=path.with_name(path.name + ".skipped.jsonl"),
                    fingerprint=path, cache_stem=f"{path.parent.name}-{path.name.split('.')[0]}")
    source.read = lambda seen: _records(path, options, require_text, source, seen)
    return source
