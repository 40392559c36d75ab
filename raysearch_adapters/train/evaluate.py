"""Greedy transcription and WER of a model over a cached feature set (no Ray)."""

from __future__ import annotations

import contextlib
from typing import Callable, List, Sequence

import torch

from raysearch_adapters.data.batching import duration_batches
from raysearch_adapters.data.cache import load_features
from raysearch_adapters.metrics import char_error_rate, error_counts
from raysearch_adapters.models.base import as_view


def load_feature_set(data, model, manifest: str, progress: bool = True, max_hours: float = 0.0,
                     require_text: bool = True):
    """The cached features of ``manifest`` for ``model``'s featurizer (computed on the first call only);
    ``max_hours`` > 0: only the fixed pool subset of that much audio (``data.pool_hours``);
    ``require_text=False``: transcripts may be missing (distillation audio)."""
    return load_features(manifest, model.featurizer().eval(), model.featurizer_key(), data.cache_dir,
                         model.sample_rate, data.on_error, data.duration_tolerance, progress=progress,
                         max_hours=max_hours, require_text=require_text)


def uses_bf16(device: torch.device, precision: str) -> bool:
    """Whether ``precision`` means bf16 autocast on ``device``: bf16 (any device), auto on GPU; fp32 otherwise
    (CPU bf16 is slower here)."""
    return precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast where :func:`uses_bf16`, else nothing (fp32)."""
    if uses_bf16(device, precision):
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _per_utterance(model, feature_set, indices: Sequence[int] | None, max_batch_seconds: float,
                   device: torch.device | str, precision: str, run: Callable) -> list:
    """``run(view, inputs, lengths)`` (one item per utterance of the batch) over duration batches of ``indices``
    (default: all) of ``feature_set``, in eval mode and ``precision``; the items in ``indices`` order."""
    view = as_view(model)
    device = torch.device(device)
    idx = list(range(len(feature_set))) if indices is None else list(indices)
    durations = [feature_set.durations[i] for i in idx]
    out: list = [None] * len(idx)
    was_training = view.training
    view.eval()
    try:
        for batch in duration_batches(durations, max_batch_seconds, shuffle=False):
            x, lengths, _ = feature_set.collate([idx[j] for j in batch])
            with autocast_context(device, precision):
                items = run(view, x.to(device), lengths.to(device))
            for j, item in zip(batch, items):
                out[j] = item
    finally:
        view.train(was_training)
    return out


@torch.no_grad()
def transcribe(model, feature_set, indices: Sequence[int] | None = None, max_batch_seconds: float = 120.0,
               device: torch.device | str = "cpu", precision: str = "auto") -> List[str]:
    """Hypotheses for ``indices`` (default: all) of ``feature_set``, in that order.

    ``model`` is a :class:`~raysearch_adapters.models.base.BackboneView` (e.g. the top of the
    model on frozen-prefix outputs) or a backbone (the whole model on features)."""
    return _per_utterance(model, feature_set, indices, max_batch_seconds, device, precision,
                          lambda view, x, lengths: view.transcribe(x, lengths))


@torch.no_grad()
def model_outputs(model, feature_set, max_batch_seconds: float = 120.0, device: torch.device | str = "cpu",
                  precision: str = "auto") -> List[torch.Tensor]:
    """The model's outputs on every utterance of ``feature_set`` (what ``Backbone.teacher_from`` gives: CTC
    log-probabilities [T_i, C]), fp32 on the CPU, in the batches :func:`transcribe` uses."""
    return _per_utterance(model, feature_set, None, max_batch_seconds, device, precision,
                          lambda view, x, lengths: [o.float().cpu() for o in view.teacher(x, lengths)])


def evaluate(model, feature_set, indices: Sequence[int] | None = None, max_batch_seconds: float = 120.0,
             device: torch.device | str = "cpu", precision: str = "auto") -> dict:
    """WER/CER (percent) plus the raw error and word counts (to reduce across shards), scored on the backbone's
    ``wer_text`` of references and hypotheses; ``hypotheses`` are the model's own text."""
    idx = list(range(len(feature_set))) if indices is None else list(indices)
    hyps = transcribe(model, feature_set, idx, max_batch_seconds, device, precision)
    # The backbone's one normaliser, on references and hypotheses alike (identity for CTC models).
    scored = as_view(model).model.wer_text
    refs = [scored(feature_set.texts[i]) for i in idx]
    scored_hyps = [scored(h) for h in hyps]
    errors, words = error_counts(refs, scored_hyps)
    return {"wer": 100.0 * errors / max(words, 1), "cer": char_error_rate(refs, scored_hyps),
            "errors": errors, "words": words, "hypotheses": hyps}


def load_model_arg(model, cfg) -> "object":
    """``--model``: 'demo', a checkpoint path, a torchaudio wav2vec2 bundle name, or a NeMo model (a ``.nemo``
    file, or any name with ``model.name=nemo`` among the config items); None: the config's ``model`` section
    (``model.name=whisper model.checkpoint=DIR``, ...)."""
    import dataclasses

    from raysearch_adapters.models.registry import load_base_model

    if model is None:
        return load_base_model(cfg.model)
    if model.upper().startswith(("WAV2VEC2_", "HUBERT_")):
        return load_base_model(dataclasses.replace(cfg.model, name="wav2vec2", bundle=model))
    if model.endswith(".nemo") or cfg.model.name == "nemo":
        return load_base_model(dataclasses.replace(cfg.model, name="nemo", checkpoint=model))
    return load_base_model(dataclasses.replace(cfg.model, name="conformer_ctc", checkpoint=model))


def cli_main(args) -> int:
    """Entry point of ``raysearch-adapters evaluate``."""
    import logging

    from raysearch_adapters.cli import load_from_args

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_from_args(args.config)
    model = load_model_arg(args.model, cfg)
    handle, k = None, None
    if args.adapter:
        from raysearch_adapters.adapters.state import load_adapter
        from raysearch_adapters.train.prefix import measurement_block

        handle, adapter_cfg, extra = load_adapter(args.adapter, model)
        # The path the search measured this adapter on (same blocks, precision and batches): its WERs reproduce.
        k = measurement_block(handle, cfg.train.prefix_cache, bool(extra.get("hp", {}).get("specaugment")))
        print(f"adapter: {args.adapter} ({len(handle.targeted)} modules, {handle.num_params:,} params)"
              + ("" if k is None else f"; measured from block {k} on the frozen-prefix cache"))
    from raysearch_adapters.train.prefix import inputs_from, view_from
    from raysearch_adapters.train.transcripts import set_of, set_rows

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    view = view_from(model, k)
    print(f"{'manifest':<60} {'utts':>6} {'hours':>6} {'WER %':>7} {'CER %':>7}")
    rows = []
    for manifest in args.manifest:
        fs = load_feature_set(cfg.data, model, manifest)
        inputs = inputs_from(fs, model, k, cfg.data.cache_dir)
        r = evaluate(view, inputs, max_batch_seconds=cfg.data.max_batch_seconds, device=device,
                     precision=cfg.train.precision)
        print(f"{manifest:<60} {len(fs):>6} {sum(fs.durations) / 3600:>6.2f} {r['wer']:>7.2f} {r['cer']:>7.2f}")
        if args.hypotheses:
            # hypotheses.parquet: the model without adapter as the base, the --adapter (if any) as the winner
            if handle is None:
                base, winner = r["hypotheses"], None
            else:
                with handle.disabled():
                    base = transcribe(view, inputs, None, cfg.data.max_batch_seconds, device, cfg.train.precision)
                winner = r["hypotheses"]
            rows += set_rows(*set_of(cfg.data, manifest), manifest, fs, base, winner, wer_text=model.wer_text)
    if args.hypotheses:
        from raysearch_adapters.results.hypotheses import HYPOTHESES_SCHEMA
        from raysearch_adapters.results.tables import write_table

        # --model, else the config's model section it came from
        source = args.model or (cfg.model.bundle if cfg.model.name == "wav2vec2" else cfg.model.checkpoint)
        write_table(args.hypotheses, rows, HYPOTHESES_SCHEMA, {"model": source, "adapter": args.adapter or "",
                                                                "measured_from_block": "" if k is None else str(k),
                                                                "precision": cfg.train.precision})
        print(f"hypotheses: {args.hypotheses} (Parquet, the schema of a search's hypotheses.parquet)")
    return 0
