"""``raysearch-adapters evaluate --manifest M... [--model M] [--adapter FILE] [--hypotheses FILE] [CONFIG]``:
WER and CER of a model, with or without a search's adapter, on manifests."""

from __future__ import annotations

import argparse
import logging

import torch

from raysearch_adapters.adapters.state import load_adapter
from raysearch_adapters.commands.args import load_from_args
from raysearch_adapters.config import Config
from raysearch_adapters.data.cache import load_feature_set
from raysearch_adapters.data.source import dataset_options
from raysearch_adapters.models.base import Backbone
from raysearch_adapters.models.registry import load_base_model, model_section_for
from raysearch_adapters.results.hypotheses import HYPOTHESES_SCHEMA
from raysearch_adapters.results.tables import write_table
from raysearch_adapters.train.evaluate import evaluate, transcribe
from raysearch_adapters.train.prefix import inputs_from, measurement_block, view_from
from raysearch_adapters.train.transcripts import set_of, set_rows


def load_model_arg(model: str | None, cfg: Config) -> Backbone:
    """``--model``: 'demo', a checkpoint path, a torchaudio wav2vec2 bundle name, a ``.nemo`` file, or what the
    config's ``model.name`` takes (:func:`~raysearch_adapters.models.registry.model_section_for`); None: the
    config's ``model`` section (``model.name=whisper model.checkpoint=DIR``, ...)."""
    return load_base_model(cfg.model if model is None else model_section_for(model, cfg.model))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_from_args(args.config)
    model = load_model_arg(args.model, cfg)
    handle, k = None, None
    if args.adapter:
        handle, adapter_cfg, extra = load_adapter(args.adapter, model)
        # The path the search measured this adapter on (same blocks, precision and batches): its WERs reproduce.
        k = measurement_block(handle, cfg.train.prefix_cache, bool(extra.get("hp", {}).get("specaugment")))
        print(f"adapter: {args.adapter} ({len(handle.targeted)} modules, {handle.num_params:,} params)"
              + ("" if k is None else f"; measured from block {k} on the frozen-prefix cache"))
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
            rows += set_rows(*set_of(cfg, manifest), manifest, fs, base, winner, wer_text=model.wer_text,
                             options=dataset_options(cfg.data))
    if args.hypotheses:
        # --model, else the config's model section it came from
        source = args.model or cfg.model.checkpoint
        write_table(args.hypotheses, rows, HYPOTHESES_SCHEMA, {"model": source, "adapter": args.adapter or "",
                                                                "measured_from_block": "" if k is None else str(k),
                                                                "precision": cfg.train.precision})
        print(f"hypotheses: {args.hypotheses} (Parquet, the schema of a search's hypotheses.parquet)")
    return 0
