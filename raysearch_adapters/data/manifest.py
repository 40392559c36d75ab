"""Manifests: NeMo JSON-lines (``.json``/``.jsonl``) and Parquet, read, validated and written; Hugging Face
datasets (:mod:`~raysearch_adapters.data.hf_datasets`) and lhotse cuts (:mod:`~raysearch_adapters.data.cuts`)
are read and validated as the same records.

A manifest line (or Parquet row) describes one utterance::

    {"audio_filepath": "audio/a.wav", "duration": 2.31, "text": "hello world"}

with optional ``offset`` (seconds into the file; the line is then a segment), ``speaker``
and ``id``/``utt_id``; other keys are kept in ``Utterance.extra``. Relative audio paths
are relative to the manifest's folder. Validation reports *every* bad line as
``file:line: what was found; what is expected`` (Parquet: ``file:row N``, N from 0; a dataset:
``dataset X, row N``; cuts: ``cuts X, line N``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from raysearch_adapters.data import cuts, hf_datasets
from raysearch_adapters.data.audio import segment_frames
from raysearch_adapters.data.source import FORMS, DatasetOptions, ManifestError, Source, is_hub
from raysearch_adapters.data.text import is_rewritten, normalize_text
from raysearch_adapters.fileio import atomic_write

log = logging.getLogger(__name__)

JSON_EXTENSIONS = (".json", ".jsonl")
PARQUET_EXTENSIONS = (".parquet",)
_KNOWN_KEYS = ("id", "utt_id", "audio_filepath", "duration", "text", "offset", "speaker")
_REQUIRED = "audio_filepath (string), duration (seconds) and text (string)"
# How many problems the error message lists; all of them are in ManifestError.problems.
_MAX_LISTED = 20


@dataclass(frozen=True)
class Utterance:
    """One manifest line: an audio file (or a segment of it) and its transcript."""

    id: str  # the line's id/utt_id, else audio_filepath (+ "#offset" for a segment)
    audio_filepath: str  # absolute path
    duration: float  # seconds
    text: str  # transcript as written in the manifest (normalize_text is applied by consumers)
    offset: float = 0.0  # seconds into the audio file where the utterance starts
    speaker: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict, hash=False)  # other keys, kept as they are

    def to_dict(self, relative_to: Optional[Path] = None) -> Dict[str, Any]:
        """NeMo manifest dict; the audio path is relative when it lies inside ``relative_to``."""
        audio = self.audio_filepath
        if relative_to is not None:
            folder = Path(os.path.abspath(relative_to))
            if Path(audio).is_relative_to(folder):
                audio = Path(audio).relative_to(folder).as_posix()
        d: Dict[str, Any] = {}
        if self.id != default_id(self.audio_filepath, self.offset):
            d["id"] = self.id
        d.update(audio_filepath=audio, duration=self.duration, text=self.text)
        if self.offset > 0:
            d["offset"] = self.offset
        if self.speaker is not None:
            d["speaker"] = self.speaker
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any], base_dir: Path) -> "Utterance":
        """Build from a manifest dict; relative audio paths are joined to ``base_dir``.

        Raises ManifestError naming the first bad field."""
        problems = field_problems(d, require_text=False)
        if problems:
            raise ManifestError(problems[0], problems)
        audio = os.path.abspath(os.path.join(base_dir, d["audio_filepath"]))
        offset = float(d.get("offset") or 0.0)
        uid = d.get("id", d.get("utt_id"))
        speaker = d.get("speaker")
        return cls(
            id=str(uid) if uid is not None else default_id(audio, offset),
            audio_filepath=audio,
            duration=float(d["duration"]),
            text=d.get("text") or "",
            offset=offset,
            speaker=None if speaker is None else str(speaker),
            extra={k: v for k, v in d.items() if k not in _KNOWN_KEYS},
        )


def default_id(audio_filepath: str, offset: float = 0.0) -> str:
    """The id of a line without ``id``/``utt_id``: its audio path, plus ``#offset`` for a segment."""
    return f"{audio_filepath}#{offset!r}" if offset > 0 else audio_filepath


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def field_problems(d: Any, require_text: bool = True) -> List[str]:
    """Key and type problems of one manifest dict, each as ``what was found; what is expected``.

    ``require_text=False``: a line may lack ``text`` (untranscribed audio, e.g. for distillation)."""
    if not isinstance(d, dict):
        return [f"found a JSON {type(d).__name__}; expected one JSON object with {_REQUIRED}"]
    problems = []
    for key in ("audio_filepath", "duration", "text") if require_text else ("audio_filepath", "duration"):
        if d.get(key) is None:
            problems.append(f"missing key '{key}'; expected {_REQUIRED} on each line")
    audio, duration, text = d.get("audio_filepath"), d.get("duration"), d.get("text")
    if audio is not None and (not isinstance(audio, str) or not audio):
        problems.append(f"audio_filepath is {audio!r}; expected a non-empty path string")
    if duration is not None and (not _is_number(duration) or duration <= 0):
        problems.append(f"duration is {duration!r}; expected a number of seconds > 0")
    if text is not None:
        if not isinstance(text, str):
            problems.append(f"text is {text!r}; expected a string")
        elif require_text and not normalize_text(text):
            problems.append(f"text {text!r} is empty after normalisation; expected words (letters or numbers)")
    offset = d.get("offset")
    if offset is not None and (not _is_number(offset) or offset < 0):
        problems.append(f"offset is {offset!r}; expected a number of seconds >= 0")
    speaker = d.get("speaker")
    if speaker is not None and (isinstance(speaker, bool) or not isinstance(speaker, (str, int))):
        problems.append(f"speaker is {speaker!r}; expected a string")
    for key in ("id", "utt_id"):
        uid = d.get(key)
        if uid is not None and (isinstance(uid, bool) or not isinstance(uid, (str, int)) or uid == ""):
            problems.append(f"{key} is {uid!r}; expected a non-empty string")
    return problems


def _audio_problem(record: Dict[str, Any], base_dir: Path, tolerance: float,
                   seen: Dict[str, Tuple[Optional[Any], str]]) -> Optional[str]:
    """Why a line's audio is missing, unreadable, empty or of another duration; None if fine or not checkable."""
    audio = record.get("audio_filepath")
    if not isinstance(audio, str) or not audio:
        return None
    path = os.path.abspath(os.path.join(base_dir, audio))
    if path not in seen:
        if not os.path.isfile(path):
            seen[path] = (None, f"audio file {path} not found; expected an existing wav/flac file "
                                "(relative paths are relative to the manifest's folder)")
        else:
            try:
                seen[path] = (sf.info(path), "")
            except (RuntimeError, sf.LibsndfileError) as exc:
                seen[path] = (None, f"audio file {path} is unreadable ({exc}); expected a wav/flac file")
    info, reason = seen[path]
    if info is None:
        return reason
    duration, offset = record.get("duration"), record.get("offset") or 0.0
    if not _is_number(duration) or not _is_number(offset):
        return None  # already reported as a field problem
    has_offset = record.get("offset") is not None
    # What load_audio would read: an empty file, or a segment past its end, would reach the
    # feature extractor as zero samples and fail there with a tensor-shape error.
    if segment_frames(info.frames, info.samplerate, offset, duration)[1] == 0:
        where = f" from offset {offset:.3f}s for {duration:.3f}s" if has_offset else ""
        return (f"audio {path} has no samples{where} (the file has {info.frames} at {info.samplerate} Hz); "
                "expected audio with sound in it")
    real = info.duration
    end = offset + duration
    if end > real + tolerance:
        what = f"offset + duration = {end:.3f}s" if has_offset else f"duration {duration:.3f}s"
        return f"{what} but the audio is {real:.3f}s long; expected at most {real:.3f}s (tolerance {tolerance}s)"
    if not has_offset and duration < real - tolerance:
        return (f"duration {duration:.3f}s but the audio is {real:.3f}s long; expected {real:.3f}s "
                f"+/- {tolerance}s (add 'offset' to mark a segment)")
    return None


def _json_records(path: Path) -> Iterator[Tuple[int, Any, Optional[str]]]:
    """(line number, parsed object or None, parse problem) for each non-blank line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                # Each line on its own: one line in another encoding is one bad line, not a bad file.
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, (f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                                     "expected a UTF-8 JSON object per line")
                continue
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield number, None, f"bad JSON ({exc.msg} at column {exc.colno}); expected one JSON object per line"


def _parquet_records(path: Path) -> Iterator[Tuple[int, Any, Optional[str]]]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"{path}: cannot read Parquet ({exc}); expected a Parquet manifest file") from exc
    for row, d in enumerate(table.to_pylist()):
        # Parquet columns are shared by all rows: a null means the row does not have the key.
        yield row, {k: v for k, v in d.items() if v is not None}, None


def _is_parquet(path: Path) -> bool:
    """Whether the manifest is Parquet (else JSON-lines); any other extension is a ManifestError."""
    suffix = path.suffix.lower()
    if suffix not in JSON_EXTENSIONS + PARQUET_EXTENSIONS:
        raise ManifestError(f"{path}: unknown manifest extension {path.suffix!r}; expected {FORMS}")
    return suffix in PARQUET_EXTENSIONS


def _nemo_source(path: Path) -> Source:
    parquet = _is_parquet(path)
    return Source(name=str(path), read=lambda seen: _parquet_records(path) if parquet else _json_records(path),
                  base_dir=path.parent, row="row" if parquet else "line",
                  at_format="{name}:row {number}" if parquet else "{name}:{number}",
                  report=path.with_name(path.name + ".skipped.jsonl"), fingerprint=path,
                  cache_stem=f"{path.parent.name}-{path.stem}")


def open_source(spec: os.PathLike | str, options: DatasetOptions = DatasetOptions(),
                require_text: bool = True) -> Source:
    """The source a manifest key names, in whichever format (docs/data.md, "Bring your data"); a missing one, or
    one without the columns it needs, is a ManifestError naming it, before any row is read."""
    if is_hub(spec):
        return hf_datasets.hub_source(str(spec), options, require_text)
    path = Path(spec)
    if any(c in str(spec) for c in "*?[") and not path.exists():
        files = sorted(path.parent.glob(path.name))
        if not files:
            raise ManifestError(f"{spec}: no file matches; expected {FORMS}")
        return hf_datasets.parquet_source(str(spec), files, options, require_text)
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return hf_datasets.saved_source(path, options, require_text)
        if (path / hf_datasets.METADATA).is_file():
            return hf_datasets.audiofolder_source(path, options, require_text)
        raise ManifestError(f"{path}: a folder without dataset_info.json (save_to_disk) or {hf_datasets.METADATA} "
                            f"(audiofolder); expected {FORMS}")
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; expected {FORMS}")
    if path.name.lower().endswith(cuts.GZIP_EXTENSIONS):
        return cuts.cuts_source(path, options, require_text)
    if _is_parquet(path):
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(f"{path}: cannot read Parquet ({exc}); expected a Parquet manifest file") from exc
        if "audio_filepath" not in names:
            return hf_datasets.parquet_source(str(path), [path], options, require_text)
    elif cuts.looks_like_cuts(path):
        return cuts.cuts_source(path, options, require_text)
    return _nemo_source(path)


def _too_long(record: Any, max_duration: Optional[float]) -> Optional[str]:
    duration = record.get("duration") if isinstance(record, dict) else None
    if max_duration is None or not _is_number(duration) or duration <= max_duration:
        return None
    return (f"duration {duration:.3f}s is over data.max_duration ({max_duration:g}s); expected at most "
            f"{max_duration:g}s: split the recording into utterances, or raise data.max_duration")


def read_manifest(path: os.PathLike | str | Source, on_error: str = "fail", check_audio: bool = True,
                  duration_tolerance: float = 0.25, report_path: os.PathLike | str | None = None,
                  require_text: bool = True, max_duration: Optional[float] = None,
                  options: DatasetOptions = DatasetOptions()) -> List[Utterance]:
    """Read and validate a manifest (any format :func:`open_source` accepts); ``on_error`` is ``fail`` (raise
    listing every problem) or ``skip``.

    ``require_text=False`` accepts lines without ``text`` (their text is ""); ``max_duration``: a line
    longer than that many seconds is a bad line (``data.max_duration``); ``options``: a dataset's columns
    and where its embedded audio is stored (written once every line is known to be good)."""
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error: got {on_error!r}; allowed: fail, skip")
    source = path if isinstance(path, Source) else open_source(path, options, require_text)
    name, where = source.name, source.row
    unit = f"{where}s"
    base_dir = source.base_dir
    utterances: List[Utterance] = []
    problems: List[Tuple[int, Optional[str], str]] = []  # (line, id, reason)
    first_line_of: Dict[str, int] = {}
    audio_seen: Dict[str, Tuple[Optional[Any], str]] = {}
    total = 0
    for number, record, parse_problem in source.read(audio_seen):
        total += 1
        if parse_problem:
            problems.append((number, None, parse_problem))
            continue
        found = field_problems(record, require_text)
        too_long = _too_long(record, max_duration)
        found += [too_long] if too_long else []
        if check_audio and isinstance(record, dict):
            reason = _audio_problem(record, base_dir, duration_tolerance, audio_seen)
            found += [reason] if reason else []
        if found:
            # The report names the line by its id, else by its audio path.
            d = record if isinstance(record, dict) else {}
            uid = d.get("id", d.get("utt_id", d.get("audio_filepath")))
            problems.extend((number, None if uid is None else str(uid), p) for p in found)
            continue
        utt = Utterance.from_dict(record, base_dir)
        if utt.id in first_line_of:
            problems.append((number, utt.id, f"duplicate id {utt.id!r} (first at {where} {first_line_of[utt.id]}); "
                                             f"expected unique ids"))
            continue
        first_line_of[utt.id] = number
        utterances.append(utt)
    if total == 0:
        raise ManifestError(f"{name}: the manifest is empty; expected at least one utterance")
    rewritten = sum(is_rewritten(u.text) for u in utterances)
    if rewritten:  # the references WER is scored against are these normalised texts: say so
        log.info("%s: normalised %d of %d texts beyond lower-casing (numbers, money, symbols, non-ASCII "
                 "letters spelled out)", name, rewritten, len(utterances))
    if not problems:
        source.store(u.audio_filepath for u in utterances)
        return utterances
    bad_lines = len({line for line, _, _ in problems})
    messages = [f"{source.at(line)}: {reason}" for line, _, reason in problems]
    if on_error == "fail":
        listed = messages[:_MAX_LISTED]
        more = len(messages) - len(listed)
        count = f" ({len(messages)} problems)" if len(messages) != bad_lines else ""
        summary = (f"{name}: {bad_lines} of {total} {unit} are bad{count}; fix them, "
                   f"or set data.on_error=skip to drop them and get a report")
        tail = [f"  ... and {more} more problems"] if more else []
        raise ManifestError("\n".join([summary] + [f"  {m}" for m in listed] + tail), messages)
    report = Path(report_path) if report_path is not None else source.report
    text = "".join(json.dumps({"line": line, "id": uid, "reason": reason}) + "\n" for line, uid, reason in problems)
    report_note = "; the problems:\n  " + "\n  ".join(messages)  # a hub dataset has no folder for a report
    if report is not None:
        try:
            atomic_write(report, lambda tmp: tmp.write_text(text, encoding="utf-8"))
            report_note = f"; report: {report}"
        except OSError as exc:
            report_note = f"; could not write the report {report} ({exc})"
    log.warning("%s: skipped %d of %d %s with problems (on_error=skip)%s", name, bad_lines, total, unit, report_note)
    if not utterances:
        raise ManifestError(f"{name}: all {total} {unit} are bad{report_note}; "
                            f"expected at least one usable utterance", messages)
    source.store(u.audio_filepath for u in utterances)
    return utterances


def line_of(path: os.PathLike | str, uid: str, options: DatasetOptions = DatasetOptions()) -> str:
    """``file:line`` (Parquet: ``file:row N``; a dataset: ``dataset X, row N``) of the utterance ``uid`` of a
    manifest, as :func:`read_manifest`'s messages name it."""
    source = open_source(path, options, require_text=False)
    return source.at(_lines(source)[uid][0])


def manifest_lines(path: os.PathLike | str,
                   options: DatasetOptions = DatasetOptions()) -> Dict[str, Tuple[int, Utterance]]:
    """Each well-formed utterance of a manifest by id, with its line (JSON-lines, from 1) or row (Parquet, from 0),
    numbered as :func:`read_manifest`'s messages do; nothing is written."""
    return _lines(open_source(path, options, require_text=False))


def _lines(source: Source) -> Dict[str, Tuple[int, Utterance]]:
    out: Dict[str, Tuple[int, Utterance]] = {}
    for number, record, parse_problem in source.read({}):
        if parse_problem is None and not field_problems(record, require_text=False):
            utt = Utterance.from_dict(record, source.base_dir)
            out.setdefault(utt.id, (number, utt))  # read_manifest keeps the first of a duplicated id
    return out


def write_manifest(path: os.PathLike | str, utterances: Iterable[Utterance]) -> Path:
    """Write a manifest atomically (format from the extension); audio paths inside its folder become relative."""
    path = Path(path)
    parquet = _is_parquet(path)
    rows = [u.to_dict(relative_to=path.parent) for u in utterances]
    if not parquet:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return path
    columns = dict.fromkeys(key for r in rows for key in r)  # every key of any row, in first-seen order
    try:
        table = pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in columns})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ManifestError(f"{path}: cannot store the manifest as Parquet ({exc}); "
                            f"expected each extra key to hold values of one type") from exc
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path
