"""The dashboard's charts as Plotly figure dicts (``{"data": [...], "layout": {...}}``), built from a snapshot.

The browser draws them with Plotly.js, the report's PNGs are drawn from the same dicts
(:mod:`raysearch_adapters.dashboard.png`), so each chart is defined once. A chart without
data is ``{"message": "..."}``, shown in its place.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set

from raysearch_adapters.adapter_types import ADAPTER_TYPES
from raysearch_adapters.dashboard.data import Snapshot, ViewLimits
from raysearch_adapters.dashboard.importance import Importances
from raysearch_adapters.results.placement import PlacementError, describe_layout, layout_stacks, parse_blocks
from raysearch_adapters.results.select import is_measured, measured, pareto_front

FEASIBLE, INFEASIBLE, RUNNING = "#2a9d8f", "#e76f51", "#8d99ae"
FRONT, WINNER, BASE, KAPPA = "#264653", "#e9c46a", "#6c757d", "#d62828"
POSITION_COLORS = {"post": "#1f77b4", "mha": "#ff7f0e", "ffn": "#9467bd", "self_attn": "#8c564b",
                   "cross_attn": "#e377c2"}
# With several adapter types in one search, the trade-off and hyperparameter charts colour trials by type
# (a type registered later takes the next colour and a square marker).
TYPE_COLORS = {"bottleneck": "#1f77b4", "lora": "#d62728", "parallel": "#2ca02c"}
SPARE_COLORS = ("#17becf", "#bcbd22", "#7f7f7f")
# The placement view's marker per type (its colour is the position's; a type on linear layers, which has no
# position, takes its type's colour).
TYPE_SYMBOLS = {"bottleneck": "square", "parallel": "diamond", "lora": "circle"}
DEFAULT_TYPE = "bottleneck"  # what a trial without a type column trained (results written before types)


def type_color(kind: str) -> str:
    """The colour of an adapter type's trials."""
    if kind in TYPE_COLORS:
        return TYPE_COLORS[kind]
    spare = [t for t in ADAPTER_TYPES if t not in TYPE_COLORS]
    return SPARE_COLORS[spare.index(kind) % len(SPARE_COLORS)] if kind in spare else BASE


def type_label(kind: str) -> str:
    """How the views name an adapter type."""
    entry = ADAPTER_TYPES.get(kind)
    return (entry.label or entry.name) if entry else kind


def on_linears(kind: str) -> bool:
    """Whether an adapter type updates linear layers (LoRA: rank and targets) rather than sitting at positions."""
    entry = ADAPTER_TYPES.get(kind)
    return entry is not None and entry.placement == "linears"
BEST_TRIALS_SHOWN = 10  # rows of the placement view

# The order and titles of the views' charts (the page lays them out by these keys).
TITLES = {
    "tradeoff": "New-domain dev WER vs degradation (feasible: left of the κ line)",
    "placement": "Placement of the best trials: adapted blocks and position (LoRA: its target layers)",
    "dim": "Adapter dim vs new-domain dev WER",
    "lr": "Learning rate vs new-domain dev WER",
    "curves_new": "Learning curves: new-domain dev WER per trial",
    "curves_degradation": "Learning curves: degradation per trial",
    "importances": "Parameter importances (PED-ANOVA on the Optuna study)",
}


def _layout(key: str, x: str, y: str, **extra) -> dict:
    return {"title": {"text": TITLES[key]}, "xaxis": {"title": {"text": x}, "automargin": True},
            "yaxis": {"title": {"text": y}, "automargin": True},
            "margin": {"t": 50, "r": 20, "b": 55, "l": 65}, "hovermode": "closest", **extra}


def _hover(r: dict) -> str:
    if on_linears(r.get("type") or DEFAULT_TYPE):
        hp = (f"{type_label(r.get('type') or DEFAULT_TYPE)} rank {r.get('rank')}, alpha {r.get('alpha')}, "
              f"targets {r.get('targets')}, blocks {r.get('blocks')}")
    else:
        hp = (f"{r.get('type') or DEFAULT_TYPE} dim {r.get('dim')}, blocks {r.get('blocks')}, "
              f"position {r.get('position')}")
    if r.get("lr") is not None:
        hp += f", lr {r['lr']:.2g}"
    if r.get("adapter_params") is not None and r.get("adapter_percent") is not None:
        hp += f"<br>{r['adapter_params']:,} adapter params ({r['adapter_percent']:.2f} % of base)"
    return f"trial {r['trial_id']} ({r['status']})<br>{hp}"


def _points(rows: List[dict], x: str, name: str, color: str, detailed: Set[str], symbol: str = "circle") -> dict:
    """A scatter of trials; the hover of those in ``detailed`` gives their parameters, the others' their id (a
    search of many thousands of trials would otherwise send megabytes of hover text per chart)."""
    def hover(r: dict) -> str:
        if r["trial_id"] not in detailed:
            return f"trial {r['trial_id']}"
        bounds = (f"<br>degradation {r['degradation']:+.2f} [{r['degradation_lower']:+.2f}, "
                  f"{r['degradation_upper']:+.2f}]" if x == "degradation" and r.get("degradation_upper") is not None
                  else "")
        return _hover(r) + bounds

    trace = {"type": "scatter", "mode": "markers", "name": name, "x": [_coord(r[x]) for r in rows],
             "y": [_coord(r["dev_wer_new"]) for r in rows], "text": [hover(r) for r in rows],
             "hovertemplate": "%{text}<br>%{x:.3g}, WER %{y:.2f}<extra></extra>",
             "marker": {"color": color, "size": 10, "symbol": symbol, "line": {"width": 1, "color": "#333"}}}
    if x == "degradation" and any(r.get("degradation_upper") is not None for r in rows):
        # the degradation's confidence bounds as horizontal error bars (0 where a row has none)
        trace["error_x"] = {"type": "data", "symmetric": False, "color": color, "thickness": 1,
                            "array": [_span(r, "degradation_upper", r[x]) for r in rows],
                            "arrayminus": [_span(r, "degradation_lower", r[x]) for r in rows]}
    return trace


def _coord(value):
    """A point's coordinate to 6 significant digits (far below what a chart can show; a float's 17 digits would
    double the size of a big search's charts)."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


def _span(row: dict, bound: str, value: float) -> float:
    return 0.0 if row.get(bound) is None else _coord(abs(row[bound] - value))


def _kappa_line(limit: Optional[float], axis: str = "x") -> List[dict]:
    if limit is None:
        return []
    if axis == "x":
        return [{"type": "line", "xref": "x", "yref": "paper", "x0": limit, "x1": limit, "y0": 0, "y1": 1,
                 "line": {"color": KAPPA, "dash": "dash", "width": 2}}]
    return [{"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": limit, "y1": limit,
             "line": {"color": KAPPA, "dash": "dash", "width": 2}}]


def trial_types(rows: List[dict]) -> List[str]:
    """The adapter types of the trials, in the order of ``TYPE_COLORS`` (older tables: none)."""
    present = {r.get("type") for r in rows if r.get("type")}
    return [t for t in TYPE_COLORS if t in present] + sorted(present - set(TYPE_COLORS))


def _by_feasibility(rows: List[dict], x: str, detailed: Set[str]) -> List[dict]:
    """Finished trials split feasible / infeasible, running trials (their latest evaluation) apart. With
    several adapter types, each type has its colour (feasible: circles, infeasible: crosses). The hover of the
    trials in ``detailed`` gives their parameters."""
    done = [r for r in measured(rows) if r.get(x) is not None]
    running = [r for r in rows if r["status"] == "RUNNING" and r.get("dev_wer_new") is not None
               and r.get(x) is not None]
    types = trial_types(rows)
    if len(types) > 1:
        traces = []
        for t in types:
            color = type_color(t)
            traces += [_points([r for r in done if r.get("type") == t and r.get("feasible")], x, f"{t}, feasible",
                               color, detailed),
                       _points([r for r in done if r.get("type") == t and not r.get("feasible")], x,
                               f"{t}, infeasible", color, detailed, "x")]
    else:
        traces = [_points([r for r in done if r.get("feasible")], x, "feasible", FEASIBLE, detailed),
                  _points([r for r in done if not r.get("feasible")], x, "infeasible", INFEASIBLE, detailed)]
    traces.append(_points(running, x, "running (latest evaluation)", RUNNING, detailed, "circle-open"))
    return [t for t in traces if t["x"]]


def _detailed(snap: Snapshot, limits: ViewLimits) -> Set[str]:
    """The trials whose hover gives their parameters: those of the trial table."""
    return {r["trial_id"] for r in snap.by_rank[:limits.rows]}


def tradeoff(snap: Snapshot, limits: ViewLimits = ViewLimits()) -> dict:
    """New-domain dev WER against degradation, the κ line, the Pareto front, winner and base model."""
    if not measured(snap.trials) and not any(r.get("degradation") is not None for r in snap.trials):
        return {"message": "no trial has been evaluated yet"}
    traces = _by_feasibility(snap.trials, "degradation", _detailed(snap, limits))
    front = pareto_front(snap.trials)
    if front:
        traces.append({"type": "scatter", "mode": "lines", "name": "Pareto front", "line": {"color": FRONT,
                       "shape": "hv", "width": 2}, "x": [r["degradation"] for r in front],
                       "y": [r["dev_wer_new"] for r in front], "hoverinfo": "skip"})
    w = (snap.summary or {}).get("winner")
    if w and w.get("degradation") is not None:
        traces.append({"type": "scatter", "mode": "markers", "name": f"winner (trial {w['trial_id']})",
                       "x": [w["degradation"]], "y": [w.get("dev_wer_new", w["dev"].get("new"))],
                       "marker": {"color": WINNER, "size": 18, "symbol": "star", "line": {"width": 1, "color": "#333"}}})
    base = ((snap.summary or {}).get("baseline") or {}).get("dev") or {}
    targets = [base.get(r["set"]) for r in snap.roles() if r["role"] == "target"]
    if targets and None not in targets:  # the objective: the targets' mean dev WER
        traces.append({"type": "scatter", "mode": "markers", "name": "base model (no adapter)", "x": [0.0],
                       "y": [sum(targets) / len(targets)], "marker": {"color": BASE, "size": 13, "symbol": "diamond"}})
    limit = snap.degradation_limit()
    units = (snap.summary or {}).get("degradation_units", "WER points")
    layout = _layout("tradeoff", f"degradation of the original domain ({units})", "new-domain dev WER (%)",
                     shapes=_kappa_line(limit))
    if limit is not None:
        layout["annotations"] = [{"x": limit, "y": 1, "xref": "x", "yref": "paper", "text": f"κ = {limit:g}",
                                  "showarrow": False, "xanchor": "left", "yanchor": "top",
                                  "font": {"color": KAPPA}}]
    return {"data": traces, "layout": layout}


def placement(snap: Snapshot) -> dict:
    """For the best trials (feasible first), which blocks carry adapters and at which position."""
    best = [r for r in snap.by_rank if is_measured(r)][:BEST_TRIALS_SHOWN]
    if not best:
        return {"message": "no trial has finished yet"}
    blocks_layout = snap.block_layout()
    if blocks_layout is None:
        return {"message": "the number of blocks of the base model is not in summary.json nor in the "
                           "trials.parquet metadata (num_blocks), so block specs such as top:K cannot be drawn"}
    n = sum(count for _, count in layout_stacks(blocks_layout))
    by_position: Dict[str, dict] = {}
    labels, skipped = [], []
    for rank, r in enumerate(best, 1):
        try:
            block_ids = parse_blocks(r["blocks"], blocks_layout)
        except PlacementError:
            skipped.append(r["trial_id"])
            continue
        label = f"#{rank} {r['trial_id']} ({r['dev_wer_new']:.1f}%{'' if r.get('feasible') else ', infeasible'})"
        labels.append(label)
        kind = r.get("type") or DEFAULT_TYPE
        if on_linears(kind):
            pos, name, size = str(r.get("targets")), f"{type_label(kind)} on {r.get('targets')}", f"rank {r.get('rank')}"
            color = type_color(kind)
        else:
            pos, size = str(r.get("position")), f"dim {r.get('dim')}"
            name = f"position {pos}" if kind == DEFAULT_TYPE else f"{kind} at {pos}"
            color = POSITION_COLORS.get(pos, BASE)
        t = by_position.setdefault(name, {
            "type": "scatter", "mode": "markers", "name": name, "x": [], "y": [], "text": [],
            "hovertemplate": "%{text}<extra></extra>",
            "marker": {"symbol": TYPE_SYMBOLS.get(kind, "square"), "size": 16, "color": color}})
        for b in block_ids:
            t["x"].append(b)
            t["y"].append(label)
            t["text"].append(f"trial {r['trial_id']}: block {b}, {name}, blocks spec {r['blocks']}, {size}")
    if not by_position:
        return {"message": f"no readable block spec among the best trials ({', '.join(skipped)})"}
    axis = (f"encoder block (0 = lowest; the base model has {n})" if len(layout_stacks(blocks_layout)) == 1 else
            f"block (the base model has {describe_layout(blocks_layout)})")
    layout = _layout("placement", axis, "trial (rank, new-domain dev WER)")
    layout["xaxis"].update(range=[-0.5, n - 0.5], dtick=1, zeroline=False)
    layout["yaxis"].update(autorange="reversed", type="category", categoryorder="array", categoryarray=labels)
    out = {"data": list(by_position.values()), "layout": layout}
    if skipped:
        out["note"] = f"not drawn (block spec unreadable for a {n}-block model): trials {', '.join(skipped)}"
    return out


def hparam(snap: Snapshot, name: str, limits: ViewLimits = ViewLimits()) -> dict:
    """One hyperparameter (``dim`` or ``lr``) against new-domain dev WER, log x axis."""
    traces = _by_feasibility(snap.trials, name, _detailed(snap, limits))
    if not traces:
        return {"message": "no trial has been evaluated yet"}
    axis = {"dim": "adapter dim (bottleneck width h)", "lr": "learning rate"}[name]
    layout = _layout(name, axis, "new-domain dev WER (%)")
    layout["xaxis"]["type"] = "log"
    if name == "dim":  # the tried widths as ticks (a log axis would label 2, 3, ... 9 in between)
        layout["xaxis"]["tickvals"] = sorted({x for t in traces for x in t["x"]})
    else:
        layout["xaxis"].update(dtick=1, exponentformat="power")
    return {"data": traces, "layout": layout}


def curves(snap: Snapshot, metric: str) -> dict:
    """Per-trial learning curves from epochs.parquet: ``dev_wer_new`` or ``degradation`` against step; those of
    the trials the snapshot kept evaluations of (the best ones), the best first."""
    by_trial: Dict[str, List[dict]] = {}
    for e in snap.epochs:
        if e.get(metric) is not None:
            by_trial.setdefault(e["trial_id"], []).append(e)
    if not by_trial:
        return {"message": "no evaluation in epochs.parquet yet"}
    status = {r["trial_id"]: r["status"] for r in snap.trials}
    rank = {r["trial_id"]: i for i, r in enumerate(snap.by_rank)}
    traces = []
    for tid, evals in sorted(by_trial.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])):
        evals.sort(key=lambda e: e["eval_index"])
        traces.append({"type": "scatter", "mode": "lines+markers", "name": f"{tid} ({status.get(tid, '?')})",
                       "x": [e["step"] for e in evals], "y": [e[metric] for e in evals],
                       "line": {"dash": "dot" if status.get(tid) == "PRUNED" else "solid"},
                       "hovertemplate": f"trial {tid}<br>step %{{x}}: %{{y:.2f}}<extra></extra>"})
    if metric == "dev_wer_new":
        layout = _layout("curves_new", "optimiser step", "new-domain dev WER (%)")
    else:
        layout = _layout("curves_degradation", "optimiser step", "degradation (κ: dashed)",
                         shapes=_kappa_line(snap.degradation_limit(), axis="y"))
    layout["showlegend"] = len(traces) <= 20
    out = {"data": traces, "layout": layout}
    kept = len({e["trial_id"] for e in snap.epochs})
    if kept < snap.evaluated:
        layout["title"]["text"] += f" (top {kept:,} of {snap.evaluated:,} trials)"
        out["note"] = (f"the {kept:,} best trials (feasible first, then by new-domain dev WER) of the "
                       f"{snap.evaluated:,} with evaluations; --curves N draws more")
    return out


def importances(imp: Importances) -> dict:
    """Horizontal bars, the most important parameter on top."""
    if not imp.values:
        return {"message": imp.message or "no importances"}
    items = sorted(imp.values.items(), key=lambda kv: kv[1])
    title = f"importance for the best new-domain WERs ({imp.complete_trials} complete trials)"
    out = {"data": [{"type": "bar", "orientation": "h", "name": "importance", "x": [v for _, v in items],
                     "y": [k for k, _ in items], "marker": {"color": FRONT},
                     "hovertemplate": "%{y}: %{x:.3f}<extra></extra>"}],
           "layout": _layout("importances", title, "hyperparameter", height=160 + 45 * len(items))}
    if imp.message:
        out["note"] = imp.message
    return out


def all_charts(snap: Snapshot, imp: Importances, limits: ViewLimits = ViewLimits()) -> Dict[str, dict]:
    """Every chart of the dashboard, keyed as :data:`TITLES`."""
    return {"tradeoff": tradeoff(snap, limits), "placement": placement(snap), "dim": hparam(snap, "dim", limits),
            "lr": hparam(snap, "lr", limits), "curves_new": curves(snap, "dev_wer_new"),
            "curves_degradation": curves(snap, "degradation"), "importances": importances(imp)}
