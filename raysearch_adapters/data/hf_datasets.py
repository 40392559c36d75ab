"""Hugging Face datasets as manifests: a ``save_to_disk`` folder, Parquet files with an Audio column, an
``audiofolder`` (metadata.csv beside the audio files) and ``hf://ORG/NAME?config=C&split=S`` on the hub.

One utterance per row: the audio column (``data.audio_column``) and the transcript column
(``data.text_column``). The audio is never decoded by ``datasets`` (its decoder, torchcodec in
datasets 4+, changes samples): the Audio column is read as its stored ``{bytes, path}``, bytes are
stored once as a file named by their hash and read with soundfile like any manifest's audio, so a
dataset gives the samples its NeMo manifest would. ``datasets`` is imported only for a saved
dataset or a hub id.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from raysearch_adapters.data.source import (HUB_PREFIX, DatasetOptions, ManifestError, Record, Source, audio_record,
                                            embedded_audio, import_reader, text_problem)
from raysearch_adapters.errors import first_line

METADATA = "metadata.csv"  # an audiofolder's transcripts: a file_name column, and the text column
_ROWS_PER_BATCH = 64  # rows converted to Python at a time (each holds its audio bytes)


def _hf_audio_columns(schema: pa.Schema) -> List[str]:
    """The columns a dataset's features declare as Audio (Hugging Face metadata), else its {bytes, path} structs."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta:
        features = json.loads(meta).get("info", {}).get("features", {})
        declared = [name for name, f in features.items() if isinstance(f, dict) and f.get("_type") == "Audio"]
        if declared:
            return declared
    return [f.name for f in schema if pa.types.is_struct(f.type) and {"bytes", "path"} <= {c.name for c in f.type}]


def _check_columns(name: str, schema: pa.Schema, options: DatasetOptions, require_text: bool) -> None:
    """One error naming the dataset for an audio or text column it does not have (listing those it has)."""
    columns = ", ".join(schema.names)
    audio = _hf_audio_columns(schema)
    if options.audio_column not in schema.names:
        if not audio:
            raise ManifestError(f"{name} has no audio: no Audio column among its columns ({columns}); expected an "
                                "Audio column (cast_column(..., Audio())) or audio file paths, named by "
                                "data.audio_column")
        raise ManifestError(f"{name}: no column {options.audio_column!r} (data.audio_column); its columns: "
                            f"{columns}; Audio columns: {', '.join(audio)}; set data.audio_column to one of them")
    kind = schema.field(options.audio_column).type
    if not (options.audio_column in audio or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ManifestError(f"{name}: column {options.audio_column!r} (data.audio_column) holds {kind}; expected an "
                            f"Audio column (bytes, path) or audio file paths; Audio columns: "
                            f"{', '.join(audio) or 'none'}")
    if require_text and options.text_column not in schema.names:
        raise ManifestError(f"{name}: no column {options.text_column!r} (data.text_column); its columns: {columns}; "
                            "set data.text_column to the transcript column")


def _audio(value: Any, column: str, base_dir: Path, options: DatasetOptions, source: Source,
           seen: Dict[str, Tuple[Optional[Any], str]], getter) -> Tuple[Optional[str], Optional[str]]:
    """(audio file, None) of one row's audio value, or (None, what is wrong); seeds ``seen`` with its info."""
    data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, value)
    if data:
        try:
            stored, info = embedded_audio(data, options.audio_folder())
        except (RuntimeError, sf.LibsndfileError) as exc:
            return None, (f"column {column!r}: its audio bytes ({len(data)}, {path or 'no path'}) are unreadable "
                          f"({first_line(exc)}); expected wav/flac audio")
        seen[stored] = (info, "")
        source.embedded[stored] = getter
        return stored, None
    if not path:
        return None, f"column {column!r} is empty; expected audio (bytes or a file path)"
    path = os.path.abspath(os.path.join(base_dir, path))
    try:
        seen[path] = (sf.info(path), "")
    except (RuntimeError, sf.LibsndfileError) as exc:
        found = f"is unreadable ({first_line(exc)})" if os.path.isfile(path) else "not found"
        return None, (f"column {column!r}: audio file {path} {found}; expected a wav/flac file (relative paths are "
                      "relative to the dataset's folder)")
    return path, None


def _table_records(table: pa.Table, source: Source, options: DatasetOptions, require_text: bool,
                   seen: Dict[str, Tuple[Optional[Any], str]]) -> Iterator[Record]:
    audio_col, text_col = options.audio_column, options.text_column
    has_text, has_id = text_col in table.column_names, "id" in table.column_names
    columns = [audio_col] + [c for c, there in ((text_col, has_text), ("id", has_id)) if there and c != audio_col]
    row = 0
    for batch in table.select(columns).to_batches(_ROWS_PER_BATCH):
        for values in batch.to_pylist():
            def getter(r=row):
                return table.column(audio_col)[r].as_py()["bytes"]

            audio, problem = _audio(values[audio_col], audio_col, source.base_dir, options, source, seen, getter)
            text = values.get(text_col) if has_text else ""
            problem = problem or text_problem(text, f"column {text_col!r}", require_text)
            if problem:
                yield row, None, problem
            else:
                uid = values.get("id") if has_id else f"row {row}"
                yield row, audio_record(audio, seen[audio][0], text or "", uid), None
            row += 1


def _table_source(name: str, table_of, base_dir: Path, options: DatasetOptions, require_text: bool,
                  cache_stem: str, report: Optional[Path]) -> Source:
    """A source whose rows are those of an Arrow table (``table_of()``, read once the columns are checked)."""
    table = table_of()
    _check_columns(name, table.schema, options, require_text)
    source = Source(name=name, read=lambda seen: None, base_dir=base_dir, row="row", at_format="{name}, row {number}",
                    report=report, cache_stem=cache_stem)
    source.read = lambda seen: _table_records(table, source, options, require_text, seen)
    return source


def parquet_source(spec: str, files: List[Path], options: DatasetOptions, require_text: bool) -> Source:
    """Parquet files of a Hugging Face dataset (``Dataset.to_parquet``, the hub's ``data/*.parquet``), in order."""
    def read() -> pa.Table:
        try:
            return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(f"dataset {spec}: cannot read Parquet ({first_line(exc)}); expected Parquet files of "
                                "one dataset") from exc
    first = files[0]
    return _table_source(f"dataset {spec}", read, first.parent, options, require_text,
                         f"{first.parent.name}-{first.stem}", first.with_name(first.stem + ".skipped.jsonl"))


def _dataset_table(name: str, dataset, options: DatasetOptions) -> pa.Table:
    """The Arrow table of a ``datasets.Dataset``, its Audio column cast to ``decode=False`` (never decoded)."""
    from datasets import Audio

    if isinstance(dataset.features.get(options.audio_column), Audio):
        dataset = dataset.cast_column(options.audio_column, Audio(decode=False))
    table = dataset.with_format("arrow")[:]
    meta = {b"huggingface": json.dumps({"info": {"features": dataset.features.to_dict()}}).encode()}
    return table.replace_schema_metadata(meta)


def saved_source(path: Path, options: DatasetOptions, require_text: bool) -> Source:
    """A ``Dataset.save_to_disk`` folder (a ``DatasetDict``'s folder is refused, naming its splits)."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise ManifestError(f"dataset {path} is a DatasetDict of the splits {', '.join(splits)}; expected one split's "
                            f"folder, e.g. {path / (splits[0] if splits else 'train')}")
    name = f"dataset {path}"
    datasets = import_reader("datasets", "hf", name)
    return _table_source(name, lambda: _dataset_table(name, datasets.load_from_disk(str(path)), options), path,
                         options, require_text, f"{path.parent.name}-{path.name}",
                         path.with_name(path.name + ".skipped.jsonl"))


def audiofolder_source(path: Path, options: DatasetOptions, require_text: bool) -> Source:
    """An ``audiofolder``: audio files and a metadata.csv naming them (``file_name``) with their transcripts."""
    name = f"dataset {path}"
    with open(path / METADATA, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0].keys()) if rows else []
    if "file_name" not in columns:
        raise ManifestError(f"{name}: {METADATA} has no file_name column (its columns: {', '.join(columns) or 'none'})"
                            "; expected file_name (audio paths relative to the folder) and a transcript column")
    if require_text and options.text_column not in columns:
        raise ManifestError(f"{name}: no column {options.text_column!r} (data.text_column) in {METADATA}; its "
                            f"columns: {', '.join(columns)}; set data.text_column to the transcript column")
    table = pa.table({options.audio_column: [r["file_name"] or None for r in rows],
                      **{c: [r[c] for r in rows] for c in columns if c not in ("file_name", options.audio_column)}})
    return _table_source(name, lambda: table, path, options, require_text, f"{path.parent.name}-{path.name}",
                         path.with_name(path.name + ".skipped.jsonl"))


def _hub_parts(spec: str) -> Tuple[str, Optional[str], str]:
    """(repository, config, split) of ``hf://ORG/NAME?config=C&split=S``."""
    parts = urlsplit(spec)
    repo = (parts.netloc + parts.path).strip("/")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - {"config", "split"})
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo) or unknown or "split" not in query:
        raise ManifestError(f"{spec}: expected {HUB_PREFIX}ORG/NAME?split=SPLIT, optionally with &config=CONFIG"
                            + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return repo, query.get("config"), query["split"]


def hub_source(spec: str, options: DatasetOptions, require_text: bool) -> Source:
    """A split of a dataset on the Hugging Face hub (downloaded into the ``datasets`` cache on first use)."""
    repo, config, split = _hub_parts(spec)
    datasets = import_reader("datasets", "hf", f"dataset {spec}")

    name = f"dataset {spec}"
    try:
        dataset = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds (offline, not found, no such config)
        offline = (" (offline: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set, and it is not in the datasets cache)"
                   if datasets.config.HF_HUB_OFFLINE else "")
        raise ManifestError(f"{name}: cannot load it from the Hugging Face hub{offline}: {type(exc).__name__}: "
                            f"{first_line(exc)}; expected a reachable dataset and split, or a local copy "
                            "(save_to_disk folder or Parquet files)") from exc
    stem = re.sub(r"[^\w.-]+", "-", f"hf-{repo}-{config or ''}-{split}")
    return _table_source(name, lambda: _dataset_table(name, dataset, options), Path.cwd(), options, require_text,
                         stem, None)
