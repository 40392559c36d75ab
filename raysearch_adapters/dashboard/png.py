"""PNG files of the dashboard's charts, drawn with matplotlib from the same Plotly figure dicts.

Why matplotlib: Plotly's own image export (kaleido) drives a Chrome it downloads, which fails
offline and on machines without a browser; matplotlib's Agg renderer is a plain pip dependency
that draws anywhere, headless, in milliseconds. Only what :mod:`charts` uses is translated:
scatter traces (markers and/or lines), horizontal bars, axis titles, log axes and κ lines.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg

from raysearch_adapters.fileio import atomic_write
from matplotlib.figure import Figure

_MARKERS = {"circle": "o", "circle-open": "o", "star": "*", "diamond": "D", "square": "s", "x": "X"}
_DASHES = {"dash": "--", "dot": ":", "solid": "-"}


def _text(node) -> str:
    return (node or {}).get("title", {}).get("text", "")


def _scatter(ax, t: dict) -> None:
    pairs = [(x, y) for x, y in zip(t["x"], t["y"]) if x is not None and y is not None]
    if not pairs:
        return
    xs, ys = zip(*pairs)
    marker = t.get("marker", {})
    color = marker.get("color") or t.get("line", {}).get("color")
    mode = t.get("mode", "markers")
    symbol = marker.get("symbol", "circle")
    if "lines" in mode:
        step = {"drawstyle": "steps-post"} if t.get("line", {}).get("shape") == "hv" else {}
        ax.plot(xs, ys, _DASHES.get(t.get("line", {}).get("dash", "solid"), "-"), color=color,
                marker="o" if "markers" in mode else None, markersize=4, label=t.get("name"), **step)
    else:
        bars = t.get("error_x")
        if bars:  # horizontal error bars (the degradation's confidence bounds)
            kept = [i for i, (x, y) in enumerate(zip(t["x"], t["y"])) if x is not None and y is not None]
            ax.errorbar(xs, ys, xerr=[[bars["arrayminus"][i] for i in kept], [bars["array"][i] for i in kept]],
                        fmt="none", ecolor=color, elinewidth=1, zorder=2)
        open_marker = symbol.endswith("-open")
        ax.scatter(xs, ys, marker=_MARKERS.get(symbol, "o"), s=(marker.get("size", 8) ** 2) / 2, label=t.get("name"),
                   facecolors="none" if open_marker else color, edgecolors=color if open_marker else "#333",
                   linewidths=1, zorder=3)


def draw(fig: dict) -> Figure:
    """A matplotlib figure of one Plotly figure dict."""
    out = Figure(figsize=(8, 5), dpi=110, layout="constrained")
    ax = out.add_subplot()
    layout = fig["layout"]
    # A category axis with a given order (the placement view's ranked trials) as numbered ticks.
    categories = layout.get("yaxis", {}).get("categoryarray")
    rank = {c: i for i, c in enumerate(categories or [])}
    for t in fig["data"]:
        if categories:
            t = {**t, "y": [rank.get(y) for y in t["y"]]}
        if t["type"] == "bar":
            ax.barh(t["y"], t["x"], color=t.get("marker", {}).get("color"))
        else:
            _scatter(ax, t)
    if categories:
        ax.set_yticks(range(len(categories)), categories, fontsize=8)
    for shape in layout.get("shapes", []):
        style = {"color": shape["line"]["color"], "linestyle": _DASHES[shape["line"].get("dash", "solid")]}
        if shape["xref"] == "x":
            ax.axvline(shape["x0"], label="κ", **style)
        else:
            ax.axhline(shape["y0"], label="κ", **style)
    ax.set_title(layout.get("title", {}).get("text", ""), fontsize=11)
    ax.set_xlabel(_text(layout.get("xaxis")))
    ax.set_ylabel(_text(layout.get("yaxis")))
    if layout.get("xaxis", {}).get("type") == "log":
        ax.set_xscale("log")
    if layout.get("yaxis", {}).get("autorange") == "reversed":
        ax.invert_yaxis()
    if "range" in layout.get("xaxis", {}):
        lo, hi = layout["xaxis"]["range"]
        ax.set_xlim(lo, hi)
        if layout["xaxis"].get("dtick") == 1:
            ax.set_xticks(range(math.ceil(lo), math.floor(hi) + 1))
    ax.grid(alpha=0.3)
    named = [h for h in ax.get_legend_handles_labels()[1] if h and not h.startswith("_")]
    if 1 < len(named) <= 20 and layout.get("showlegend", True):
        ax.legend(fontsize=8, loc="best")
    return out


def write_png(fig: dict, path: Path) -> None:
    """Draw ``fig`` into ``path`` atomically."""
    atomic_write(path, lambda tmp: FigureCanvasAgg(draw(fig)).print_png(str(tmp)))
