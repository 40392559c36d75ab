"""What every manifest format shares: how a source names its rows, the records it yields, and where the
audio that a dataset holds inside itself (not as files) is stored so that it is read like any audio file.

A source yields NeMo-style records (``audio_filepath``, ``duration``, ``text``, optional ``offset``,
``speaker``, ``id``) with absolute audio paths, whatever its format; :mod:`raysearch_adapters.data.manifest`
validates them all the same way.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import soundfile as sf

from raysearch_adapters.config import HOME_ENV, HOME_FALLBACK
from raysearch_adapters.data.text import normalize_text
from raysearch_adapters.errors import UserError, first_line
from raysearch_adapters.fileio import atomic_write

HUB_PREFIX = "hf://"
# Every form a manifest key accepts, for the errors that list them (docs/data.md, "Bring your data").
FORMS = (".json/.jsonl or .parquet manifest (NeMo), a Hugging Face dataset (save_to_disk folder, Parquet with an "
         "Audio column, audiofolder with metadata.csv, hf://ORG/NAME?config=C&split=S), or lhotse cuts "
         "(.jsonl/.jsonl.gz)")

# (row or line number, record or None, what is wrong with it or None)
Record = Tuple[int, Any, Optional[str]]


class ManifestError(UserError):
    """A bad manifest; ``problems`` holds one ``file:line: found; expected`` string per problem."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


@dataclass(frozen=True)
class DatasetOptions:
    """How a Hugging Face dataset's columns are read, and where its embedded audio is stored as files."""

    text_column: str = "text"  # data.text_column
    audio_column: str = "audio"  # data.audio_column
    audio_dir: str = ""  # embedded audio goes to <audio_dir>/<sha256>.<format>; "" = the default data.cache_dir's

    def audio_folder(self) -> str:
        """Where embedded audio is stored as files."""
        home = os.environ.get(HOME_ENV, HOME_FALLBACK)  # what data.cache_dir's default resolves to, + /audio
        return os.path.expanduser(self.audio_dir or os.path.join(home, "features", "audio"))


def dataset_options(data) -> DatasetOptions:
    """The :class:`DatasetOptions` of a ``DataConfig``: its columns, embedded audio beside the feature cache."""
    return DatasetOptions(data.text_column, data.audio_column, str(Path(data.cache_dir).expanduser() / "audio"))


@dataclass
class Source:
    """One manifest, in any format: its records and how messages name it and its rows."""

    name: str  # how messages name the whole source: its path, "dataset PATH", "cuts PATH"
    read: Callable[[Dict[str, Tuple[Optional[Any], str]]], Iterator[Record]]  # records; seeds the audio info cache
    base_dir: Path  # relative audio paths are relative to this folder
    row: str = "line"  # what a record number counts: line (from 1) or row (from 0)
    at_format: str = "{name}:{number}"  # how a message names one record
    report: Optional[Path] = None  # where on_error=skip writes its report (None: nowhere, the warning lists them)
    fingerprint: Optional[Path] = None  # a file whose bytes identify the source (None: its utterances do)
    cache_stem: str = ""  # the feature cache file's name starts with this
    # embedded audio read so far: the file it is stored as -> a function returning its bytes
    embedded: Dict[str, Callable[[], bytes]] = field(default_factory=dict)

    def at(self, number: int) -> str:
        """How messages name record ``number``: ``file:7``, ``file:row 7``, ``dataset X, row 7``."""
        return self.at_format.format(name=self.name, number=number)

    def store(self, audio_paths) -> None:
        """Write the embedded audio of these utterance audio paths as files (once; the name is the content's hash)."""
        for path in sorted(set(audio_paths)):
            if path in self.embedded and not os.path.exists(path):
                data = self.embedded[path]()
                atomic_write(path, lambda tmp: tmp.write_bytes(data))


def import_reader(module: str, extra: str, what: str):
    """``module`` imported for reading ``what``, or one ManifestError naming it and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ManifestError(f"{what}: reading it needs {module.split('.')[0]}, which is not installed "
                            f"({first_line(exc)}); pip install 'raysearch-adapters[{extra}]'") from None


def embedded_audio(data: bytes, audio_dir: str) -> Tuple[str, Any]:
    """(the file that audio bytes are stored as, their soundfile info); raises what soundfile raises when unreadable."""
    info = sf.info(io.BytesIO(data))
    name = hashlib.sha256(data).hexdigest() + "." + info.format.lower()
    return os.path.abspath(os.path.join(audio_dir, name)), info


def audio_record(path: str, info: Any, text: Any, uid: Any) -> Dict[str, Any]:
    """The record of a whole audio file (its duration from the audio itself), as a source yields it."""
    record = {"audio_filepath": path, "duration": info.frames / info.samplerate, "text": text}
    if uid is not None:
        record["id"] = str(uid)
    return record


def text_problem(text: Any, what: str, require_text: bool) -> Optional[str]:
    """What is wrong with a transcript read from a dataset (``what`` names where it was), else None."""
    if text is None or text == "":
        return f"{what} is empty; expected a transcript" if require_text else None
    if not isinstance(text, str):
        return f"{what} is {text!r}; expected a string"
    if require_text and not normalize_text(text):
        return f"{what} {text!r} is empty after normalisation; expected words (letters or numbers)"
    return None


def is_hub(spec: os.PathLike | str) -> bool:
    """Whether a manifest key names a dataset on the Hugging Face hub (``hf://ORG/NAME...``)."""
    return str(spec).startswith(HUB_PREFIX)


def manifest_exists(spec: os.PathLike | str) -> bool:
    """Whether a manifest key names something there: a file, a folder, Parquet files by a glob, or a hub id (which
    is looked up when read)."""
    if is_hub(spec):
        return True
    path = Path(spec)
    return path.exists() or (any(c in str(spec) for c in "*?[") and any(path.parent.glob(path.name)))


def same_spec(a: os.PathLike | str, b: os.PathLike | str) -> bool:
    """Whether two manifest keys name the same place (the same path, links resolved, or the same hub id)."""
    if is_hub(a) or is_hub(b):
        return str(a) == str(b)
    return Path(a).resolve() == Path(b).resolve()
