"""``summary.json`` of a search and the table printed at its end (base model vs winner, dev and test)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from pathlib import Path
from typing import Optional

import raysearch_adapters
from raysearch_adapters.backbones import BACKBONES
from raysearch_adapters.config import Config
from raysearch_adapters.fileio import atomic_write_text
from raysearch_adapters.metrics import LOOP_COMPRESSION_RATIO
from raysearch_adapters.models.registry import backbone_class
from raysearch_adapters.results.select import (DEFAULT_SET_ROLES, best_per_type, dev_wers, held_degradation,
                                               held_limits, new_loops, set_entries)
from raysearch_adapters.results.tables import HPARAM_NAMES
from raysearch_adapters.train.objective import degradation, degradation_limit


def versions() -> dict:
    """Versions that decide how an adapter behaves (NeMo#15911: adapters differ across framework versions)."""
    out = {"raysearch-adapters": raysearch_adapters.__version__}
    for dist in ("torch", "torchaudio", "ray", "optuna"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def load_instructions(cfg: Config, adapter_file: Path) -> str:
    """How to use the winner's adapter file."""
    model = backbone_class(cfg.model.name).evaluate_args(cfg.model)
    handoff = BACKBONES[cfg.model.name].handoff
    to_toolkit = f"   |   {handoff.format(results=adapter_file.parent)}" if handoff else ""
    return (f"raysearch-adapters evaluate {model} "
            f"--adapter {adapter_file} --manifest MANIFEST   |   Python: "
            f"load_adapter('{adapter_file}', load_base_model(model_cfg)) "
            "from raysearch_adapters.adapters.state and raysearch_adapters.models.registry" + to_toolkit)


def format_hparams(hp: dict) -> str:
    """``name=value, ...`` of a trial's hyperparameters, without those its adapter type does not have (null)."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in hp.items() if v is not None)


def set_label(name: str) -> str:
    """How messages name a set: ``new domain`` and ``original domain`` for the default sets, else its name."""
    return f"{name} domain" if name in ("new", "original") else name


def set_roles(cfg: Config) -> list:
    """Each measured set: its name, role (target | protected) and, for a protected set, its kappa, kappa_mode and
    limit in degradation units."""
    return [{"set": s.name, "role": s.role, "kappa": s.kappa, "kappa_mode": s.kappa_mode,
             "limit": degradation_limit(s.kappa, s.kappa_mode) if s.role == "protected" else None}
            for s in cfg.measured_sets()]


def _set_degradations(row: dict) -> dict:
    """Per protected set of a row: its dev degradation, bounds, held degradation, limit and new loops."""
    return {s["set"]: {k: s[k] for k in ("degradation", "degradation_lower", "degradation_upper",
                                         "held_degradation", "limit", "new_loops", "feasible")}
            for s in set_entries(row.get("sets")) if s["role"] == "protected"}


def _trial_brief(row: dict) -> dict:
    return {"trial_id": row["trial_id"], "status": row["status"], "hparams": {k: row[k] for k in HPARAM_NAMES},
            "adapter_params": row["adapter_params"], "adapter_percent": row["adapter_percent"],
            "dev": dev_wers(row), "dev_wer_new": row["dev_wer_new"], "binding_set": row.get("binding_set"),
            "protected": _set_degradations(row),
            "degradation": row["degradation"], "degradation_lower": row.get("degradation_lower"),
            "degradation_upper": row.get("degradation_upper"), "held_degradation": held_degradation(row),
            "new_loops": row.get("new_loops"), "best_step": row.get("best_step"),
            "base_dev_wer_original": row.get("base_dev_wer_original"), "checkpoint_path": row["checkpoint_path"]}


def build_summary(cfg: Config, rows: list, limit: float, baseline: dict, winner: Optional[dict],
                  winner_test: Optional[dict], infeasible: Optional[dict], front: list, paths: dict,
                  num_blocks: Optional[int] = None, timings: Optional[dict] = None, interrupted: bool = False,
                  block_stacks: Optional[list] = None,
                  all_failed: Optional[str] = None, test_from_block: Optional[int] = None,
                  test_bounds: Optional[dict] = None, loops: Optional[dict] = None,
                  dev_resolution: Optional[dict] = None) -> dict:
    """Everything a reader of the search needs, as JSON-able data.

    ``interrupted``: the search stopped before its trials finished (no winner, no test evaluation;
    ``--resume`` continues it); ``all_failed``: why no trial was measured; ``test_from_block``: the
    block the winner's and the base's test WERs were measured from (None: the whole model); ``test_bounds``: the
    lower and upper confidence bounds of the winner's test degradation; ``loops``: the looping hypotheses of the
    base and the winner (``results.hypotheses.loop_counts``); ``dev_resolution``: the original-domain
    dev set cannot resolve kappa (``dev_resolution`` of search.run)."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("RUNNING", "COMPLETE", "PRUNED", "FAIL")}
    out = {
        "search_id": cfg.search.name,
        "interrupted": interrupted,
        "all_failed": all_failed,
        "kappa": cfg.search.kappa, "kappa_mode": cfg.search.kappa_mode, "degradation_limit": limit,
        # the measured sets: new-domain targets (the objective is their mean dev WER) and protected sets (each a
        # constraint with its own limit)
        "sets": set_roles(cfg),
        # what is held to the limit: the degradation (point) or its upper bound at `confidence` (upper)
        "feasibility": cfg.search.feasibility, "confidence": cfg.search.confidence,
        # original-domain dev utterances a feasible trial may newly loop on (null: not held to a limit)
        "max_new_loops": cfg.search.max_new_loops,
        "dev_resolution": dev_resolution,
        "degradation_units": "WER points" if cfg.search.kappa_mode == "absolute" else "percent of the base WER",
        "num_blocks": num_blocks,  # adaptable blocks of the base model (the dashboard draws placements)
        "block_stacks": block_stacks,  # [[stack, blocks], ...]: encoder (and decoder) blocks, encoder first
        "baseline": baseline,
        # hypotheses that repeat themselves (metrics.is_looping), per model, split and domain; "new": the winner's
        # where the base's does not
        "loops": loops,
        "winner": None,
        "no_feasible_trial": None,
        "pareto_front": [_trial_brief(r) for r in front],
        # per adapter type tried: its best COMPLETE feasible trial on dev (the winner is the best of them)
        "best_per_type": {t: _trial_brief(r) for t, r in best_per_type(rows, limit, cfg.search.max_new_loops).items()},
        "trials": {"total": len(rows), **counts},
        "search": {"sampler": cfg.search.sampler, "num_trials": cfg.search.num_trials, "seed": cfg.search.seed,
                   "budget_steps": cfg.search.budget_steps, "finalists": cfg.search.finalists,
                   "patience": cfg.search.patience,
                   "asha": dataclasses.asdict(cfg.search.asha), "space": dataclasses.asdict(cfg.search.space),
                   "grid": dataclasses.asdict(cfg.search.grid), "train": dataclasses.asdict(cfg.train),
                   "resources": dataclasses.asdict(cfg.resources), "model": dataclasses.asdict(cfg.model)},
        "versions": versions(),
        "paths": paths,
        # wall seconds: setup (model, features, base WERs), trials (the Tune run), final test evaluation
        "timings_s": timings,
    }
    if cfg.search.budget_steps:
        out["budget"] = budget_report(cfg, rows)
    if winner is not None:
        brief = _trial_brief(winner)
        for p in cfg.protected_sets():  # each protected set's test degradation (evaluated once) beside its dev one
            bounds = (test_bounds or {}).get(p.name) or {}
            brief["protected"].setdefault(p.name, {}).update(
                test_degradation=degradation(winner_test[p.name], baseline["test"][p.name], p.kappa_mode),
                test_degradation_lower=bounds.get("lower"), test_degradation_upper=bounds.get("upper"))
        binding = brief["protected"].get(brief["binding_set"] or cfg.protected_sets()[0].name, {})
        out["winner"] = {**brief, "test": winner_test, "test_from_block": test_from_block,
                         # the single test figures are the binding set's (on dev), as the single dev figures are
                         "test_degradation": binding.get("test_degradation"),
                         "test_degradation_lower": binding.get("test_degradation_lower"),
                         "test_degradation_upper": binding.get("test_degradation_upper"),
                         "adapter_file": paths["best_adapter"],
                         "load": load_instructions(cfg, Path(paths["best_adapter"]))}
    elif infeasible is not None:
        over = max(held - set_limit for _, held, set_limit in held_limits(infeasible, limit))
        out["no_feasible_trial"] = {**_trial_brief(infeasible), "over_limit_by": over}
        if cfg.search.max_new_loops is not None:
            out["no_feasible_trial"]["loops_over_limit_by"] = new_loops(infeasible) - cfg.search.max_new_loops
    return out


def budget_report(cfg: Config, rows: list) -> dict:
    """How the budget was spent: planned rungs, steps trained in all, and how far each finalist went."""
    plan = cfg.budget_plan()
    trained = {r["trial_id"]: int(r["step"] or 0) for r in rows}
    finalists = [r for r in rows if r["status"] == "COMPLETE"]
    return {"steps": plan.budget, "spent": sum(trained.values()), "cohort": plan.cohort,
            "milestones": plan.milestones, "alive": plan.alive, "finalist_share": plan.finalist_share,
            "trained_steps": trained,
            "finalists": [{"trial_id": r["trial_id"], "steps": trained[r["trial_id"]], "best_step": r["best_step"]}
                          for r in sorted(finalists, key=lambda r: -trained[r["trial_id"]])]}


def write_summary(path: Path, summary: dict) -> None:
    """Write ``summary.json`` atomically."""
    atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def _fmt_signed(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:+.2f}"


_SHORT = {"original": "orig"}  # the summary table's header of the default protected set


def format_bounds(low: Optional[float], high: Optional[float]) -> str:
    """`` [low, high]`` of a degradation's confidence bounds ("" without them)."""
    return "" if low is None or high is None else f" [{low:+.2f}, {high:+.2f}]"


def _loops_lines(loops: Optional[dict], roles: Optional[list] = None) -> list:
    """The looping transcripts of the base model and the winner per set, and a warning when the winner adds any on
    a protected set (``roles``: summary.json ``sets``; default: the sets new and original)."""
    if not loops:
        return []
    roles = roles or DEFAULT_SET_ROLES
    names = [r["set"] for r in roles]
    guarded = [r["set"] for r in roles if r["role"] == "protected"]

    def counts(model: str) -> str:
        m = loops.get(model) or {}
        return ", ".join(f"{split} {'/'.join(str(m[split].get(n, 0)) for n in names)}"
                         for split in ("dev", "test") if split in m)

    default = names == ["new", "original"]
    text = (f"looping transcripts (zlib compression ratio > {LOOP_COMPRESSION_RATIO:g}), "
            f"{'new/original domain' if default else '/'.join(names)}: base model {counts('base')}")
    if "winner" in loops:
        text += f"; winner {counts('winner')}"
    lines = [text]
    added = {split: {n: d.get(n, 0) for n in guarded} for split, d in (loops.get("new") or {}).items()}
    parts = []
    for split, per_set in added.items():
        n = sum(per_set.values())
        if n:
            where = ("original-domain" if guarded == ["original"] else
                     "protected (" + ", ".join(f"{k} {v}" for k, v in per_set.items() if v) + ")")
            parts.append(f"{n} {where} {split} utterance(s)")
    if parts:
        lines.append("WARNING: the winner loops on " + " and ".join(parts)
                     + " that the base model transcribes without looping (hypotheses.parquet: winner_looping)")
    return lines


def _loop_limit(max_new_loops: int, where: str = "original-domain") -> str:
    return (f"no {where} dev transcript" if max_new_loops == 0 else
            f"at most {max_new_loops} {where} dev transcript{'s' * (max_new_loops > 1)}")


def _feasible_rule(summary: dict, units: str) -> str:
    guarded = [r for r in summary.get("sets") or [] if r["role"] == "protected"]
    what = "dev degradation of each protected set" if len(guarded) > 1 else "original-domain dev degradation"
    held = (what if summary.get("feasibility", "point") == "point" else
            f"the upper {100 * summary['confidence']:g} % confidence bound of the {what}")
    limits = ", ".join(f"{r['set']} {r['limit']:g}" for r in guarded)
    limit = f"its limit ({limits} {units})" if len(guarded) > 1 else f"{summary['degradation_limit']:g} {units}"
    loops = summary.get("max_new_loops")
    return (f"feasible = {held} <= {limit}"
            + ("" if loops is None else
               f", {_loop_limit(loops, 'protected' if len(guarded) > 1 else 'original-domain')} newly looping"))


def format_summary(summary: dict) -> str:
    """The end-of-search report: base vs winner on dev and test of both domains, then where everything is."""
    b, w = summary["baseline"], summary["winner"]
    test = b.get("test") or {}
    units = "points" if summary["kappa_mode"] == "absolute" else "% of base"
    roles = summary.get("sets") or DEFAULT_SET_ROLES
    names = [r["set"] for r in roles]
    several = sum(r["role"] == "protected" for r in roles) > 1
    heads = [f"{split} {_SHORT.get(n, n)}" for split in ("dev", "test") for n in names]
    widths = [max(10, len(h) + 1) for h in heads]
    t = summary["trials"]
    budget = summary.get("budget")
    pruned = "stopped at a rung" if budget else "pruned by ASHA"
    lines = [f"search {summary['search_id']}: {t['total']} trials ({t['COMPLETE']} complete, {t['PRUNED']} {pruned}, "
             f"{t['FAIL']} failed{', %d interrupted' % t['RUNNING'] if t.get('RUNNING') else ''}); "
             f"{_feasible_rule(summary, units)}", "",
             f"{'WER %':<28}" + "".join(f"{h:>{wd}}" for h, wd in zip(heads, widths)),
             f"{'base model':<28}" + "".join(f"{_fmt(v):>{wd}}" for v, wd in zip(
                 [b["dev"].get(n) for n in names] + [test.get(n) for n in names], widths))]
    if summary.get("interrupted"):
        lines += ["", "INTERRUPTED: the search stopped before its trials finished; nothing was evaluated on test and "
                      "no winner is chosen. Continue it with the same command and --resume."]
    elif w is not None:
        lines.append(f"{'winner (trial ' + w['trial_id'] + ')':<28}" + "".join(f"{_fmt(v):>{wd}}" for v, wd in zip(
            [w["dev"].get(n) for n in names] + [w["test"].get(n) for n in names], widths)))
        hp = format_hparams({k: v for k, v in w["hparams"].items() if not (budget and k == "steps")})
        if budget:  # with a budget, `steps` is the most a trial could train; this is what it did
            hp += f", trained {budget['trained_steps'][w['trial_id']]:,} steps"
        lines += ["", f"winner: {hp}; {w['adapter_params']} adapter params ({w['adapter_percent']:.2f} % of base); "
                      f"best evaluation at step {w['best_step']}; degradation {w['degradation']:+.2f}"
                      f"{format_bounds(w.get('degradation_lower'), w.get('degradation_upper'))} {units} on dev (chosen "
                      f"there), {w['test_degradation']:+.2f}"
                      f"{format_bounds(w.get('test_degradation_lower'), w.get('test_degradation_upper'))} on test "
                      "(evaluated once)" + (f"; [lower, upper]: one-sided {100 * summary['confidence']:g} % "
                                            "confidence bounds (paired bootstrap over utterances)"
                                            if w.get("degradation_upper") is not None else "")]
        if several:  # the line above is the binding set's; each set's own
            lines[-1] = lines[-1].replace("; degradation ", f"; degradation of {w.get('binding_set')} (binding) ", 1)
            lines += [f"  {name}: degradation {p['degradation']:+.2f}"
                      f"{format_bounds(p.get('degradation_lower'), p.get('degradation_upper'))} on dev (limit "
                      f"{p['limit']:g}), {_fmt_signed(p.get('test_degradation'))}"
                      f"{format_bounds(p.get('test_degradation_lower'), p.get('test_degradation_upper'))} on test"
                      for name, p in (w.get("protected") or {}).items()]
        per_type = summary.get("best_per_type") or {}
        if len(per_type) > 1:
            lines.append("best feasible trial per adapter type (dev):")
            lines += [f"  {kind:<11} trial {r['trial_id']}: dev WER new {r['dev']['new']:.2f}, degradation "
                      f"{r['degradation']:+.2f} {units}, {r['adapter_params']} params ({r['adapter_percent']:.2f} % "
                      f"of base); {format_hparams(r['hparams'])}" for kind, r in per_type.items()]
    elif summary.get("all_failed"):
        lines += ["", f"NO TRIAL WAS MEASURED: {summary['all_failed']}"]
    else:
        loops = summary.get("max_new_loops")
        lines += ["", "NO FEASIBLE TRIAL: every measured trial degraded "
                      + ("a protected set by more than its limit" if several else
                         f"the original domain by more than {summary['degradation_limit']:g} {units}")
                      + ("" if loops is None else f" or newly looped on more than {loops} of its dev utterances")
                      + "; no winner is chosen."]
        c = summary["no_feasible_trial"]
        if c is not None:
            over = (f"{c['over_limit_by']:.2f} over the limit" if c["over_limit_by"] > 0 else "within the limit")
            if (c.get("loops_over_limit_by") or 0) > 0:
                over += f"; {c['new_loops']} newly looping transcript(s), {c['loops_over_limit_by']} over the limit"
            of = f" of {c.get('binding_set')}" if several else ""
            lines.append(f"closest: trial {c['trial_id']} with degradation{of} {c['degradation']:+.2f}"
                         f"{format_bounds(c.get('degradation_lower'), c.get('degradation_upper'))} {units} "
                         f"({over}), dev WER new {c['dev_wer_new']:.2f}; try a "
                         "larger search.kappa, smaller dims or learning rates, or adapters in fewer blocks")
    if not summary.get("interrupted"):
        lines += ["", *_loops_lines(summary.get("loops"), summary.get("sets"))] if summary.get("loops") else []
    for name, r in (summary.get("dev_resolution") or {}).items():
        lines += ["", f"note: the {set_label(name)} dev set ({r['utterances']} utterances) cannot resolve its limit: "
                      f"at the trials' first evaluations the degradation's {100 * r['confidence']:g} % bounds lie "
                      f"{r['half_width']:.2f} {units} from it (median), more than {r['limit']:g}; "
                      f"about {r['needed']:,} utterances would bring them within it"]
    if budget:
        ends = ", ".join(f"{f['steps']:,} (best at {f['best_step']:,})" for f in budget["finalists"]) or "none"
        lines += ["", f"budget: {budget['spent']:,} of {budget['steps']:,} optimiser steps spent; {budget['cohort']} "
                      f"trials halved at steps {', '.join(f'{m:,}' for m in budget['milestones'])}; the finalists "
                      f"trained to steps {ends}"]
    p = summary["paths"]
    lines += ["", f"results:      {p['results_dir']}",
              f"tables:       {p['trials']}, {p['epochs']}",
              f"Optuna study: {p['study_storage']}  (view: optuna-dashboard {p['study_storage']})"]
    if w is not None:
        lines += [f"best adapter: {w['adapter_file']}", f"load it:      {w['load']}"]
    if p.get("hypotheses") and not summary.get("interrupted"):
        lines.append(f"transcripts:  {p['hypotheses']} (base model{' and winner' if w is not None else ''}, dev and "
                     "test; the dashboard's 'Fixed and broken' view)")
    lines.append(f"summary:      {p['summary']}")
    t = summary.get("timings_s")
    if t:
        lines.append(f"wall time:    {t['total'] / 60:.1f} min (setup {t['setup']:.0f} s, trials {t['trials']:.0f} s, "
                     f"test evaluation {t['test']:.0f} s)")
    return "\n".join(lines)
