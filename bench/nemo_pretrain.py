"""Pretrain a small NeMo Conformer-CTC (BPE) on the demo's original domain, for conf/nemo_demo.yaml's search.

    python bench/nemo_pretrain.py [--minutes 10] [--out ~/.cache/raysearch-adapters/models/nemo_demo_ctc.nemo]
    raysearch-adapters search conf/nemo_demo.yaml

A fresh ``EncDecCTCModelBPE`` (``models/nemo_build.py``: NeMo's own SentencePiece tokenizer of the
original-domain train texts, NeMo's ConformerEncoder and ConvASRDecoder) trained for a wall-time budget in
plain PyTorch: the model's own preprocessor in eval mode (features cached once, by the project's feature
cache, the same the search reads afterwards), SpecAugment, AdamW with warm-up and cosine decay over the
budget, NeMo's CTC loss through the backbone (``NemoASR.losses_from``). Then ``save_to`` a ``.nemo`` file,
and its WER on dev and test of both domains, printed and written beside it as JSON. Offline, CPU or GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from raysearch_adapters.config import load_config
from raysearch_adapters.data.batching import duration_batches
from raysearch_adapters.data.cache import load_feature_set
from raysearch_adapters.data.features import SpecAugment
from raysearch_adapters.data.manifest import read_manifest
from raysearch_adapters.data.text import normalize_text
from raysearch_adapters.models.nemo import NemoASR
from raysearch_adapters.models.nemo_build import build_model, train_tokenizer
from raysearch_adapters.schedule import warmup_cosine
from raysearch_adapters.train.evaluate import evaluate

CONF = Path(__file__).resolve().parent.parent / "conf" / "nemo_demo.yaml"
SETS = ("original_dev", "original_test", "new_dev", "new_test")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall-time budget")
    ap.add_argument("--out", default=None, help="the .nemo file to write (default: conf/nemo_demo.yaml's "
                                                "model.checkpoint)")
    ap.add_argument("--d-model", type=int, default=96)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-seconds", type=float, default=60.0, help="audio per training batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="config overrides (data.demo_dir=..., data.cache_dir=...)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = load_config([CONF], args.overrides)
    out = Path(args.out or cfg.model.checkpoint).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    texts = [normalize_text(u.text) for u in read_manifest(cfg.data.original_train, check_audio=False)]
    tok_dir = train_tokenizer(texts, out.parent / f"{out.stem}-tokenizer", args.vocab_size)
    asr = build_model("ctc", tok_dir, args.seed, d_model=args.d_model, n_layers=args.layers,
                      n_heads=4, conv_kernel_size=15, dropout=0.1)
    model = NemoASR(asr, "auto", "fresh EncDecCTCModelBPE")
    n_params = sum(p.numel() for p in asr.parameters())
    t0 = time.time()
    train = load_feature_set(cfg.data, model, cfg.data.original_train)
    features_s = time.time() - t0
    print(f"nemo_pretrain: {n_params / 1e6:.2f} M parameters, {len(train)} utterances "
          f"({sum(train.durations) / 3600:.2f} h) of {cfg.data.original_train}; features {features_s:.0f} s")

    for p in asr.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(asr.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=1e-3)
    specaug = SpecAugment(cfg.data.specaugment).train()
    budget, step, epoch, t0 = args.minutes * 60, 0, 0, time.time()
    asr.train()
    asr.preprocessor.eval()  # features come from the cache; the preprocessor is not run here
    while time.time() - t0 < budget:
        losses = []
        for batch in duration_batches(train.durations, args.batch_seconds, shuffle=True, seed=args.seed,
                                      epoch=epoch):
            progress = (time.time() - t0) / budget
            if progress >= 1:
                break
            x, lengths, batch_texts = train.collate(batch)
            for g in opt.param_groups:
                g["lr"] = args.lr * warmup_cosine(step, 200, progress)
            loss = model.losses_from(*model.encode_prefix(specaug(x) if step >= 300 else x, lengths, 0), 0,
                                     batch_texts).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(asr.parameters(), 1.0)
            opt.step()
            step += 1
            losses.append(loss.item())
            if step % 50 == 0:
                print(f"  step {step} epoch {epoch} loss {sum(losses[-50:]) / len(losses[-50:]):.3f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
        epoch += 1
    train_s = time.time() - t0
    asr.eval()
    for p in asr.parameters():
        p.requires_grad_(False)
    asr.save_to(str(out))

    base = NemoASR.load(str(out))  # the file as the search reads it
    wers = {}
    for name in SETS:
        r = evaluate(base, load_feature_set(cfg.data, base, getattr(cfg.data, name), progress=False),
                     max_batch_seconds=cfg.data.max_batch_seconds)
        wers[name] = round(r["wer"], 2)
    record = {"file": str(out), "parameters": n_params, "steps": step, "epochs_started": epoch,
              "train_seconds": round(train_s), "feature_seconds": round(features_s),
              "total_seconds": round(time.time() - t_start), "threads": args.threads, "wer": wers,
              "settings": {k: v for k, v in vars(args).items() if k != "overrides"}}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"nemo_pretrain: wrote {out} ({step} steps, {train_s / 60:.1f} min of training); WER "
          + ", ".join(f"{k} {v:.2f}" for k, v in wers.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
