"""``raysearch-adapters pretrain``: train a base Conformer-CTC on the original domain.

Plain PyTorch: SentencePiece BPE trained on the train texts, cached log-mel features,
SpecAugment (from ``pretrain.specaugment_from_step`` on), AdamW with linear warm-up and cosine decay, CTC loss, bf16 autocast on GPU.
After every epoch: dev WER, ``last.pt`` (resumable) and ``best.pt`` (best original dev WER).
At the end the best model is evaluated on dev and test of both domains and written as
``model.pt`` (fp16, shippable) with ``MODEL_CARD.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from pathlib import Path
from typing import Dict

import torch
from tqdm import tqdm

from raysearch_adapters.config import Config, ConfigError
from raysearch_adapters.data.batching import duration_batches
from raysearch_adapters.data.cache import load_feature_set
from raysearch_adapters.data.demo import ensure_demo_corpus
from raysearch_adapters.data.features import SpecAugment
from raysearch_adapters.data.manifest import read_manifest
from raysearch_adapters.data.source import dataset_options, manifest_exists
from raysearch_adapters.data.text import normalize_text
from raysearch_adapters.fileio import atomic_write_text
from raysearch_adapters.models.checkpoint import atomic_torch_save, load_state_strict, save_checkpoint
from raysearch_adapters.models.conformer import ConformerCTC, load_checkpoint_model
from raysearch_adapters.models.ctc import ctc_loss
from raysearch_adapters.models.tokenizer import SentencePieceTokenizer, tokenizer_from_dict
from raysearch_adapters.schedule import warmup_cosine
from raysearch_adapters.train.evaluate import autocast_context, evaluate

log = logging.getLogger(__name__)

SPLITS = {"original_dev": ("original", "dev"), "original_test": ("original", "test"),
          "new_dev": ("new", "dev"), "new_test": ("new", "test")}


def _feature_sets(cfg: Config, model, names) -> Dict[str, object]:
    sets = {}
    for name in names:
        manifest = getattr(cfg.data, name)
        if not manifest_exists(manifest):
            log.warning("pretrain: %s (%s) not found; skipped", name, manifest)
            continue
        sets[name] = load_feature_set(cfg.data, model, manifest)
    return sets


def _ensure_corpus(cfg: Config) -> None:
    if not cfg.data.original_train:
        raise ConfigError("data.original_train: not set; pretrain trains the base model on this original-domain "
                          "manifest (.json/.jsonl or .parquet)")
    if (cfg.data.demo_dir and not Path(cfg.data.original_train).is_file()
            and Path(cfg.data.original_train).is_relative_to(cfg.data.demo_dir)):
        ensure_demo_corpus(cfg.data.demo_dir)


def pretrain(cfg: Config, resume: bool = False, command: str = "") -> Path:
    """Train, evaluate and export a base model; returns the path of the exported ``model.pt``."""
    pc = cfg.pretrain
    out = Path(pc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _ensure_corpus(cfg)
    torch.manual_seed(pc.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    last = out / "last.pt"
    state = torch.load(last, map_location="cpu", weights_only=True) if resume and last.is_file() else None
    if resume and state is None:
        log.warning("pretrain --resume: no %s; starting from scratch", last)
    if state is not None:
        tokenizer = tokenizer_from_dict(state["tokenizer"])
    else:
        texts = [normalize_text(u.text) for u in read_manifest(cfg.data.original_train, on_error=cfg.data.on_error,
                                                               check_audio=False, options=dataset_options(cfg.data))]
        tokenizer = SentencePieceTokenizer.train(texts, cfg.model.conformer.vocab_size)
    model = ConformerCTC(cfg.model.conformer, cfg.data.frontend, tokenizer)
    sets = _feature_sets(cfg, model, ["original_train", "original_dev", "new_dev"])
    train = sets.pop("original_train")
    tokenizer.check_texts(train.texts, cfg.data.original_train)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("pretrain: %d parameters, %d training utterances (%.2f h), device %s", n_params, len(train),
             sum(train.durations) / 3600, device)

    opt = torch.optim.AdamW(model.parameters(), lr=pc.lr, betas=(0.9, 0.98), weight_decay=pc.weight_decay)
    steps_per_epoch = len(duration_batches(train.durations, pc.max_batch_seconds, shuffle=True, seed=pc.seed))
    total = steps_per_epoch * pc.epochs
    specaug = SpecAugment(cfg.data.specaugment)
    history, start_epoch, best_wer, elapsed, step = [], 0, float("inf"), 0.0, 0
    if state is not None:
        load_state_strict(model, state["model"], str(last))
        opt.load_state_dict(state["optimizer"])
        history, start_epoch, best_wer, elapsed, step = (state["history"], state["epoch"], state["best_wer"],
                                                         state["elapsed"], state["step"])
        log.info("pretrain: resumed after epoch %d (best original dev WER %.2f)", start_epoch, best_wer)

    t0 = time.time() - elapsed

    def progress() -> float:
        # With a wall-time budget the cosine decays over the budget, so a run cut by
        # max_minutes still ends at a low learning rate instead of mid-schedule.
        by_steps = step / max(total, 1)
        return max(by_steps, (time.time() - t0) / (pc.max_minutes * 60)) if pc.max_minutes else by_steps

    out_of_time = False
    for epoch in range(start_epoch, pc.epochs):
        model.train()
        batches = duration_batches(train.durations, pc.max_batch_seconds, shuffle=True, seed=pc.seed, epoch=epoch)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{pc.epochs}", unit="batch", leave=False)
        losses = []
        for batch in bar:
            x, lengths, texts = train.collate(batch)
            x, lengths = x.to(device), lengths.to(device)
            if step >= pc.specaugment_from_step:
                x = specaug(x)
            lr = pc.lr * warmup_cosine(step, pc.warmup_steps, progress())
            for group in opt.param_groups:
                group["lr"] = lr
            with autocast_context(device, pc.precision):
                log_probs, out_lengths = model(x, lengths)
            loss = ctc_loss(log_probs, out_lengths, tokenizer, texts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if pc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), pc.grad_clip)
            opt.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            if pc.max_minutes and time.time() - t0 > pc.max_minutes * 60:
                out_of_time = True
                break
        wers = {name: evaluate(model, fs, device=device, precision=pc.precision)["wer"] for name, fs in sets.items()}
        row = {"epoch": epoch + 1, "train_loss": sum(losses) / max(len(losses), 1),
               "minutes": (time.time() - t0) / 60, **{f"{k}_wer": v for k, v in wers.items()}}
        history.append(row)
        log.info("pretrain: %s", "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in row.items()))
        if wers.get("original_dev", float("inf")) < best_wer:
            best_wer = wers["original_dev"]
            save_checkpoint(out / "best.pt", model, {"epoch": epoch + 1, "original_dev_wer": best_wer})
        atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                           "tokenizer": tokenizer.to_dict(), "history": history, "epoch": epoch + 1,
                           "step": step, "best_wer": best_wer, "elapsed": time.time() - t0}, last)
        if out_of_time:
            log.info("pretrain: stopping after %.1f minutes (pretrain.max_minutes)", pc.max_minutes)
            break
    return export(cfg, out, history, time.time() - t0, device, command)


def export(cfg: Config, out: Path, history: list, seconds: float, device: torch.device, command: str) -> Path:
    """Evaluate ``best.pt`` on dev and test of both domains; write fp16 ``model.pt`` + model card."""
    model = load_checkpoint_model(out / "best.pt")
    with torch.no_grad():  # the card must describe the shipped file: round the weights as fp16 stores them
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(value.half().float())
    model.to(device)
    sets = _feature_sets(cfg, model, list(SPLITS))
    measured = {name: evaluate(model, fs, device=device) for name, fs in sets.items()}
    card = {
        "command": command, "seed": cfg.pretrain.seed, "device": _device_name(device),
        "wall_minutes": round(seconds / 60, 1), "epochs_run": len(history),
        "parameters": sum(p.numel() for p in model.parameters()),
        "best_epoch": model.meta.get("epoch"),
        "wer": {name: round(r["wer"], 2) for name, r in measured.items()},
        "cer": {name: round(r["cer"], 2) for name, r in measured.items()},
        "recipe": {"model": model.config_dict(), "pretrain": _asdict(cfg.pretrain), "specaugment": _asdict(cfg.data.specaugment)},
        "data": {name: getattr(cfg.data, name) for name in ("original_train", *SPLITS)},
        "history": history,
    }
    target = out / "model.pt"
    save_checkpoint(target, model, {"card": json.dumps(card)}, half=True)
    atomic_write_text(out / "MODEL_CARD.md", model_card_markdown(card))
    log.info("pretrain: wrote %s (%.2f MiB) and %s", target, target.stat().st_size / 2**20, out / "MODEL_CARD.md")
    return target


def _asdict(dc) -> dict:
    return dataclasses.asdict(dc)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def model_card_markdown(card: dict) -> str:
    """The human-readable model card."""
    m = card["recipe"]["model"]["conformer"]
    rows = "\n".join(f"| {name.replace('_', ' ')} | {card['wer'].get(name, float('nan')):.2f} | "
                     f"{card['cer'].get(name, float('nan')):.2f} |" for name in SPLITS)
    hist = "\n".join(f"| {h['epoch']} | {h['minutes']:.1f} | {h['train_loss']:.3f} | "
                     f"{h.get('original_dev_wer', float('nan')):.2f} | {h.get('new_dev_wer', float('nan')):.2f} |"
                     for h in card["history"])
    return f"""# Demo base model: Conformer-CTC

The frozen base model of the embedded demo: trained on the demo corpus's *original*
domain only (read sentences, TTS voices), so the *new* domain (spelled letters, digits
and commands over a telephone channel, other voices) is left for adapters to fix.

* Architecture: Conformer-CTC, d_model {m['d_model']}, {m['num_layers']} blocks, {m['num_heads']} heads,
  FFN {m['ffn_dim']}, conv kernel {m['conv_kernel']}, 4x convolutional subsampling,
  SentencePiece BPE {m['vocab_size']}; {card['parameters']:,} parameters, stored in fp16.
* Trained by: `{card['command']}` (seed {card['seed']}), {card['epochs_run']} epochs,
  {card['wall_minutes']} minutes on {card['device']}; best epoch {card['best_epoch']} (original dev WER).

## WER / CER (%) of this file, greedy CTC decoding

| split | WER | CER |
| --- | --- | --- |
{rows}

## Training curve

| epoch | minutes | train loss | original dev WER | new dev WER |
| --- | --- | --- | --- | --- |
{hist}

## Recipe

```json
{json.dumps(card['recipe'], indent=2)}
```
"""
