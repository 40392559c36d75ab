"""A search's winner as a model to deploy (``raysearch-adapters export RESULTS_DIR``).

A LoRA winner is merged into the base weights and written in the backbone's own format
(``Backbone.save_export``: the project's checkpoint for the built-in Conformer, torchaudio's state
dict and the config that rebuilds it for wav2vec2, a ``save_pretrained`` folder with the tokenizer and
feature extractor for the Hugging Face backbones). Merging can silently change outputs (peft#1035),
so the export is checked, not assumed: the merged model, read back from the files written, and the
unmerged adapter are both evaluated on the dev sets of both domains, through the path and precision
the search measured the adapter on (its lowest adapted block on the frozen-prefix cache, the trial
precision, the same batches), and ``export.json`` records the difference per precision: fp32, and
bf16 where the search used it. Bottleneck and parallel adapters cannot merge: the export says so
and writes the adapter-only file with how to load it.

Beside the backbone's own format, a LoRA winner of a Hugging Face backbone is also a PEFT adapter folder
(:mod:`.peft_lora`), checked the same way through peft's own layers, and a merged Whisper model is also a
CTranslate2 model (:mod:`.ct2`), checked against the merged model's transcripts.

Reads the results folder only; needs neither Ray nor the search to be running.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional

import torch

from raysearch_adapters.adapters.inject import AdapterHandle
from raysearch_adapters.adapters.layers import not_mergeable_message
from raysearch_adapters.adapters.state import FORMAT as ADAPTER_FORMAT, AdapterFileError, load_adapter
from raysearch_adapters.config import Config, load_config
from raysearch_adapters.data.cache import load_feature_set
from raysearch_adapters.data.source import dataset_options
from raysearch_adapters.errors import UserError
from raysearch_adapters.fileio import atomic_write, atomic_write_text
from raysearch_adapters.models.checkpoint import read_format_file
from raysearch_adapters.models import hf
from raysearch_adapters.models.base import Backbone
from raysearch_adapters.models.registry import load_base_model
from raysearch_adapters.results.layout import BEST_ADAPTER_FILE, CONFIG_FILE, SUMMARY_FILE
from raysearch_adapters.search.summary import load_instructions, versions
from raysearch_adapters.adapter_types import ADAPTER_TYPES
from raysearch_adapters.export import ct2
from raysearch_adapters.export.peft_lora import load_peft, load_snippet, not_peft_type, peft_weights, why_not_peft, \
    write_peft
from raysearch_adapters.train.evaluate import evaluate, model_outputs, uses_bf16
from raysearch_adapters.train.prefix import inputs_from, measurement_block, view_from

EXPORT_DIR = "export"  # default --out, inside the results folder
EXPORT_JSON = "export.json"
ADAPTER_COPY = "adapter.pt"  # the adapter-only file of a type that cannot merge


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def winner_of(results_dir: Path) -> dict:
    """The winner of the finished search in ``results_dir`` (``summary.json``'s ``winner``); fails naming the
    file and key when there is none."""
    if not results_dir.is_dir():
        raise UserError(f"{results_dir}: not a folder; expected a search's results folder (results/<search name>/)")
    summary_file = results_dir / SUMMARY_FILE
    if not summary_file.is_file():
        raise UserError(f"{summary_file}: not found; export takes the results folder of a finished search")
    summary = _read_json(summary_file)
    winner = summary.get("winner")
    if not winner:
        why = ("the search was interrupted (resume it with search --resume)" if summary.get("interrupted") else
               f"every trial failed ({summary['all_failed']})" if summary.get("all_failed") else
               "no trial was feasible" if summary.get("no_feasible_trial") else "no winner was chosen")
        raise UserError(f"{summary_file}: winner is null: {why}; there is no {BEST_ADAPTER_FILE} to export")
    if not (results_dir / BEST_ADAPTER_FILE).is_file():
        raise UserError(f"{results_dir / BEST_ADAPTER_FILE}: not found, but {SUMMARY_FILE} names a winner (trial "
                        f"{winner.get('trial_id')}); the results folder is incomplete")
    return winner


def _adapter_type(adapter_file: Path) -> str:
    payload = read_format_file(adapter_file, ADAPTER_FORMAT, "adapter file", AdapterFileError)
    return str(payload["adapter"].get("type", "bottleneck"))


def _output_difference(x: torch.Tensor, y: torch.Tensor) -> float:
    """The largest absolute difference of two outputs of one utterance (``Backbone.output_scores`` of them) over
    the positions both have: a Whisper transcript that changed length is compared where both were decoded."""
    n = min(len(x), len(y))
    return float((x[:n] - y[:n]).abs().amax()) if n and x.numel() and y.numel() else 0.0


def _compare(unmerged: Dict[str, dict], other: Dict[str, dict], label: str = "merged") -> Dict[str, dict]:
    """Per dev set: both WERs (the other model's as ``{label}_wer``), their difference, how many transcripts and
    how large an output differs."""
    out = {}
    for domain, a in unmerged.items():
        b = other[domain]
        diffs = [_output_difference(x, y) for x, y in zip(a["outputs"], b["outputs"])]
        out[domain] = {"unmerged_wer": a["wer"], f"{label}_wer": b["wer"], "wer_difference": b["wer"] - a["wer"],
                       "changed_hypotheses": sum(x != y for x, y in zip(a["hypotheses"], b["hypotheses"])),
                       "utterances": len(a["hypotheses"]), "max_abs_output_diff": max(diffs, default=0.0)}
    return out


def _measure(model, k: Optional[int], dev_sets: dict, cfg: Config, device: torch.device, precision: str) -> dict:
    """WER, transcripts and outputs of ``model`` from block ``k`` on each dev set (``train.evaluate``'s batches)."""
    view = view_from(model, k)
    out = {}
    for domain, features in dev_sets.items():
        inputs = inputs_from(features, model, k, cfg.data.cache_dir)
        # evaluate's WER: on the backbone's wer_text of references and hypotheses (Whisper normalises both)
        scored = evaluate(view, inputs, None, cfg.data.max_batch_seconds, device, precision)
        out[domain] = {"wer": scored["wer"], "hypotheses": scored["hypotheses"],
                       "outputs": [model.output_scores(o) for o in
                                   model_outputs(view, inputs, cfg.data.max_batch_seconds, device, precision)]}
    return out


def export(results_dir: Path, out_dir: Optional[Path] = None, device: Optional[torch.device] = None,
           ct2_quantization: str = "float32") -> dict:
    """Export the winner of ``results_dir`` into ``out_dir`` (default: ``results_dir/export``); returns
    ``export.json``'s content (also written there). ``ct2_quantization``: the CTranslate2 model's weights
    (a Whisper winner; one of ``ct2.QUANTIZATIONS``)."""
    if ct2_quantization not in ct2.QUANTIZATIONS:
        raise UserError(f"--ct2-quantization: got {ct2_quantization!r}; allowed: {', '.join(ct2.QUANTIZATIONS)}")
    results_dir = Path(results_dir)
    winner = winner_of(results_dir)
    adapter_file = results_dir / BEST_ADAPTER_FILE
    cfg = load_config([results_dir / CONFIG_FILE])
    out_dir = Path(out_dir) if out_dir is not None else results_dir / EXPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    adapter_type = _adapter_type(adapter_file)
    record = {"results_dir": str(results_dir), "winner_trial_id": winner.get("trial_id"), "type": adapter_type,
              "adapter_file": str(adapter_file), "versions": versions()}
    if not ADAPTER_TYPES[adapter_type].mergeable:
        copy = out_dir / ADAPTER_COPY
        atomic_write(copy, lambda tmp: shutil.copyfile(adapter_file, tmp))
        record.update(merged=False, reason=not_mergeable_message(adapter_type), files={"adapter": str(copy)},
                      load=load_instructions(cfg, copy), peft={"written": False, "reason": not_peft_type(adapter_type)})
    else:
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        record.update(merged=True, **_merge_and_check(cfg, adapter_file, out_dir, winner, device, ct2_quantization))
    atomic_write_text(out_dir / EXPORT_JSON, json.dumps(record, indent=2, default=str) + "\n")
    record["files"]["export_json"] = str(out_dir / EXPORT_JSON)
    return record


def _merge_and_check(cfg: Config, adapter_file: Path, out_dir: Path, winner: dict, device: torch.device,
                     ct2_quantization: str) -> dict:
    model = load_base_model(cfg.model)
    handle, _, extra = load_adapter(adapter_file, model)
    k = measurement_block(handle, cfg.train.prefix_cache, bool(extra.get("hp", {}).get("specaugment")))
    meta = {"exported_from": str(adapter_file), "winner_trial_id": str(winner.get("trial_id")),
            "base_model": model.name, "adapter": f"lora rank {handle.cfg.rank}, alpha {handle.cfg.alpha:g}, "
                                                 f"targets {handle.cfg.targets}, blocks {handle.cfg.blocks}"}
    merged = load_base_model(cfg.model)
    merged_handle, _, _ = load_adapter(adapter_file, merged)
    path, how = merged_handle.merge_and_unload().save_export(out_dir, meta)
    del merged, merged_handle
    reloaded = type(model).load_export(path)  # the files as a user gets them, not the object in memory
    sets = cfg.measured_sets()
    dev_sets = {s.name: load_feature_set(cfg.data, model, s.dev, progress=False) for s in sets}
    model.to(device)
    reloaded.to(device)
    precisions: List[str] = ["fp32"] + (["bf16"] if uses_bf16(device, cfg.train.precision) else [])
    unmerged = {p: _measure(model, k, dev_sets, cfg, device, p) for p in precisions}
    measured = {p: _measure(reloaded, k, dev_sets, cfg, device, p) for p in precisions}
    record = {"files": {"model": str(path)}, "load": how, "measured_from_block": k, "precisions": precisions,
              "device": str(device), "search_dev_wer": winner.get("dev"),
              "dev": {p: _compare(unmerged[p], measured[p]) for p in precisions},
              "peft": _peft(cfg, model, handle, out_dir, k, dev_sets, device, unmerged)}
    if reloaded.ctranslate2:
        reason = ct2.why_not()
        record["ctranslate2"] = {"written": False, "reason": reason} if reason else ct2.check(
            ct2.convert(path, out_dir, ct2_quantization), reloaded, dev_sets, {s.name: s.dev for s in sets},
            measured["fp32"], device, ct2_quantization, dataset_options(cfg.data))
    return record


def _peft(cfg: Config, model: Backbone, handle: AdapterHandle, out_dir: Path, k: Optional[int], dev_sets: dict,
          device: torch.device, unmerged: Dict[str, dict]) -> dict:
    """The PEFT folder of the winner (``model`` with it, unmerged), read back by ``PeftModel.from_pretrained`` onto
    a fresh base and measured through peft's layers beside the unmerged adapter (``unmerged``, per precision);
    or why there is none."""
    reason = why_not_peft(model, handle)
    if reason:
        return {"written": False, "reason": reason}
    # the folder names its base as from_pretrained takes it: a local checkpoint's path with ~ expanded, or the hub id
    base = hf.source(cfg.model.checkpoint, cfg.model.name)
    folder = write_peft(model, handle, base, out_dir)
    with_peft = load_base_model(cfg.model)
    targeted = load_peft(with_peft, folder, peft_weights(model, handle))
    with_peft.to(device)
    dev = {p: _compare(unmerged[p], _measure(with_peft, k, dev_sets, cfg, device, p), "peft") for p in unmerged}
    same = all(r["wer_difference"] == 0 and r["changed_hypotheses"] == 0
               for sets in dev.values() for r in sets.values())
    return {"written": True, "folder": str(folder), "version": importlib.metadata.version("peft"),
            "load": load_snippet(model, base, folder),
            "targeted": targeted, "reproduces_unmerged": same, "dev": dev}
