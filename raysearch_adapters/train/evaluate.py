"""Greedy CTC transcription and WER of a model over a cached feature set (no Ray)."""

from __future__ import annotations

import contextlib
from typing import List, Sequence

import torch

from raysearch_adapters.data.batching import duration_batches
from raysearch_adapters.data.cache import load_features
from raysearch_adapters.metrics import char_error_rate, error_counts
from raysearch_adapters.models.base import greedy_ctc_decode


def load_feature_set(data, model, manifest: str, progress: bool = True):
    """The cached features of ``manifest`` for ``model``'s featurizer (computed on the first call only)."""
    return load_features(manifest, model.featurizer().eval(), model.featurizer_key(), data.cache_dir,
                         model.sample_rate, data.on_error, data.duration_tolerance, progress=progress)


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on GPU for precision auto/bf16; plain fp32 on CPU (CPU bf16 is slower here)."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def transcribe(model, feature_set, indices: Sequence[int] | None = None, max_batch_seconds: float = 120.0,
               device: torch.device | str = "cpu", precision: str = "auto") -> List[str]:
    """Hypotheses for ``indices`` (default: all) of ``feature_set``, in that order."""
    device = torch.device(device)
    idx = list(range(len(feature_set))) if indices is None else list(indices)
    durations = [feature_set.durations[i] for i in idx]
    hyps: List[str] = [""] * len(idx)
    was_training = model.training
    model.eval()
    try:
        for batch in duration_batches(durations, max_batch_seconds, shuffle=False):
            x, lengths, _ = feature_set.collate([idx[j] for j in batch])
            with autocast_context(device, precision):
                log_probs, out_lengths = model(x.to(device), lengths.to(device))
            for j, ids in zip(batch, greedy_ctc_decode(log_probs, out_lengths)):
                hyps[j] = model.tokenizer.decode(ids)
    finally:
        model.train(was_training)
    return hyps


def evaluate(model, feature_set, indices: Sequence[int] | None = None, max_batch_seconds: float = 120.0,
             device: torch.device | str = "cpu", precision: str = "auto") -> dict:
    """WER/CER (percent) plus the raw error and word counts (to reduce across shards)."""
    idx = list(range(len(feature_set))) if indices is None else list(indices)
    hyps = transcribe(model, feature_set, idx, max_batch_seconds, device, precision)
    refs = [feature_set.texts[i] for i in idx]
    errors, words = error_counts(refs, hyps)
    return {"wer": 100.0 * errors / max(words, 1), "cer": char_error_rate(refs, hyps),
            "errors": errors, "words": words, "hypotheses": hyps}


def load_model_arg(model: str, cfg) -> "object":
    """``--model``: 'demo', a checkpoint path, or a torchaudio wav2vec2 bundle name."""
    import dataclasses

    from raysearch_adapters.models.registry import load_base_model

    if model.upper().startswith(("WAV2VEC2_", "HUBERT_")):
        return load_base_model(dataclasses.replace(cfg.model, name="wav2vec2", bundle=model))
    return load_base_model(dataclasses.replace(cfg.model, name="conformer_ctc", checkpoint=model))


def cli_main(args) -> int:
    """Entry point of ``raysearch-adapters evaluate``."""
    import json
    import logging

    from raysearch_adapters.cli import load_from_args
    from raysearch_adapters.fileio import atomic_write_text

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_from_args(args.config)
    model = load_model_arg(args.model, cfg)
    if args.adapter:
        from raysearch_adapters.adapters.state import load_adapter

        handle, adapter_cfg, _ = load_adapter(args.adapter, model)
        print(f"adapter: {args.adapter} ({len(handle.targeted)} modules, {handle.num_params:,} params)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    print(f"{'manifest':<60} {'utts':>6} {'hours':>6} {'WER %':>7} {'CER %':>7}")
    lines = []
    for manifest in args.manifest:
        fs = load_feature_set(cfg.data, model, manifest)
        r = evaluate(model, fs, max_batch_seconds=cfg.data.max_batch_seconds, device=device)
        print(f"{manifest:<60} {len(fs):>6} {sum(fs.durations) / 3600:>6.2f} {r['wer']:>7.2f} {r['cer']:>7.2f}")
        lines += [json.dumps({"manifest": str(manifest), "id": i, "reference": ref, "hypothesis": hyp})
                  for i, ref, hyp in zip(fs.ids, fs.texts, r["hypotheses"])]
    if args.hypotheses:
        atomic_write_text(args.hypotheses, "\n".join(lines) + "\n")
        print(f"hypotheses: {args.hypotheses}")
    return 0
