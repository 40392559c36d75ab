"""Bench: one trial's cost per training step with no cache, the feature cache, and the frozen-prefix cache too.

    python bench/trial_cost.py [--checkpoint PATH] [--steps 5] [--batch-seconds 30] [--utterances 64]
                               [--dev-utterances 32] [--out trial_cost.json]

For adapters at the bottom (every block: the lowest adapted block is 0), the middle
(blocks n/2..n-1) and the top (the last block), the same ``--steps`` training steps on the
same batches (the train loop's step: forward, CTC loss, backward, clipping, AdamW) run
three ways, each after one untimed warm-up step:

  naive      decode the audio and compute log-mels every step, forward/backward through the whole model
  features   cached log-mels (the feature cache), forward/backward through the whole model
  prefix     cached outputs of the blocks below the lowest adapted one, forward/backward through the rest

Decoding the dev subset (greedy, what every evaluation does) is timed on the whole model
and on the prefix cache. The caches are built first in a temporary folder; their build
times are printed apart (a search builds each once and every trial reuses it). SpecAugment
is off everywhere (the prefix cache needs it off). The train and dev manifests default
to the demo corpus's new-domain ones (first ``--utterances``/``--dev-utterances`` of each).
Without ``--checkpoint`` the demo model is used, or a randomly initialised default-size
Conformer when there is none (said in the output; timings hold, WERs do not).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapter_bench import (PLACEMENTS, adapter_step, load_bench_model, parser_with_common_options,  # noqa: E402
                           seconds_per_step, subset_manifest, timed, train_batches)
from common import machine  # noqa: E402

from raysearch_adapters.adapters.inject import inject_adapters  # noqa: E402
from raysearch_adapters.config import DEMO_CONFIG, AdapterConfig, load_config  # noqa: E402
from raysearch_adapters.data.audio import load_audio  # noqa: E402
from raysearch_adapters.data.cache import FeatureSet, load_features  # noqa: E402
from raysearch_adapters.data.manifest import read_manifest  # noqa: E402
from raysearch_adapters.data.text import normalize_text  # noqa: E402
from raysearch_adapters.train.evaluate import evaluate  # noqa: E402
from raysearch_adapters.train.prefix import TopOfModel, load_prefix_set  # noqa: E402


def naive_collate(model, manifest: Path):
    """``indices -> batch`` that decodes and featurizes every utterance again, as a trial without caches would."""
    utterances = read_manifest(manifest)
    featurizer = model.featurizer().eval()

    @torch.no_grad()
    def collate(indices):
        feats = []
        for i in indices:
            u = utterances[i]
            wave = load_audio(u.audio_filepath, model.sample_rate, u.offset, u.duration)
            x, n = featurizer(wave[None], torch.tensor([wave.numel()]))
            feats.append(x[0, : int(n[0])])
        lengths = torch.tensor([f.shape[0] for f in feats])
        return (torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths,
                [normalize_text(utterances[i].text) for i in indices])

    return collate


def feature_set(model, manifest: Path, cache_dir: Path) -> FeatureSet:
    return load_features(manifest, model.featurizer().eval(), model.featurizer_key(), cache_dir, model.sample_rate,
                         progress=False)


def measure_placement(name: str, model, sets: dict, naive, batches, cache_dir: Path, args,
                      device: torch.device) -> dict:
    """Seconds per step of the three ways, and dev decoding with and without the prefix cache, for one placement."""
    n = len(model.adaptable_blocks())
    handle = inject_adapters(model, AdapterConfig(dim=args.dim, blocks=PLACEMENTS[name](n)))
    k = handle.lowest_block
    start = time.perf_counter()
    prefix = {d: load_prefix_set(sets[d], model, k, cache_dir) for d in ("train", "dev")}
    row = {"placement": name, "blocks": handle.block_ids, "k": k, "prefix_build_s": time.perf_counter() - start}
    top = TopOfModel(model, k)
    handle.train()
    for way, net, collate in (("naive", model, naive), ("features", model, sets["train"].collate),
                              ("prefix", top, prefix["train"].collate)):
        optimizer = torch.optim.AdamW(handle.parameters(), lr=1e-3)
        row[f"{way}_s_per_step"] = seconds_per_step(
            lambda b: adapter_step(net, handle, optimizer, collate(b), device), handle, batches, device)
    handle.eval()
    row["dev_decode_s"] = timed(lambda: evaluate(model, sets["dev"], device=device), device)
    row["dev_decode_prefix_s"] = timed(lambda: evaluate(top, prefix["dev"], device=device), device)
    handle.remove()
    return row


def table(rows: list) -> str:
    """The markdown table: seconds, and in brackets the speed-up over the naive step (or the full decode)."""
    lines = ["| placement | adapted blocks | k | naive s/step | feature cache s/step | feature + prefix cache s/step "
             "| dev decode s | dev decode, prefix cache s |", "|" + " --- |" * 8]
    for r in rows:
        naive = r["naive_s_per_step"]
        lines.append(
            f"| {r['placement']} | {r['blocks'][0]}-{r['blocks'][-1]} | {r['k']} | {naive:.3f} | "
            f"{r['features_s_per_step']:.3f} ({naive / r['features_s_per_step']:.2f}x) | "
            f"{r['prefix_s_per_step']:.3f} ({naive / r['prefix_s_per_step']:.2f}x) | {r['dev_decode_s']:.2f} | "
            f"{r['dev_decode_prefix_s']:.2f} ({r['dev_decode_s'] / r['dev_decode_prefix_s']:.2f}x) |")
    return "\n".join(lines)


def main() -> None:
    data = load_config([DEMO_CONFIG]).data
    parser = parser_with_common_options(__doc__.splitlines()[0])
    parser.add_argument("--dev", default=data.new_dev, help="dev manifest (default: demo new/dev)")
    parser.add_argument("--dev-utterances", type=int, default=32, help="dev utterances decoded")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = machine()
    with tempfile.TemporaryDirectory(prefix="trial-cost-bench-") as tmp:
        tmp = Path(tmp)
        manifests = {"train": subset_manifest(args.manifest, args.utterances, tmp / "train.json"),
                     "dev": subset_manifest(args.dev, args.dev_utterances, tmp / "dev.json")}
        model, note = load_bench_model(args.checkpoint, list(manifests.values()))
        model.to(device)
        start = time.perf_counter()
        sets = {d: feature_set(model, m, tmp / "cache") for d, m in manifests.items()}
        features_s = time.perf_counter() - start
        batches = train_batches(sets["train"].durations, args.batch_seconds, args.steps)
        naive = naive_collate(model, manifests["train"])
        evaluate(model, sets["dev"], device=device)  # warm-up: the first decode pays one-off costs
        rows = [measure_placement(name, model, sets, naive, batches, tmp / "cache", args, device)
                for name in PLACEMENTS]
    audio = sum(sets["train"].durations) + sum(sets["dev"].durations)
    print(f"machine: {where}")
    print(note)
    print(f"{args.steps} steps of <= {args.batch_seconds:g} s batches from {len(sets['train'])} train utterances; "
          f"dev decode of {len(sets['dev'])} utterances; feature caches built in {features_s:.1f} s ({audio:.0f} s "
          "of audio); prefix caches (train + dev) in " + ", ".join(f"{r['prefix_build_s']:.1f} s (k={r['k']})"
                                                               for r in rows))
    print()
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": where, "model": note, "args": vars(args),
                                              "features_build_s": features_s, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
