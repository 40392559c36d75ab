"""Bench: what protects the original domain while adapters learn the new one (the forgetting issue).

    python bench/forgetting.py fixed  [--steps 1000] [--eval-every 250] [--lam 5] [key=value ...]
    python bench/forgetting.py search [--seeds 0 1 2] [key=value ...]
    python bench/forgetting.py step   [--steps 50] [--blocks all] [--threads 1] [key=value ...]

``fixed`` (a): one fixed trial (dim 64, every block, ``post``, lr 1e-3, 20 s batches) four
ways at equal steps: no protection, replay 0.5, distillation (lambda ``--lam``), both. Plain
PyTorch, no Ray: the trial's own train loop on the demo's cached features, evaluated on both dev
sets every ``--eval-every`` steps; prints dev new/original WER and degradation per evaluation.

``search`` (b): the demo search (``raysearch-adapters search`` with its defaults) with and without
the new dimensions (replay and distillation fixed at 0), same budget, over ``--seeds``; prints the
winner's new-domain test WER and test degradation per run and their median, min and max.
``step``: where one training step of the demo's trials goes (collate, forwards, backward, optimizer)
and what one evaluation of both dev sets costs in steps.
Extra ``key=value`` arguments override the demo config for every run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, run_demo_search  # noqa: E402

VARIANTS = {"none": (0.0, 0.0), "replay 0.5": (0.5, 0.0), "distill": (0.0, None), "replay 0.5 + distill": (0.5, None)}


def fixed(args, overrides: list) -> None:
    import torch

    from raysearch_adapters.adapters.inject import inject_adapters
    from raysearch_adapters.config import DEMO_CONFIG, AdapterConfig, TrainConfig, load_config
    from raysearch_adapters.models.registry import load_base_model
    from raysearch_adapters.data.cache import load_feature_set
    from raysearch_adapters.train.loop import TrainSets, base_dev_wers, train_adapters
    from raysearch_adapters.train.prefix import TopOfModel, load_prefix_set, load_teacher_set

    torch.set_num_threads(args.threads)
    cfg = load_config([DEMO_CONFIG], overrides)
    d = cfg.data
    base = load_base_model(cfg.model)
    new = load_feature_set(d, base, d.new_train, progress=False)
    dev = {"new": load_feature_set(d, base, d.new_dev, progress=False),
           "original": load_feature_set(d, base, d.original_dev, progress=False)}
    pool = load_feature_set(d, base, d.original_train, progress=False, max_hours=d.pool_hours)
    teacher = load_teacher_set(pool, base, d.cache_dir)
    print(f"# {time.strftime('%Y-%m-%d')}, {machine()}, {args.threads} thread(s); fixed trial: dim 64, blocks all, "
          f"post, lr {args.lr:g}, {args.batch:g} s batches, {args.steps} steps, pool {len(pool)} utterances "
          f"({sum(pool.durations) / 3600:.2f} h); distillation lambda {args.lam:g} on {args.distill_seconds:g} s/step")
    print("| variant | step | dev new WER | dev original WER | degradation | wall s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (replay, lam) in VARIANTS.items():
        lam = args.lam if lam is None else lam
        torch.manual_seed(0)
        model = load_base_model(cfg.model)
        handle = inject_adapters(model, AdapterConfig(dim=64, blocks="all", positions=["post"]))
        k = handle.lowest_block
        at_k = {"new": load_prefix_set(new, model, k, d.cache_dir), "pool": load_prefix_set(pool, model, k, d.cache_dir)}
        dev_k = {n: load_prefix_set(s, model, k, d.cache_dir) for n, s in dev.items()}
        view = TopOfModel(model, k)
        sets = TrainSets(at_k["new"], replay=at_k["pool"] if replay else None,
                         distill=at_k["pool"] if lam else None, teacher=teacher if lam else None)
        base_wer = base_dev_wers(view, handle, {"original": dev_k["original"]}, d.max_batch_seconds, "fp32")
        # a fixed-length trial: warm-up over a tenth of it, then cosine decay (as these figures were measured)
        train_cfg = TrainConfig(steps=args.steps, eval_every=args.eval_every, max_batch_seconds=args.batch,
                                distill_seconds=args.distill_seconds, lr=args.lr, lr_schedule="cosine",
                                warmup_steps=args.steps // 10, replay=replay, distill_weight=lam)
        start = time.monotonic()

        def report(m, _state, name=name):
            print(f"| {name} | {m['step']} | {m['eval_dev_wer_new']:.1f} | {m['eval_dev_wer_original']:.1f} | "
                  f"{m['eval_degradation']:+.2f} | {time.monotonic() - start:.0f} |", flush=True)

        train_adapters(view, handle, sets, dev_k, train_cfg, base_wer["original"], report)


def step_parts(args, overrides: list) -> None:
    """Where one demo training step's time goes (collating, the forward, backward, the optimizer) and what
    running the labelled and the distillation utterances as one batch saves over two forwards, measured on
    the same batches in the same run; plus what one evaluation of both dev sets costs in steps."""
    import torch

    from raysearch_adapters.adapters.inject import inject_adapters
    from raysearch_adapters.config import DEMO_CONFIG, AdapterConfig, load_config
    from raysearch_adapters.models.registry import load_base_model
    from raysearch_adapters.data.cache import load_feature_set
    from raysearch_adapters.train.evaluate import evaluate
    from raysearch_adapters.train.loop import BatchPlan, TrainSets, step_inputs
    from raysearch_adapters.train.prefix import TopOfModel, load_prefix_set, load_teacher_set

    torch.set_num_threads(args.threads)
    cfg = load_config([DEMO_CONFIG], overrides)
    d, t = cfg.data, cfg.train
    model = load_base_model(cfg.model)
    pool = load_feature_set(d, model, d.original_train, progress=False, max_hours=d.pool_hours)
    teacher = load_teacher_set(pool, model, d.cache_dir)
    handle = inject_adapters(model, AdapterConfig(dim=64, blocks=args.blocks, positions=["post"]))
    k = handle.lowest_block
    at_k = lambda s: load_prefix_set(s, model, k, d.cache_dir)  # noqa: E731
    new = at_k(load_feature_set(d, model, d.new_train, progress=False))
    dev = [at_k(load_feature_set(d, model, getattr(d, n), progress=False)) for n in ("new_dev", "original_dev")]
    pool_k = at_k(pool)
    sets = TrainSets(new, replay=pool_k if args.replay else None, distill=pool_k, teacher=teacher)
    view = TopOfModel(model, k)
    plan = BatchPlan(sets, t, args.replay, True, 0, 1)
    batches = [plan.next() for _ in range(args.steps + 5)]
    optimizer = torch.optim.AdamW(list(handle.parameters()), lr=1e-3)
    handle.train()

    def separate(batch):  # the labelled and the distillation utterances through the model apart
        new_idx, replay_idx, distill_idx = batch
        losses = [view.losses(*s.collate(idx)) for s, idx in ((sets.new, new_idx), (sets.replay, replay_idx)) if idx]
        xd, ld, _ = sets.distill.collate(distill_idx)
        tt, tl, _ = sets.teacher.collate(distill_idx)
        return torch.cat(losses).mean() + 30.0 * view.distill(xd, ld, tt, tl).mean()

    def together(batch):  # the loop's step: one padded batch, one forward
        supervised, kd = view.step_terms(*step_inputs(sets, batch))
        return supervised.mean() + 30.0 * kd.mean()

    # The two ways alternate step by step (their order too), so that a change of the machine's load
    # between them cannot pass for a difference.
    ways = {"two forwards": separate, "one forward": together}
    totals = {name: 0.0 for name in ways}
    parts = {name: 0.0 for name in ("collate", "forward", "backward", "optimizer")}
    for i, batch in enumerate(batches):
        for name in (list(ways) if i % 2 else list(ways)[::-1]):
            marks = [time.perf_counter()]
            inputs = step_inputs(sets, batch)
            marks.append(time.perf_counter())
            loss = ways[name](batch)
            marks.append(time.perf_counter())
            optimizer.zero_grad()
            loss.backward()
            marks.append(time.perf_counter())
            optimizer.step()
            marks.append(time.perf_counter())
            if i >= 5:  # after a warm-up
                totals[name] += (marks[-1] - marks[1]) / args.steps
                if name == "one forward":
                    for part, a, b in zip(parts, marks, marks[1:]):
                        parts[part] += b - a
            del inputs
    handle.eval()
    start = time.perf_counter()
    for s in dev:
        evaluate(view, s, max_batch_seconds=d.max_batch_seconds)
    evaluation = time.perf_counter() - start
    print(f"# {time.strftime('%Y-%m-%d')}, {machine()}, {args.threads} thread(s); blocks {args.blocks} (k={k}), "
          f"{t.max_batch_seconds:g} s batches (replay {args.replay:g}) + {t.distill_seconds:g} s distillation, "
          f"dim 64, {args.steps} steps")
    print("| step | ms per step |\n| --- | --- |")
    for name, v in totals.items():
        print(f"| {name} | {1000 * v:.1f} |")
    print(f"\none forward / two forwards: {totals['one forward'] / totals['two forwards']:.2f}\n")
    step = sum(parts.values()) / args.steps
    print("| part of a step (one forward) | ms | share |\n| --- | --- | --- |")
    for name, v in parts.items():
        print(f"| {name} | {1000 * v / args.steps:.1f} | {100 * v / args.steps / step:.0f} % |")
    print(f"\none evaluation of both dev sets ({sum(len(s) for s in dev)} utterances): {evaluation:.2f} s = "
          f"{evaluation / totals['one forward']:.0f} steps")


def searches(args, overrides: list) -> None:
    print(f"# {time.strftime('%Y-%m-%d')}, {machine()}; the demo search, seeds {args.seeds}")
    print("| search | seed | winner new test WER | test degradation | dev degradation | wall min |")
    print("| --- | --- | --- | --- | --- | --- |")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("replay + distillation searched", []),
                             ("without them", ["search.space.replay=0.0", "search.space.distill_weight=0.0"])):
            for seed in args.seeds:
                s = run_demo_search([f"search.name=forgetting-{len(out)}", f"results.dir={tmp}", f"search.seed={seed}",
                                     *extra, *overrides])
                w = s["winner"]
                row = (w["test"]["new"], w["test_degradation"], w["degradation"]) if w else (None, None, None)
                out.setdefault(label, []).append(row)
                cells = " | ".join("-" if v is None else f"{v:.2f}" for v in row)
                print(f"| {label} | {seed} | {cells} | {s['timings_s']['total'] / 60:.1f} |", flush=True)
    print("\n| search | winner new test WER median (min-max) | test degradation median (min-max) |")
    print("| --- | --- | --- |")
    for label, rows in out.items():
        cols = []
        for i in (0, 1):
            vals = [r[i] for r in rows if r[i] is not None]
            cols.append(f"{statistics.median(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})" if vals else "-")
        print(f"| {label} | {cols[0]} | {cols[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fixed", help="(a) the fixed trial four ways at equal steps")
    f.add_argument("--steps", type=int, default=1000)
    f.add_argument("--eval-every", type=int, default=250)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--batch", type=float, default=20.0)
    f.add_argument("--lam", type=float, default=5.0)
    f.add_argument("--distill-seconds", type=float, default=10.0)
    f.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("search", help="(b) the demo search with and without replay and distillation")
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p = sub.add_parser("step", help="where a demo training step's time goes")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--blocks", default="all")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--replay", type=float, default=0.0)
    args, overrides = parser.parse_known_args()
    {"fixed": fixed, "search": searches, "step": step_parts}[args.what](args, overrides)


if __name__ == "__main__":
    main()
