"""Bench: one Whisper training step (decoder adapters on the cached encoder output), the cross-attention folded
(what trials run) against transformers' own attention, and the loss and gradients of the two.

    python bench/whisper_step.py [--checkpoint FOLDER] [--threads 1] [--steps 10]

The step is the one ``conf/whisper.yaml`` trials take: bottleneck adapters (dim 64) after the feed-forward
of every decoder layer, 8 labelled utterances (a demo transcript each) and 4 distillation utterances, all
from the encoder's output (random here: the cost depends on shapes, not values). Default checkpoint: the
converted tiny.en (``python -m raysearch_adapters.tools.ct2_whisper_to_hf --tiny-en``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import machine  # noqa: E402

from raysearch_adapters.adapters.inject import inject_adapters  # noqa: E402
from raysearch_adapters.config import AdapterConfig  # noqa: E402
from raysearch_adapters.models.whisper import Whisper  # noqa: E402

TEXTS = ["five three nine two", "r u b o u t", "erase two one", "call seven four four one",
         "cancel", "dial zero zero seven", "spell h e l l o", "repeat nine nine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    home = Path(os.environ.get("RAYSEARCH_ADAPTERS_HOME", "~/.cache/raysearch-adapters")).expanduser()
    parser.add_argument("--checkpoint", default=str(home / "models" / "whisper-tiny.en"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Whisper.from_pretrained(args.checkpoint, max_new_tokens=64)
    handle = inject_adapters(model, AdapterConfig(dim=64, blocks="decoder:all", positions=["ffn"]))
    for p in handle.parameters():  # non-zero adapters: a fresh one adds exactly 0
        torch.nn.init.normal_(p, std=0.02)
    k = model.num_encoder_blocks
    d = model.hf.config.d_model
    hidden = torch.randn(len(TEXTS) + 4, 1500, d)
    lengths = torch.full((hidden.shape[0],), 1500)
    with torch.no_grad():  # the teacher: the base's greedy transcript and top-k logits on the 4 distillation rows
        with handle.disabled():
            teacher = model.teacher_from(hidden[len(TEXTS):], lengths[len(TEXTS):], k)
    # random encoder states make the base loop to max_new_tokens: keep the first 16 positions, a demo transcript's length
    teacher = [t[:16] for t in teacher]
    teacher_lengths = torch.tensor([len(t) for t in teacher])
    teacher = torch.nn.utils.rnn.pad_sequence(teacher, batch_first=True)

    def step():
        for p in handle.parameters():
            p.grad = None
        supervised, kd = model.step_terms_from(hidden, lengths, k, TEXTS, teacher, teacher_lengths)
        loss = supervised.mean() + 5.0 * kd.mean()
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in handle.parameters()]

    print(machine(), f"{torch.get_num_threads()} torch threads", flush=True)
    print(f"checkpoint {args.checkpoint}; {len(TEXTS)} labelled + 4 distillation utterances a step "
          f"(teacher transcripts of {teacher_lengths.tolist()} tokens)", flush=True)
    results = {}
    for name in ("transformers", "folded"):
        if name == "transformers":
            model._folded = contextlib.nullcontext  # teacher forcing through transformers' own attention
        else:
            del model._folded  # the class's: folded
        results[name] = step()
        step()  # warm-up
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        results[name] += ((time.perf_counter() - t) / args.steps,)
        print(f"{name:>12}: {results[name][2]:.3f} s a step", flush=True)
    (loss_a, grads_a, t_a), (loss_b, grads_b, t_b) = results["transformers"], results["folded"]
    grad_diff = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(grads_a, grads_b))
    print(f"folded / transformers: {t_b / t_a:.2f} of the time ({t_a / t_b:.2f}x faster); loss {loss_b:.6f} vs "
          f"{loss_a:.6f} (relative difference {abs(loss_a - loss_b) / abs(loss_a):.1e}); gradients: largest "
          f"difference {grad_diff:.1e} of the largest gradient", flush=True)


if __name__ == "__main__":
    main()
