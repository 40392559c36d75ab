"""Everything a search can check before it writes anything: the space against the model, the data.

A search that would fail at its first trial, or after an hour at its final test evaluation,
fails here instead, with the config key and file, and leaves no results folder behind (so
the corrected rerun is not refused as "already holds a search").
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Set

from raysearch_adapters.config import Config, ConfigError
from raysearch_adapters.data.manifest import Utterance, line_of, read_manifest
from raysearch_adapters.data.source import FORMS, dataset_options, manifest_exists, same_spec
from raysearch_adapters.data.text import normalize_text
from raysearch_adapters.models.base import Backbone, BlockInfo, block_layout
from raysearch_adapters.results.placement import PlacementError, parse_blocks
from raysearch_adapters.search.space import check_space, listed_values
from raysearch_adapters.adapter_types import ADAPTER_TYPES
from raysearch_adapters.space_values import parse_targets_spec
from raysearch_adapters.train.hparams import default_hparams

log = logging.getLogger(__name__)

# The most audio a preflight reads to find copies of dev and test files under other names (see _AudioContents).
_CONTENT_BYTES = 256 << 20
_ROLE = {("target", "dev"): "the new domain's dev set (the winner is chosen on it)",
         ("protected", "dev"): "the original domain's dev set (degradation is measured on it)",
         ("target", "test"): "the new domain's test set (the winner is evaluated on it)",
         ("protected", "test"): "the original domain's test set (the winner's degradation is evaluated on it)"}


def _required(cfg: Config) -> List[tuple]:
    """(config key, manifest, role, what it is) of every manifest a trial trains or is measured on, and of the final
    evaluation's: they must exist and be valid."""
    out = [("data.new_train", cfg.data.new_train, "train", "the new domain's training set")]
    for s in cfg.measured_sets():
        for split in ("dev", "test"):
            out.append((getattr(s, f"{split}_key"), getattr(s, split), s.role, _ROLE[(s.role, split)]))
    return out


def may_be_positive(cfg: Config, name: str) -> bool:
    """Whether the hyperparameter ``name`` (replay, distill_weight) is > 0 in some trial of the search."""
    spec = getattr(cfg.search.space, name)
    kind = spec.kind()
    if kind == "unset" or (cfg.search.sampler == "grid" and kind != "value"):
        return float(default_hparams(cfg)[name]) > 0  # the grid keeps every unsearched param at its default
    if kind == "value":
        return float(spec.value) > 0
    if kind == "choices":
        return any(float(c) > 0 for c in spec.choices)
    return float(spec.high) > 0


def _trial_values(cfg: Config, name: str) -> list:
    """The values hyperparameter ``name`` can take in a trial: the space's value or choices (the grid keeps
    unsearched ones at their default), else the default."""
    spec = getattr(cfg.search.space, name)
    if spec.kind() == "value" or (spec.kind() == "choices" and cfg.search.sampler != "grid"):
        return listed_values(spec)
    return [default_hparams(cfg)[name]]


def shared_measurement_block(cfg: Config, model: Backbone) -> Optional[int]:
    """The block every trial of the search trains and is measured from, when it is one block (else None).

    A trial runs from where the frozen-prefix cache of its lowest adapted block starts
    (``train.prefix.measurement_block``); when every block spec the search can pick gives the
    same one (e.g. Whisper's decoder placements: the end of the encoder), the driver builds the
    caches there before the trials and measures the base model on them."""
    if not cfg.train.prefix_cache or any(bool(v) for v in _trial_values(cfg, "specaugment")):
        return None
    layout = block_layout(model.adaptable_blocks())
    starts = {model.prefix_block(min(parse_blocks(str(spec), layout))) for spec in _trial_values(cfg, "blocks")}
    return starts.pop() if len(starts) == 1 else None


def _check_blocks_and_positions(cfg: Config, model: Backbone) -> None:
    """Every block spec fits the model, and every position a trial can pick exists in every block the
    trial's block spec selects (an encoder block has no ``cross_attn``)."""
    infos = model.adaptable_blocks()
    layout = block_layout(infos)
    check_space(cfg.search.space, layout)
    for spec in _trial_values(cfg, "blocks"):
        try:
            selected = [infos[i] for i in parse_blocks(str(spec), layout)]
        except PlacementError as e:
            raise ConfigError(str(e)) from None
        for adapter_type in _trial_values(cfg, "type"):
            placement = ADAPTER_TYPES[adapter_type].placement
            if placement == "linears":
                _check_targets(cfg, model, selected, str(spec))
            else:
                _check_positions(cfg, model, selected, str(spec), parallel=placement == "parallel")


def _which_blocks(infos: List[BlockInfo], spec: str, model: Backbone) -> str:
    """How an error names the blocks a block spec selects: every block, or the spec's blocks."""
    return "every block" if len(infos) == len(model.adaptable_blocks()) else f"every block {spec!r} selects"


def _check_positions(cfg: Config, model: Backbone, infos: List[BlockInfo], spec: str, parallel: bool) -> None:
    """Every position a trial can pick exists in every block its block spec selects (an encoder block has
    no ``cross_attn``), beside a parallel branch's input for a parallel adapter."""
    available = set.intersection(*(set(b.parallel if parallel else b.positions) & set(b.positions) for b in infos))
    wanted = _trial_values(cfg, "position") + list(cfg.adapter.positions)
    missing = [p for p in wanted if p not in available]
    if missing:
        p, kind = missing[0], "parallel position" if parallel else "position"
        b = next(b for b in infos if p not in b.positions or (parallel and p not in b.parallel))
        raise ConfigError(f"search.space.position / adapter.positions: got {p!r}; model {model.name} has the {kind}s "
                          f"{', '.join(sorted(available)) or 'none'} in {_which_blocks(infos, spec, model)} (block "
                          f"{b.index}, {b.stack} {b.name}, has no {kind} {p!r})")


def _check_targets(cfg: Config, model: Backbone, infos: List[BlockInfo], spec: str) -> None:
    """LoRA targets every block a block spec selects has (the search may adapt any of them)."""
    available = set.intersection(*(set(b.linears) for b in infos))
    where = _which_blocks(infos, spec, model)
    if not available:
        raise ConfigError(f"search.space.type / adapter.type: got 'lora'; model {model.name} lists no linear layer "
                          f"that {where} has (BlockInfo.linears); allowed types for it: bottleneck, parallel")
    for targets in _trial_values(cfg, "targets"):
        missing = [n for n in parse_targets_spec(targets) if n not in available]
        if missing:
            raise ConfigError(f"search.space.targets / adapter.targets: got {targets!r}; model {model.name} has no "
                              f"linear layer {missing[0]!r} in {where}; it has: {', '.join(sorted(available))} "
                              "(or: all)")


def _read(cfg: Config, model: Backbone, path: str, require_text: bool = True) -> List[Utterance]:
    """A manifest's utterances as the search reads them (data.on_error, data.duration_tolerance, the duration limit,
    a dataset's columns)."""
    return read_manifest(path, on_error=cfg.data.on_error, duration_tolerance=cfg.data.duration_tolerance,
                         require_text=require_text, max_duration=cfg.data.duration_limit(model.max_duration),
                         options=dataset_options(cfg.data))


def _check_texts(model: Backbone, key: str, path: str, utterances: List[Utterance]) -> None:
    """The transcripts a trial trains on (``utterances`` of ``path``, read by :func:`_read`), in the model's
    vocabulary (one error naming the lines and characters)."""
    model.tokenizer.check_texts([normalize_text(u.text) for u in utterances], f"data.{key} {path}")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _same_file(a: str, b: str) -> bool:
    """The same manifest: one path (or hub id), or two files of the same bytes."""
    files = Path(a).is_file() and Path(b).is_file()
    return same_spec(a, b) or (files and _file_digest(Path(a)) == _file_digest(Path(b)))


class _AudioContents:
    """Which audio files of two manifests are one file under two names (a link) or copies of each other.

    Only a file whose size equals that of a file of the other manifest is looked at (an utterance's
    audio file is rarely the size of another's unless it is a copy), and at most ``_CONTENT_BYTES``
    are read in all: sets of equal-length clips would otherwise mean reading every file."""

    def __init__(self, budget: int = _CONTENT_BYTES):
        self.budget = budget
        self._sizes: Dict[str, int] = {}
        self._digests: Dict[str, Optional[str]] = {}
        self.unread = 0  # files not compared once the budget was spent

    def _size(self, path: str) -> int:
        if path not in self._sizes:
            self._sizes[path] = os.path.getsize(path)
        return self._sizes[path]

    def _digest(self, path: str) -> Optional[str]:
        if path not in self._digests:
            size = self._size(path)
            if size > self.budget:
                self.unread += 1
                self._digests[path] = None
            else:
                self.budget -= size
                self._digests[path] = _file_digest(Path(path))
        return self._digests[path]

    def copies(self, files: Set[str], others: Set[str]) -> Dict[str, str]:
        """Each file of ``files`` (not in ``others``) whose content is that of a file of ``others``: that file."""
        by_size: Dict[int, List[str]] = {}
        for q in sorted(others):
            by_size.setdefault(self._size(q), []).append(q)
        # per size, built when a file of that size needs them; the first file of others wins
        by_real: Dict[int, Dict[str, str]] = {}
        by_digest: Dict[int, Dict[str, str]] = {}
        out = {}
        for p in sorted(files - others):
            size = self._size(p)
            if size not in by_size:
                continue
            if size not in by_real:
                by_real[size] = {os.path.realpath(q): q for q in reversed(by_size[size])}
            if os.path.realpath(p) in by_real[size]:
                out[p] = by_real[size][os.path.realpath(p)]
                continue
            if size not in by_digest:
                by_digest[size] = {d: q for q in reversed(by_size[size]) if (d := self._digest(q)) is not None}
            digest = self._digest(p)
            if digest in by_digest[size]:
                out[p] = by_digest[size][digest]
        return out


def _same_manifest(path: str, other_key: str, other_path: str) -> Optional[str]:
    """What an error says after a manifest's path when it is the other one (or a copy), else None."""
    return f"is the same manifest as {other_key} ({other_path})" if _same_file(path, other_path) else None


def _shared(cfg: Config, path: str, utterances: List[Utterance], other_key: str, other_path: str,
            others: List[Utterance], contents: _AudioContents) -> Optional[str]:
    """What an error says after a manifest's path when it shares utterances with another, else None.

    An utterance is its audio file and offset; a file is also the same as a link to it or a copy of it."""
    first: Dict[tuple, Utterance] = {}
    for o in others:
        first.setdefault((o.audio_filepath, o.offset), o)
    copies = contents.copies({u.audio_filepath for u in utterances}, {o.audio_filepath for o in others})
    pairs = [(u, first[key]) for u in utterances
             if (key := (copies.get(u.audio_filepath, u.audio_filepath), u.offset)) in first]
    if not pairs:
        return None
    u, o = pairs[0]
    copy = "" if u.audio_filepath == o.audio_filepath else f"; {u.audio_filepath} is a copy of {o.audio_filepath}"
    return (f"shares {len(pairs)} of its {len(utterances)} utterances with {other_key} ({other_path}), the first "
            f"at {_line_of(cfg, path, u.id)} = {_line_of(cfg, other_path, o.id)}{copy}")


def _line_of(cfg: Config, path: str, uid: str) -> str:
    return line_of(path, uid, dataset_options(cfg.data))


def _check_pool(cfg: Config, model: Backbone, key: str, what: str, measured: Dict[str, tuple], require_text: bool,
                contents: _AudioContents) -> List[Utterance]:
    """The utterances of a replay or distillation pool, refused when it is (or shares audio with) a measured set."""
    path_str = getattr(cfg.data, key)
    if not path_str:
        raise ConfigError(f"data.{key}: empty, but {what}; set data.{key} (default: data.original_train) to a "
                          "manifest of original-domain audio")
    path = str(path_str)
    if not manifest_exists(path):
        raise ConfigError(f"data.{key}: {path} not found, but {what}; set it (default: data.original_train) to a "
                          "manifest of original-domain audio")

    def refuse(overlap: Optional[str]) -> None:
        if overlap:
            raise ConfigError(f"data.{key}: {path} {overlap}; allowed: original-domain audio outside the dev and test "
                              "sets (the constraint and the final evaluation are measured on those)")

    for other, (other_path, _) in measured.items():
        refuse(_same_manifest(path, other, other_path))
    utterances = _read(cfg, model, path, require_text)
    for other, (other_path, others) in measured.items():
        refuse(_shared(cfg, path, utterances, other, other_path, others, contents))
    return utterances


# (role, role of the other set) -> what is allowed instead, for the pairs of sets that must share no utterance
_APART = {("protected", "train"): "a protected set apart from the new domain's training and target sets (a set "
                                  "cannot be both learned and protected)",
          ("train", "target"): "training audio outside the dev and test sets (a WER measured on audio the adapters "
                               "trained on is a training WER, not a test of them)"}
_APART[("protected", "target")] = _APART[("protected", "train")]


def _check_apart(cfg: Config, required: List[tuple], seen: Dict[str, tuple], contents: _AudioContents) -> None:
    """The training set shares no file and no utterance with a new-domain dev or test set, nor a protected set's with
    the new domain's (training set and targets)."""
    roles = {key: role for key, _, role, _ in required}
    for key, (path, utterances) in seen.items():
        for other, (other_path, others) in seen.items():
            allowed = _APART.get((roles[key], roles[other]))
            overlap = allowed and (_same_manifest(path, other, other_path)
                                   or _shared(cfg, path, utterances, other, other_path, others, contents))
            if overlap:
                raise ConfigError(f"{key}: {path} {overlap}; allowed: {allowed}")


def preflight(cfg: Config, model: Backbone) -> List[str]:
    """Check the space against ``model`` and every manifest the search will read; returns the manifests checked.

    Raises :class:`~raysearch_adapters.errors.UserError` subclasses naming the key or the file:line."""
    _check_blocks_and_positions(cfg, model)
    checked = []
    seen: Dict[str, tuple] = {}  # config key -> (manifest, its utterances)
    required = _required(cfg)
    for key, given, _, role in required:
        if not given:
            raise ConfigError(f"{key}: not set; a search needs {role}: a {FORMS} (conf/demo.yaml has the demo's)")
        path = str(given)
        if not manifest_exists(path):
            raise ConfigError(f"{key}: {path} not found; expected a {FORMS}")
        utterances = _read(cfg, model, path)
        seen[key] = (path, utterances)
        checked.append(str(path))
    contents = _AudioContents()
    _check_apart(cfg, required, seen, contents)
    # Replay and distillation audio must never come from a set something is measured on.
    measured = {key: v for key, v in seen.items() if key != "data.new_train"}
    _check_texts(model, "new_train", *seen["data.new_train"])
    if may_be_positive(cfg, "replay"):
        replay = _check_pool(cfg, model, "replay_manifest", "train.replay / search.space.replay asks for replay",
                             measured, True, contents)
        _check_texts(model, "replay_manifest", cfg.data.replay_manifest, replay)
        checked.append(cfg.data.replay_manifest)
    if may_be_positive(cfg, "distill_weight"):
        _check_pool(cfg, model, "distill_manifest", "train.distill_weight / search.space.distill_weight asks for "
                    "distillation", measured, False, contents)
        checked.append(cfg.data.distill_manifest)
    if contents.unread:
        log.warning("preflight: %d audio files have the size of a file of a dev or test set but were not compared "
                    "with it (more than %d MiB to read); only their paths were", contents.unread, _CONTENT_BYTES >> 20)
    return checked
