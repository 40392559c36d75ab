"""The base model's and an adapter's transcripts of whole sets through one measurement path, as rows of
``hypotheses.parquet`` (:mod:`raysearch_adapters.results.hypotheses`).

The search calls :func:`decode_sets` once at its end on the dev and test sets of both domains with the
winner's path (its lowest adapted block on the frozen-prefix cache, the trial precision, the same
batches), so the base dev hypotheses are the ones the search measured; ``evaluate --hypotheses`` builds
the same rows with :func:`set_rows`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from raysearch_adapters.data.cache import FeatureSet
from raysearch_adapters.data.manifest import manifest_lines
from raysearch_adapters.data.source import DatasetOptions, is_hub
from raysearch_adapters.results.hypotheses import Location, hypothesis_rows
from raysearch_adapters.train.evaluate import transcribe
from raysearch_adapters.train.prefix import inputs_from, view_from

def set_of(cfg, manifest: str) -> Tuple[Optional[str], Optional[str]]:
    """(set, split) of ``manifest`` when it is one of the config's manifests (data.new_train: ("new", "train"); a
    measured set's dev or test: its name and split), else (None, None)."""
    given = [(("new", "train"), cfg.data.new_train)]
    given += [((s.name, split), getattr(s, split)) for s in cfg.measured_sets() for split in ("dev", "test")]
    for key, path in given:
        if path and os.path.abspath(path) == os.path.abspath(manifest):
            return key
    return None, None


def locations(manifest: str, options: DatasetOptions = DatasetOptions()) -> Dict[str, Location]:
    """Manifest line (a dataset's row) and audio (links resolved) of each utterance of ``manifest``, by id."""
    return {uid: Location(line, os.path.realpath(u.audio_filepath), u.offset, u.duration)
            for uid, (line, u) in manifest_lines(manifest, options).items()}


def set_rows(domain: Optional[str], split: Optional[str], manifest: str, features: FeatureSet, base: Sequence[str],
             winner: Optional[Sequence[str]], *, wer_text: Callable[[str], str],
             options: DatasetOptions = DatasetOptions()) -> List[dict]:
    """``hypotheses.parquet`` rows of one decoded set (``features``: its feature set, for ids and references).

    References and hypotheses are stored as WER scores them: through the backbone's ``wer_text`` (identity
    for CTC models; Whisper's normaliser), so a row's error counts, the view's alignments and the WERs
    computed from the file are ``evaluate``'s."""
    texts = [wer_text(t) for t in features.texts]
    where = manifest if is_hub(manifest) else os.path.abspath(manifest)
    return hypothesis_rows(domain, split, where, features.ids, texts, locations(manifest, options),
                           [wer_text(h) for h in base], None if winner is None else [wer_text(h) for h in winner])


def decode_sets(model, handle, k: Optional[int], sets: Dict[Tuple[str, str], Tuple[str, FeatureSet]],
                cache_dir: str, batch_seconds: float, device, precision: str,
                options: DatasetOptions = DatasetOptions(),
                known_base: Optional[Dict[Tuple[str, str], List[str]]] = None) -> List[dict]:
    """Rows of every set ``{(domain, split): (manifest, features)}``, decoded from block ``k`` (None: the whole
    model) by the adapters of ``handle`` (None: no winner) and by the base model (those adapters disabled).
    ``known_base``: the base model's transcripts of some of the sets, decoded before on this same path (not again)."""
    view = view_from(model, k)
    rows: List[dict] = []
    for (domain, split), (manifest, features) in sets.items():
        inputs = inputs_from(features, model, k, cache_dir, progress=True)
        winner = None if handle is None else transcribe(view, inputs, None, batch_seconds, device, precision)
        base = (known_base or {}).get((domain, split))
        if base is None:
            with contextlib.nullcontext() if handle is None else handle.disabled():
                base = transcribe(view, inputs, None, batch_seconds, device, precision)
        rows += set_rows(domain, split, manifest, features, base, winner, wer_text=model.wer_text, options=options)
    return rows
