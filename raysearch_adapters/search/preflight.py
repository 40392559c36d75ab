"""Everything a search can check before it writes anything: the space against the model, the data.

A search that would fail at its first trial, or after an hour at its final test evaluation,
fails here instead, with the config key and file, and leaves no results folder behind (so
the corrected rerun is not refused as "already holds a search").
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Optional

from raysearch_adapters.config import Config, ConfigError
from raysearch_adapters.data.manifest import read_manifest
from raysearch_adapters.data.text import normalize_text
from raysearch_adapters.models.base import Backbone, BlockInfo, block_layout
from raysearch_adapters.results.placement import PlacementError, parse_blocks
from raysearch_adapters.search.space import check_space, listed_values
from raysearch_adapters.adapter_types import ADAPTER_TYPES
from raysearch_adapters.space_values import parse_targets_spec
from raysearch_adapters.train.hparams import default_hparams

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


def _check_texts(cfg: Config, model: Backbone, key: str) -> None:
    """The transcripts a trial trains on, in the model's vocabulary (one error naming the lines and characters)."""
    path = getattr(cfg.data, key)
    utterances = read_manifest(path, on_error=cfg.data.on_error, duration_tolerance=cfg.data.duration_tolerance)
    model.tokenizer.check_texts([normalize_text(u.text) for u in utterances], f"data.{key} {path}")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or _file_digest(a) == _file_digest(b)


def _check_pool(cfg: Config, key: str, what: str, measured: Dict[str, tuple], require_text: bool) -> None:
    path_str = getattr(cfg.data, key)
    if not path_str:
        raise ConfigError(f"data.{key}: empty, but {what}; set data.{key} (default: data.original_train) to a "
                          "manifest of original-domain audio")
    path = Path(path_str)
    if not path.is_file():
        raise ConfigError(f"data.{key}: {path} not found, but {what}; set it (default: data.original_train) to a "
                          "manifest of original-domain audio")
    for other, (other_path, _) in measured.items():
        if _same_file(other_path, path):
            raise ConfigError(f"data.{key}: {path} is {other}; allowed: original-domain audio outside the dev and "
                              "test sets (the constraint and the final evaluation are measured on those)")
    utterances = read_manifest(path, on_error=cfg.data.on_error, duration_tolerance=cfg.data.duration_tolerance,
                               require_text=require_text)
    audio = {(u.audio_filepath, u.offset) for u in utterances}
    for other, (_, seen) in measured.items():
        shared = audio & seen
        if shared:
            example = sorted(shared)[0][0]
            raise ConfigError(f"data.{key}: {path} shares {len(shared)} utterances with {other} (e.g. {example}); "
                              "allowed: original-domain audio outside the dev and test sets")


def _check_protected_apart(required: List[tuple], seen: Dict[str, tuple]) -> None:
    """A protected set's manifests share no file and no utterance with the new domain's (targets and training set):
    a set cannot be both what the adapters learn and what they must not change."""
    roles = {key: role for key, _, role, _ in required}
    for key, (path, audio) in seen.items():
        if roles[key] != "protected":
            continue
        for other, (other_path, other_audio) in seen.items():
            if roles[other] == "protected":
                continue
            shared, same = audio & other_audio, _same_file(path, other_path)
            if same or shared:
                what = "is the same manifest as" if same else (
                    f"shares {len(shared)} utterances (e.g. {sorted(shared)[0][0]}) with")
                raise ConfigError(f"{key}: {path} {what} {other} ({other_path}); allowed: a protected set apart from "
                                  "the new domain's training and target sets (a set cannot be both learned and "
                                  "protected)")


def preflight(cfg: Config, model: Backbone) -> List[str]:
    """Check the space against ``model`` and every manifest the search will read; returns the manifests checked.

    Raises :class:`~raysearch_adapters.errors.UserError` subclasses naming the key or the file:line."""
    _check_blocks_and_positions(cfg, model)
    checked = []
    seen: Dict[str, tuple] = {}  # config key -> (manifest, its utterances' audio)
    required = _required(cfg)
    for key, given, _, role in required:
        if not given:
            raise ConfigError(f"{key}: not set; a search needs {role}: a .json/.jsonl or .parquet "
                              "manifest (conf/demo.yaml has the demo's)")
        path = Path(given)
        if not path.is_file():
            raise ConfigError(f"{key}: {path} not found; expected a .json/.jsonl or .parquet manifest")
        utterances = read_manifest(path, on_error=cfg.data.on_error, duration_tolerance=cfg.data.duration_tolerance)
        seen[key] = (path, {(u.audio_filepath, u.offset) for u in utterances})
        checked.append(str(path))
    _check_protected_apart(required, seen)
    # Replay and distillation audio must never come from a set something is measured on.
    measured_audio = {key: v for key, v in seen.items() if key != "data.new_train"}
    _check_texts(cfg, model, "new_train")
    if may_be_positive(cfg, "replay"):
        _check_pool(cfg, "replay_manifest", "train.replay / search.space.replay asks for replay", measured_audio, True)
        _check_texts(cfg, model, "replay_manifest")
        checked.append(cfg.data.replay_manifest)
    if may_be_positive(cfg, "distill_weight"):
        _check_pool(cfg, "distill_manifest", "train.distill_weight / search.space.distill_weight asks for "
                    "distillation", measured_audio, False)
        checked.append(cfg.data.distill_manifest)
    return checked
