"""Greedy transcription and WER of a model over a cached feature set (no Ray)."""

from __future__ import annotations

import contextlib
from typing import Callable, List, Sequence

import torch

from raysearch_adapters.data.batching import duration_batches
from raysearch_adapters.metrics import char_error_rate, scored_errors, utterance_error_counts
from raysearch_adapters.models.base import as_view


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


def score(wer_text: Callable[[str], str], refs: Sequence[str], hyps: Sequence[str]) -> dict:
    """WER/CER (percent) plus the raw error and word counts, in all and per utterance (to reduce across shards and
    to bootstrap), of ``hyps`` against ``refs``, both mapped by ``wer_text`` (the backbone's one normaliser:
    identity for CTC models)."""
    refs = [wer_text(r) for r in refs]
    scored_hyps = [wer_text(h) for h in hyps]
    utterance_errors, utterance_words = utterance_error_counts(refs, scored_hyps)
    utterance_errors = scored_errors(utterance_errors, utterance_words)  # what the WER and its bounds count
    errors, words = sum(utterance_errors), sum(utterance_words)
    return {"wer": 100.0 * errors / max(words, 1), "cer": char_error_rate(refs, scored_hyps),
            "errors": errors, "words": words, "utterance_errors": utterance_errors,
            "utterance_words": utterance_words}


def evaluate(model, feature_set, indices: Sequence[int] | None = None, max_batch_seconds: float = 120.0,
             device: torch.device | str = "cpu", precision: str = "auto") -> dict:
    """:func:`score` of the model's transcripts of ``indices`` (default: all) of ``feature_set``, on the backbone's
    ``wer_text`` of references and hypotheses; ``hypotheses`` are the model's own text."""
    idx = list(range(len(feature_set))) if indices is None else list(indices)
    hyps = transcribe(model, feature_set, idx, max_batch_seconds, device, precision)
    return {**score(as_view(model).model.wer_text, [feature_set.texts[i] for i in idx], hyps), "hypotheses": hyps}
