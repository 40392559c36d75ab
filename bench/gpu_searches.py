"""The searches of bench/gpu_check.sh, one per call: their figures go to the file $FIGURES names (one line each).

    python bench/gpu_searches.py demo    --size full|dry --out DIR   # the demo model on the small demo corpus, on the GPU
    python bench/gpu_searches.py rate    --size full|dry --out DIR   # trials/hour, 1 and 4 trials per GPU
    python bench/gpu_searches.py whisper --size full|dry --out DIR --checkpoint FOLDER

``--size dry`` runs each on the CPU (resources.use_gpu=false) with a few steps: what the dry run checks is that the
keys, corpus and results the GPU run uses still exist. The small demo corpus is $RAYSEARCH_ADAPTERS_SMALL_DEMO
(carried to the GPU machine, which has no TTS), else built in DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _corpus(out: Path) -> Path:
    from raysearch_adapters.data.demo import build_demo_corpus

    carried = os.environ.get("RAYSEARCH_ADAPTERS_SMALL_DEMO")
    return build_demo_corpus(carried or out / "small_demo", small=True, seed=0)


def _data(corpus: Path, out: Path, name: str) -> list[str]:
    return [f"data.demo_dir={corpus}", f"data.cache_dir={out / 'cache'}", f"results.dir={out / 'results'}",
            f"search.name={name}", "search.start_points=[]", "data.pool_hours=0",
            *(f"data.{d}_{s}={corpus}/{d}/{s}.json" for d in ("new", "original") for s in ("train", "dev", "test"))]


def _gpu(size: str, per_gpu: int) -> list[str]:
    if size == "dry":
        return ["resources.use_gpu=false", "resources.cpus_per_worker=1", "resources.max_concurrent_trials=1"]
    return ["resources.use_gpu=true", f"resources.gpus_per_worker={1 / per_gpu:g}", "resources.cpus_per_worker=1",
            f"resources.max_concurrent_trials={per_gpu}", "train.precision=auto"]


def _search(overrides: list[str], configs: list = ()) -> tuple[dict, float]:
    from raysearch_adapters.config import DEMO_CONFIG, load_config
    from raysearch_adapters.results import TRIALS_SCHEMA, read_rows
    from raysearch_adapters.search.run import run_search

    t = time.perf_counter()
    cfg = load_config(list(configs) or [DEMO_CONFIG], overrides)
    summary = run_search(cfg)
    wall = time.perf_counter() - t
    rows = read_rows(Path(cfg.results.dir) / cfg.search.name / "trials.parquet", TRIALS_SCHEMA)
    summary["_devices"] = sorted({r["device"] for r in rows})
    summary["_trials"] = len(rows)
    return summary, wall


def _figure(line: str) -> None:
    print(line)
    with open(os.environ.get("FIGURES", os.devnull), "a") as f:
        f.write(line + "\n")


def _winner(summary: dict) -> str:
    test = (summary.get("winner") or {}).get("test") or {}
    return f"winner test WER new {test['new']:.2f}" if "new" in test else "no winner"


def demo(args) -> None:
    steps = 20 if args.size == "dry" else 400
    corpus = _corpus(args.out)
    summary, wall = _search([*_data(corpus, args.out, "gpu-demo"), *_gpu(args.size, 4), "model.checkpoint=demo",
                             "search.budget_steps=0", "search.num_trials=4", f"train.steps={steps}",
                             f"train.eval_every={steps // 2}", "search.asha.enabled=false"])
    t = summary["timings_s"]
    _figure(f"demo: {summary['_trials']} trials x {steps} steps on {', '.join(summary['_devices'])}: "
            f"{wall:.0f} s (setup {t['setup']:.0f}, trials {t['trials']:.0f}, test {t['test']:.0f}); {_winner(summary)}")


def rate(args) -> None:
    steps, trials = (10, 2) if args.size == "dry" else (200, 8)
    corpus = _corpus(args.out)
    for per_gpu in ((1,) if args.size == "dry" else (1, 4)):
        summary, wall = _search([*_data(corpus, args.out, f"gpu-rate-{per_gpu}"), *_gpu(args.size, per_gpu),
                                 "model.checkpoint=demo", "search.budget_steps=0", f"search.num_trials={trials}",
                                 f"train.steps={steps}", f"train.eval_every={steps}", "search.asha.enabled=false"])
        t = summary["timings_s"]["trials"]
        _figure(f"rate: {per_gpu} trial(s) per GPU: {trials} trials x {steps} steps in {t:.0f} s = "
                f"{3600 * trials / t:.0f} trials/hour on {', '.join(summary['_devices'])}")


def whisper(args) -> None:
    steps = 4 if args.size == "dry" else 200
    corpus = _corpus(args.out)
    summary, wall = _search([*_data(corpus, args.out, "gpu-whisper"), *_gpu(args.size, 2),
                             f"model.checkpoint={args.checkpoint}", "search.num_trials=2", f"train.steps={steps}",
                             f"train.eval_every={steps}", f"train.warmup_steps={min(20, steps)}"],
                            [ROOT / "conf" / "whisper.yaml"])
    t = summary["timings_s"]
    _figure(f"whisper: 2 trials x {steps} steps on {', '.join(summary['_devices'])}: {wall:.0f} s "
            f"(setup {t['setup']:.0f}, trials {t['trials']:.0f}, test {t['test']:.0f}); {_winner(summary)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["demo", "rate", "whisper"])
    parser.add_argument("--size", choices=["full", "dry"], default="full")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", default="")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    {"demo": demo, "rate": rate, "whisper": whisper}[args.what](args)


if __name__ == "__main__":
    main()
