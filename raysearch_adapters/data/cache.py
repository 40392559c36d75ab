"""The feature cache: featurizer outputs of a whole manifest, computed once per search.

One Arrow IPC file per (manifest content, audio files, featurizer key), memory-mapped on
read, so trials on many processes (Ray workers) share the page cache instead of each
holding a copy. File names inside ``cache_dir`` are relative and derived from content,
so the folder can live on shared storage (NFS) and be used from several machines.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import torch
from tqdm import tqdm

from raysearch_adapters.data.audio import load_audio
from raysearch_adapters.data.manifest import ManifestError, Utterance, line_of, open_source, read_manifest
from raysearch_adapters.data.source import DatasetOptions, dataset_options
from raysearch_adapters.data.text import normalize_text
from raysearch_adapters.errors import UserError, first_line
from raysearch_adapters.fileio import atomic_write

log = logging.getLogger(__name__)

# Bump when what is stored changes (layout, text normalisation), so old caches are not reused.
CACHE_VERSION = 4
# Utterances per Arrow record batch: bounds the memory a build holds before writing.
_ROWS_PER_BATCH = 64

Featurizer = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


class Row(NamedTuple):
    """One stored utterance."""

    id: str
    text: str  # normalize_text of the manifest text
    duration: float  # seconds, from the manifest
    features: np.ndarray  # [T, F]


_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text", pa.string()),  # normalize_text of the manifest text
    ("duration", pa.float64()),  # seconds, from the manifest
    ("num_frames", pa.int64()),
    ("features", pa.list_(pa.float32())),  # num_frames x feature_dim, row-major
])


class FeatureSet:
    """A memory-mapped feature cache file: per-utterance features [T, F] plus id, text and duration."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        reader = ipc.open_file(pa.memory_map(str(self.path), "r"))
        table = reader.read_all()  # zero-copy views into the memory map
        meta = table.schema.metadata or {}
        self.feature_dim = int(meta[b"feature_dim"])
        self.key = meta[b"key"].decode()
        self.ids: List[str] = table.column("id").to_pylist()
        self.texts: List[str] = table.column("text").to_pylist()
        self.durations: List[float] = table.column("duration").to_pylist()
        self.num_frames: List[int] = table.column("num_frames").to_pylist()
        # Per record batch: the flat float32 values (a view of the map) and the list offsets.
        self._chunks = [(c.values.to_numpy(zero_copy_only=True), c.offsets.to_numpy())
                        for c in table.column("features").chunks]
        self._starts = np.cumsum([0] + [len(c) for c in table.column("features").chunks]).tolist()

    def __reduce__(self):
        # Ray and multiprocessing send the path, and each process maps the file itself.
        return (FeatureSet, (str(self.path),))

    def __len__(self) -> int:
        return len(self.ids)

    def features(self, i: int) -> torch.Tensor:
        """Features of utterance ``i`` as a float32 tensor [T, F] (copies only this utterance)."""
        if not 0 <= i < len(self):
            raise IndexError(f"utterance index {i} out of range for {len(self)} utterances")
        chunk = bisect.bisect_right(self._starts, i) - 1
        values, offsets = self._chunks[chunk]
        row = i - self._starts[chunk]
        flat = values[offsets[row]:offsets[row + 1]]
        return torch.from_numpy(flat.reshape(-1, self.feature_dim).copy())

    def collate(self, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
        """Padded batch: (features [B, T, F] float32, lengths [B] int64, texts)."""
        lengths = torch.tensor([self.num_frames[i] for i in indices], dtype=torch.int64)
        batch = torch.zeros(len(indices), int(lengths.max()) if len(indices) else 0, self.feature_dim)
        for b, i in enumerate(indices):
            batch[b, : lengths[b]] = self.features(i)
        return batch, lengths, [self.texts[i] for i in indices]


def concat_padded(batches: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Padded batches ``(x [B_i, T_i, F], lengths [B_i])`` as one padded batch (rows in order, zeros past each
    row's length), e.g. utterances of several feature sets that go through the model together."""
    longest = max(x.shape[1] for x, _ in batches)
    xs = [torch.nn.functional.pad(x, (0, 0, 0, longest - x.shape[1])) for x, _ in batches]
    return torch.cat(xs), torch.cat([lengths for _, lengths in batches])


def cache_key(fingerprint: Optional[Path], utterances: Sequence[Utterance], featurizer_key: Dict,
              sample_rate: int) -> str:
    """sha256 of the manifest bytes (a dataset: its utterances, every field), the kept utterances, their audio files'
    size and mtime, the featurizer key and the sample rate."""
    h = hashlib.sha256()
    if fingerprint is not None:
        h.update(fingerprint.read_bytes())
    else:
        h.update(json.dumps([u.to_dict() for u in utterances], sort_keys=True, default=str).encode())
    # on_error=skip keeps a subset that depends on the audio and the tolerance, not only on the bytes.
    h.update("\0".join(u.id for u in utterances).encode() + b"\n")
    for path in sorted({u.audio_filepath for u in utterances}):
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(json.dumps({"featurizer": featurizer_key, "sample_rate": sample_rate, "version": CACHE_VERSION},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


def _non_finite(manifest: str, utt: Utterance, wave: torch.Tensor, options: DatasetOptions) -> Optional[str]:
    """A bad line's message when the audio has NaN or inf samples (a float WAV of a diverged signal), else None."""
    bad = int((~torch.isfinite(wave)).sum())
    if not bad:
        return None
    return (f"{line_of(manifest, utt.id, options)}: audio {utt.audio_filepath} has NaN/inf samples ({bad} of "
            f"{wave.numel()}); expected finite samples (every loss and WER on it would be NaN)")


def _feature_rows(manifest: str, utterances: Sequence[Utterance], featurizer: Featurizer, sample_rate: int,
                  progress: bool, on_error: str = "fail", options: DatasetOptions = DatasetOptions()) -> Iterator[Row]:
    # One utterance at a time: padding would change the edge frames (centred STFT) and any
    # featurizer with normalisation over time, so cached features would depend on batching.
    kept = 0
    with torch.no_grad():
        for utt in tqdm(utterances, desc=f"features {Path(manifest).name}", unit="utt", disable=not progress):
            samples, problem = 0, None
            try:
                wave = load_audio(utt.audio_filepath, sample_rate, utt.offset, utt.duration)
                samples = wave.numel()
                problem = _non_finite(manifest, utt, wave, options)
                if problem is None:
                    feats, lengths = featurizer(wave[None], torch.tensor([samples]))
            except RuntimeError as exc:  # soundfile on a file damaged after its header, the front end on a
                # clip shorter than its analysis window: one line naming the utterance, not a tensor traceback
                raise UserError(f"{manifest}: utterance {utt.id!r}: cannot compute features of audio "
                                f"{utt.audio_filepath} ({samples} samples at {sample_rate} Hz: {first_line(exc)}); expected "
                                "readable audio at least as long as the front end's window; fix or remove the "
                                "line") from exc
            if problem and on_error == "fail":  # a bad line as read_manifest's are, found only once the audio is read
                raise ManifestError(f"{problem}; fix or remove the line, or set data.on_error=skip to drop it",
                                    [problem])
            if problem:
                log.warning("%s; skipped (on_error=skip)", problem)
                continue
            kept += 1
            yield Row(utt.id, normalize_text(utt.text), utt.duration, feats[0, : int(lengths[0])].float().cpu().numpy())
    if not kept:
        raise ManifestError(f"{manifest}: the audio of all {len(utterances)} utterances is bad (on_error=skip; "
                            "see the warnings above); expected at least one usable utterance")


def _record_batch(rows: List[Row], schema: pa.Schema) -> pa.RecordBatch:
    flat = [np.ascontiguousarray(r.features, dtype=np.float32).reshape(-1) for r in rows]
    offsets = pa.array(np.cumsum([0] + [len(f) for f in flat]).astype(np.int32))
    return pa.record_batch([
        pa.array([r.id for r in rows]),
        pa.array([r.text for r in rows]),
        pa.array([r.duration for r in rows], pa.float64()),
        pa.array([len(r.features) for r in rows], pa.int64()),
        pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(flat), pa.float32())),
    ], schema=schema)


def _write(path: Path, rows: Iterable[Row], key: str) -> None:
    """Write rows as an Arrow IPC file whose metadata holds the key."""
    rows = iter(rows)
    pending: List[Row] = [next(rows)]
    feature_dim = pending[0].features.shape[1]
    schema = _SCHEMA.with_metadata({"feature_dim": str(feature_dim), "key": key})
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, schema) as writer:
        for row in rows:
            if row.features.shape[1] != feature_dim:
                raise ValueError(f"{row.features.shape[1]} features for {row.id}; "
                                 f"expected {feature_dim} like the first utterance")
            if len(pending) == _ROWS_PER_BATCH:
                writer.write_batch(_record_batch(pending, schema))
                pending.clear()
            pending.append(row)
        writer.write_batch(_record_batch(pending, schema))


def _open(path: Path) -> FeatureSet | None:
    if not path.exists():
        return None
    try:
        return FeatureSet(path)
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        log.warning("feature cache %s is unreadable (%s); rebuilding it", path, exc)
        return None


def open_or_build(path: Path, key: str, rows: Iterable[Row]) -> FeatureSet:
    """The cache file at ``path``, or ``rows`` (lazy: consumed only on a miss) written there once (process-safe).

    The file appears atomically, and a lock beside it makes a process that finds another
    building the same file wait for it and reuse its result instead of building it twice."""
    found = _open(path)
    if found is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _open(path)
        if found is not None:
            return found
        start = time.monotonic()
        atomic_write(path, lambda tmp: _write(tmp, rows, key))
    built = FeatureSet(path)
    log.info("cache %s: %d utterances, %.0f s of audio in %.1f s", path, len(built), sum(built.durations),
             time.monotonic() - start)
    return built


@contextlib.contextmanager
def eval_mode(fn: object) -> Iterator[None]:
    """Run a module (anything else passes through) in eval mode, then give each submodule its own mode back.

    Cached outputs must not depend on dropout or other training-mode randomness; restoring
    per submodule keeps a mixed state (adapters training, frozen base in eval) intact."""
    modules = list(fn.modules()) if isinstance(fn, torch.nn.Module) else []
    modes = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


def pool_subset(utterances: Sequence[Utterance], hours: float) -> List[Utterance]:
    """At most ``hours`` of audio from ``utterances`` (all when 0): the utterances whose ids hash lowest.

    The choice depends on the ids only, not on the manifest's order or on any process, so every
    trial and every node picks the same subset, and it grows by inclusion as ``hours`` grows."""
    if hours <= 0:
        return list(utterances)
    ranked = sorted(utterances, key=lambda u: hashlib.sha1(u.id.encode()).hexdigest())
    budget, total, kept = hours * 3600.0, 0.0, []
    for u in ranked:
        if kept and total + u.duration > budget:
            break
        kept.append(u)
        total += u.duration
    order = {u.id: i for i, u in enumerate(utterances)}
    return sorted(kept, key=lambda u: order[u.id])


def load_features(manifest_path: os.PathLike | str, featurizer: Featurizer, featurizer_key: Dict,
                  cache_dir: os.PathLike | str, sample_rate: int, on_error: str = "fail",
                  duration_tolerance: float = 0.25, progress: bool = True, max_hours: float = 0.0,
                  require_text: bool = True, max_duration: Optional[float] = None,
                  options: DatasetOptions = DatasetOptions()) -> FeatureSet:
    """Features of every utterance of a manifest (any format :func:`~raysearch_adapters.data.manifest.open_source`
    accepts, read with ``options``), from the cache or computed once (process-safe).

    ``featurizer`` maps (waveform [1, S], lengths [1]) -> (features [1, T, F], lengths [1]);
    ``featurizer_key`` identifies it. A module runs in eval mode and gets its mode back after.
    ``max_hours`` > 0 keeps only :func:`pool_subset` of the manifest; ``require_text=False`` accepts
    untranscribed lines, ``max_duration`` refuses longer ones (see :func:`read_manifest`)."""
    manifest = str(manifest_path)
    source = open_source(manifest, options, require_text)
    utterances = pool_subset(read_manifest(source, on_error=on_error, duration_tolerance=duration_tolerance,
                                           require_text=require_text, max_duration=max_duration, options=options),
                             max_hours)
    key = cache_key(source.fingerprint, utterances, featurizer_key, sample_rate)
    path = Path(cache_dir).expanduser() / f"{source.cache_stem}-{key[:20]}.arrow"
    rows = _feature_rows(manifest, utterances, featurizer, sample_rate, progress, on_error, options)
    with eval_mode(featurizer):
        return open_or_build(path, key, rows)


def load_feature_set(data, model, manifest: str, progress: bool = True, max_hours: float = 0.0,
                     require_text: bool = True):
    """The cached features of ``manifest`` for ``model``'s featurizer (computed on the first call only);
    ``max_hours`` > 0: only the fixed pool subset of that much audio (``data.pool_hours``);
    ``require_text=False``: transcripts may be missing (distillation audio). A line longer than
    ``data.max_duration`` (null: the model's ``max_duration``) is a bad line."""
    return load_features(manifest, model.featurizer().eval(), model.featurizer_key(), data.cache_dir,
                         model.sample_rate, data.on_error, data.duration_tolerance, progress=progress,
                         max_hours=max_hours, require_text=require_text,
                         max_duration=data.duration_limit(model.max_duration), options=dataset_options(data))
