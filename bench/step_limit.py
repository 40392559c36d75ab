"""Bench 4: how close an adapter training step through the frozen-prefix cache gets to its limit.

    python bench/step_limit.py [--checkpoint PATH] [--steps 5] [--batch-seconds 30] [--utterances 64] [--out F]

For adapters at the bottom (every block), the middle (blocks n/2..n-1) and the top (the
last block), the same ``--steps`` training steps on the same batches, each after one
untimed warm-up step:

  full      the train loop's step from cached log-mels: forward/backward through the whole model
            (only the adapters train: no weight gradients below, but the whole forward)
  prefix    the same step through the model from the lowest adapted block up (TopOfModel on
            the cached prefix outputs): the adapted blocks, any unadapted block above them, the head and CTC
  limit     the adapted blocks alone on the same cached inputs, with a plain squared-output loss:
            what any step has to compute at least (no head, no CTC, no blocks without adapters)

The caches are built first in a temporary folder (not timed). The base model is
``--checkpoint``, else the demo model, else a randomly initialised default-size Conformer
(said in the output); the manifest defaults to the demo corpus's new-domain train set.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapter_bench import (PLACEMENTS, adapter_step, load_bench_model, parser_with_common_options,  # noqa: E402
                           seconds_per_step, subset_manifest, train_batches)
from common import machine  # noqa: E402

from raysearch_adapters.adapters.inject import AdapterHandle, inject_adapters  # noqa: E402
from raysearch_adapters.config import AdapterConfig  # noqa: E402
from raysearch_adapters.data.cache import load_features  # noqa: E402
from raysearch_adapters.models.conformer import padding_mask  # noqa: E402
from raysearch_adapters.train.prefix import TopOfModel, load_prefix_set  # noqa: E402


def adapted_blocks_step(model, handle: AdapterHandle, optimizer: torch.optim.Optimizer, batch,
                        device: torch.device) -> None:
    """Forward/backward through the Conformer blocks holding adapters only, then clipping and AdamW."""
    hidden, lengths, _ = batch
    x, mask = hidden.to(device), padding_mask(lengths.to(device), hidden.shape[1])
    for i in handle.block_ids:
        x = model.encoder.layers[i](x, mask)
    loss = x.float().square().mean() + handle.aux_loss()
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(handle.parameters()), 1.0)
    optimizer.step()


def measure_placement(name: str, model, train_set, batches, cache_dir: Path, dim: int, device: torch.device) -> dict:
    """Seconds per step of the full model, the top from the prefix cache and the adapted blocks alone."""
    handle = inject_adapters(model, AdapterConfig(dim=dim, blocks=PLACEMENTS[name](len(model.adaptable_blocks()))))
    k = handle.lowest_block
    prefix = load_prefix_set(train_set, model, k, cache_dir)
    top = TopOfModel(model, k)
    handle.train()
    row = {"placement": name, "blocks": handle.block_ids, "k": k}
    for way, step, collate in (
            ("full", lambda o, b: adapter_step(model, handle, o, b, device), train_set.collate),
            ("prefix", lambda o, b: adapter_step(top, handle, o, b, device), prefix.collate),
            ("limit", lambda o, b: adapted_blocks_step(model, handle, o, b, device), prefix.collate)):
        optimizer = torch.optim.AdamW(handle.parameters(), lr=1e-3)
        row[f"{way}_s_per_step"] = seconds_per_step(lambda b: step(optimizer, collate(b)), handle, batches, device)
    handle.remove()
    return row


def table(rows: list) -> str:
    """Markdown: seconds per step; in brackets the speed-up over the full step, then each as a multiple of the limit."""
    lines = ["| placement | adapted blocks | k | full s/step | prefix s/step | limit s/step | full / limit "
             "| prefix / limit |", "|" + " --- |" * 8]
    for r in rows:
        full, prefix, limit = r["full_s_per_step"], r["prefix_s_per_step"], r["limit_s_per_step"]
        lines.append(f"| {r['placement']} | {r['blocks'][0]}-{r['blocks'][-1]} | {r['k']} | {full:.3f} | "
                     f"{prefix:.3f} ({full / prefix:.2f}x) | {limit:.3f} | {full / limit:.2f} | {prefix / limit:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = parser_with_common_options(__doc__.splitlines()[0])
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = machine()
    with tempfile.TemporaryDirectory(prefix="step-limit-bench-") as tmp:
        tmp = Path(tmp)
        manifest = subset_manifest(args.manifest, args.utterances, tmp / "train.json")
        model, note = load_bench_model(args.checkpoint, [manifest])
        model.to(device)
        train_set = load_features(manifest, model.featurizer().eval(), model.featurizer_key(), tmp / "cache",
                                  model.sample_rate, progress=False)
        batches = train_batches(train_set.durations, args.batch_seconds, args.steps)
        rows = [measure_placement(name, model, train_set, batches, tmp / "cache", args.dim, device)
                for name in PLACEMENTS]
    print(f"machine: {where}")
    print(note)
    print(f"{args.steps} steps of <= {args.batch_seconds:g} s batches from {len(train_set)} train utterances")
    print()
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": where, "model": note, "args": vars(args), "rows": rows},
                                             indent=1) + "\n")


if __name__ == "__main__":
    main()
