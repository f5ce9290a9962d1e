"""Writes summary.json, frontier.png, frontier_energy.png and report.html for a bench run."""

from __future__ import annotations

import base64
import html
import itertools
import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apportion.bench.frontier import (
    Point,
    complete_items,
    pareto_front,
    points,
    strategies_in,
    summarize,
)
from apportion.strategies.registry import spec_name
from apportion.traces import ORACLE, ItemResult, is_adaptive, oracle

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.backend_bases import RendererBase
    from matplotlib.figure import Figure

METRICS = {
    "flops": ("mean FLOPs per query (log scale)", "frontier.png"),
    "energy_j": ("mean energy per query, J (log scale; tool CPU included)", "frontier_energy.png"),
}

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in figure pixels

_LABEL_PT = 8
_DPI = 120
_PAD_PX = 3.0
# Where a label may sit beside its point, nearest first: which edge of the label is placed
# ("left" edge, "right" edge or "centre"; "bottom" or "top" edge), and how far from the point's
# centre, in marker radii (plus padding). Farther out, a label in a crowd could be read as a
# neighbour's: it goes to the column instead.
_SPOTS = (
    ("left", "bottom", 1, 0), ("left", "top", 1, 0), ("right", "bottom", -1, 0),
    ("right", "top", -1, 0), ("centre", "bottom", 0, 1), ("centre", "top", 0, -1),
    ("left", "bottom", 1, 1), ("left", "top", 1, -1), ("right", "bottom", -1, 1),
    ("right", "top", -1, -1),
)  # fmt: skip


@dataclass(frozen=True)
class FrontierFigure:
    """What a frontier plot drew: each label's box and the Pareto line, for checking."""

    labels: dict[str, Box]
    markers: dict[str, Box]
    pareto: list[tuple[float, float]]  # (cost, accuracy %) vertices, left to right
    size: tuple[float, float]  # figure width and height in pixels


def plot_frontier(
    results: Sequence[ItemResult], metric: str, path: Path, title: str
) -> FrontierFigure:
    """Accuracy against mean cost per strategy, the oracle and the fixed strategies' Pareto
    front. Each label goes beside its point where it covers no other label, marker or the
    legend; a label with no free spot goes into a column right of the axes, joined to its
    point by a thin line. So labels never print over each other, however crowded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = complete_items(results)
    with_oracle = [*full, *oracle(full)]
    by_strategy = {
        s: [r for r in with_oracle if r.strategy == s] for s in strategies_in(with_oracle)
    }
    pts = points(by_strategy, metric)
    label, _ = METRICS[metric]
    positive = [p.cost for p in pts if p.cost > 0]
    # Tool-only routes spend no model FLOPs; a log axis cannot show 0, so they sit on a floor
    # a decade below the cheapest model route and are labelled as such.
    floor = min(positive) / 10 if positive else 1.0
    top = max(positive) if positive else 10.0
    lowest = floor if any(p.cost <= 0 for p in pts) or not positive else min(positive)
    x_range = (lowest / 2.5, top * 2.5)
    line_px = _LABEL_PT * _DPI / 72 * 1.3 + _PAD_PX
    # Tall enough that every label could stand in the side column at once.
    height_in = max(5.2, len(pts) * line_px / _DPI + 0.3)
    fig = plt.figure(figsize=(10.5, height_in), dpi=_DPI)
    margin_in = 0.6
    ax = fig.add_axes((0.08, margin_in / height_in, 0.6, 1 - 1.6 * margin_in / height_in))
    ax.set_xscale("log")
    ax.set_xlim(*x_range)
    ax.set_ylim(-2, 102)
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy, %")
    # Many sources make a long title: wrap it rather than let the figure clip it.
    ax.set_title("\n".join(textwrap.wrap(title, 80)[:3]), fontsize=9, loc="left")
    ax.grid(True, which="both", alpha=0.25, zorder=0)

    def xy(p: Point) -> tuple[float, float]:
        return max(p.cost, floor), p.accuracy * 100

    fixed = [p for p in pts if not is_adaptive(p.name)]
    pareto = _pareto_line([xy(p) for p in pareto_front(fixed)], x_range[1])
    if pareto:
        ax.plot(
            [x for x, _ in pareto], [y for _, y in pareto], color="darkorange", lw=2.2,
            drawstyle="steps-post", zorder=2, label="Pareto front of the fixed strategies",
        )  # fmt: skip
    sizes: dict[str, float] = {}
    for p in pts:
        is_oracle = p.name == ORACLE
        is_auto = spec_name(p.name) == "auto"
        sizes[p.name] = 120 if is_oracle or is_auto else 50
        ax.scatter(
            [xy(p)[0]], [xy(p)[1]],
            s=sizes[p.name],
            marker="*" if is_oracle else ("D" if is_auto else "o"),
            color="crimson" if is_oracle else ("darkgreen" if is_auto else "tab:blue"),
            edgecolors="white", linewidths=0.6, zorder=3,
        )  # fmt: skip
    if pareto:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    fig.canvas.draw()  # lays out the axes, so data map to their final pixels
    markers = _marker_boxes(ax, {p.name: (xy(p), sizes[p.name]) for p in pts})
    labels = _place_labels(fig, ax, [(p, xy(p)) for p in pts], markers, pareto)
    # Cropped to what was drawn: the label column's room goes when no label needed it.
    fig.savefig(path, bbox_inches="tight", pad_inches=0.15)
    size = (fig.get_figwidth() * _DPI, fig.get_figheight() * _DPI)
    plt.close(fig)
    return FrontierFigure(labels=labels, markers=markers, pareto=pareto, size=size)


def _marker_boxes(
    ax: Axes, markers: dict[str, tuple[tuple[float, float], float]]
) -> dict[str, Box]:
    """Each marker's extent in pixels: a scatter size `s` is the marker's area in points²."""
    boxes = {}
    for name, (xy, s) in markers.items():
        px, py = ax.transData.transform(xy)
        r = math.sqrt(s) / 2 * _DPI / 72 * 1.15 + 1
        boxes[name] = (float(px - r), float(py - r), float(px + r), float(py + r))
    return boxes


def _pareto_line(front: list[tuple[float, float]], right: float) -> list[tuple[float, float]]:
    """The front as a staircase's vertices, carried on to the right edge: beyond its last
    point nothing more is bought, and a front of one point still shows as a line."""
    if not front:
        return []
    return [*front, (right, front[-1][1])]


def _label_text(p: Point) -> str:
    return p.name + (" (0 model FLOPs)" if p.cost <= 0 else "")


def _priority(p: Point) -> tuple[int, float]:
    """Oracle and auto are placed first, then the others from the most accurate down."""
    return (0 if is_adaptive(p.name) else 1, -p.accuracy)


def _spot_box(spot: tuple[str, str, int, int], marker: Box, w: float, h: float) -> Box:
    horizontal, vertical, kx, ky = spot
    px, py = (marker[0] + marker[2]) / 2, (marker[1] + marker[3]) / 2
    reach = (marker[2] - marker[0]) / 2 + _PAD_PX + 1
    dx, dy = kx * reach, ky * reach
    x0 = {"left": px + dx, "right": px + dx - w, "centre": px - w / 2}[horizontal]
    y0 = py + dy if vertical == "bottom" else py + dy - h
    return (x0, y0, x0 + w, y0 + h)


def _place_labels(
    fig: Figure,
    ax: Axes,
    placed_points: list[tuple[Point, tuple[float, float]]],
    markers: dict[str, Box],
    pareto: list[tuple[float, float]],
) -> dict[str, Box]:
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    to_px = ax.transData.transform
    inside = ax.get_window_extent(renderer)
    # Boxes a label may not cover: the markers, the Pareto staircase's segments, the legend,
    # the labels already placed.
    taken: list[Box] = list(markers.values())
    corners = [tuple(to_px(v)) for v in pareto]
    for (x0, y0), (x1, y1) in itertools.pairwise(corners):
        taken.append((x0, y0 - 3, x1, y0 + 3))  # along, at the lower step's height
        taken.append((x1 - 3, min(y0, y1), x1 + 3, max(y0, y1)))  # then up to the next
    legend = ax.get_legend()
    if legend is not None:
        lb = legend.get_window_extent(renderer)
        taken.append((lb.x0, lb.y0, lb.x1, lb.y1))
    boxes: dict[str, Box] = {}
    column: list[tuple[Point, tuple[float, float], float]] = []
    for p, (x, y) in sorted(placed_points, key=lambda pxy: _priority(pxy[0])):
        text = _label_text(p)
        w, h = _text_size(fig, renderer, text)
        for spot in _SPOTS:
            box = _spot_box(spot, markers[p.name], w, h)
            padded = (box[0] - _PAD_PX, box[1] - _PAD_PX, box[2] + _PAD_PX, box[3] + _PAD_PX)
            within = inside.x0 <= padded[0] and padded[2] <= inside.x1
            within = within and inside.y0 <= padded[1] and padded[3] <= inside.y1
            if within and not any(_overlap(padded, t) for t in taken):
                ax.annotate(
                    text, (x, y), xytext=(box[0], box[1]), textcoords="figure pixels",
                    fontsize=_LABEL_PT, va="bottom", ha="left", annotation_clip=False,
                )  # fmt: skip
                taken.append(padded)
                boxes[p.name] = box
                break
        else:
            column.append((p, (x, y), h))
    boxes.update(_column_labels(fig, ax, renderer, column, inside.x1 + 40))
    return boxes


def _column_labels(
    fig: Figure,
    ax: Axes,
    renderer: RendererBase,
    column: list[tuple[Point, tuple[float, float], float]],
    left: float,
) -> dict[str, Box]:
    """Labels stacked right of the axes, each as near its point's height as the ones above
    allow, joined to the point by a thin line: they cannot overlap, however crowded."""
    boxes: dict[str, Box] = {}
    if not column:
        return boxes
    height = fig.get_figheight() * _DPI
    to_px = ax.transData.transform
    column.sort(key=lambda c: -float(to_px(c[1])[1]))
    tops: list[float] = []
    ceiling = height - 4.0
    for _, xy, h in column:
        top = min(float(to_px(xy)[1]) + h / 2, ceiling)
        tops.append(top)
        ceiling = top - h - _PAD_PX
    # Pushed below the figure's foot: lift the whole stack (the figure is tall enough to hold
    # every label, so it then fits under the top).
    lift = max(0.0, 4.0 - (tops[-1] - column[-1][2]))
    for (p, xy, h), top in zip(column, tops, strict=True):
        text = _label_text(p)
        w, _ = _text_size(fig, renderer, text)
        y0 = top + lift - h
        ax.annotate(
            text, xy, xytext=(left, y0), textcoords="figure pixels", fontsize=_LABEL_PT,
            va="bottom", ha="left", annotation_clip=False,
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.55", "shrinkA": 0,
                        "shrinkB": 5, "relpos": (0.0, 0.5)},
        )  # fmt: skip
        boxes[p.name] = (left, y0, left + w, y0 + h)
    return boxes


def _text_size(fig: Figure, renderer: RendererBase, text: str) -> tuple[float, float]:
    t = fig.text(0, 0, text, fontsize=_LABEL_PT)
    bb = t.get_window_extent(renderer)
    t.remove()
    return bb.width, bb.height


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _has_text(summary: dict[str, Any]) -> bool:
    return any(s.get("text_f1") is not None for s in summary["strategies"].values())


def _table(summary: dict[str, Any]) -> str:
    """Per strategy: accuracy (exact match), F1 beside it when the run has text answers,
    and what a query cost."""
    with_f1 = _has_text(summary)
    rows = []
    for name, s in summary["strategies"].items():
        lo, hi = s["accuracy_ci95"]
        f1 = ""
        if with_f1:
            f1 = "<td>-</td>" if s["text_f1"] is None else f"<td>{s['text_f1'] * 100:.1f}</td>"
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{s['n']}</td>"
            f"<td>{s['accuracy'] * 100:.1f}% [{lo * 100:.1f}, {hi * 100:.1f}]</td>{f1}"
            f"<td>{_fmt(s['flops']['mean'])}</td><td>{_fmt(s['flops']['p50'])}</td>"
            f"<td>{_fmt(s['flops']['p95'])}</td><td>{s['tokens']['mean']:.0f}</td>"
            f"<td>{s['wall_s']['mean']:.2f}</td><td>{s['energy_j']['mean']:.1f}</td>"
            f"<td>{s['cost_usd']['mean']:.2e}</td><td>{s['errors']}</td></tr>"
        )
    accuracy = "exact match [95% CI]" if with_f1 else "accuracy [95% CI]"
    f1_head = "<th>F1 (text items)</th>" if with_f1 else ""
    head = (
        f"<tr><th>strategy</th><th>n</th><th>{accuracy}</th>{f1_head}<th>FLOPs mean</th>"
        "<th>p50</th><th>p95</th><th>tokens</th><th>wall s</th><th>energy J</th>"
        "<th>$ / query</th><th>errors</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _dataset_table(summary: dict[str, Any]) -> str:
    by_dataset = summary["by_dataset"]
    names = list(summary["strategies"])
    head = "<tr><th>dataset</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    rows = []
    for d, per in by_dataset.items():
        cells = "".join(
            f"<td>{per[n]['accuracy'] * 100:.1f}% · {_fmt(per[n]['flops']['mean'])}</td>"
            if n in per
            else "<td>-</td>"
            for n in names
        )
        rows.append(f"<tr><td>{html.escape(d)}</td>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _oracle_table(summary: dict[str, Any]) -> str:
    routes = sorted(summary["oracle_routes"].items(), key=lambda kv: -kv[1])
    if not routes:
        return "<p>No strategy answered any item correctly.</p>"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in routes)
    return f"<table><tr><th>strategy</th><th>items</th></tr>{rows}</table>"


# The per-item table's filter. `rowVisible` is a pure function of a row's data-* attributes, so
# it can be checked outside a browser; the rest wires it to the two selects.
_FILTER_JS = """
function rowVisible(row, dataset, mode) {
  if (dataset && row.dataset.dataset !== dataset) return false;
  if (mode === "differ") return row.dataset.answers === "differ";
  if (mode) return row.dataset.agree === mode;
  return true;
}
if (typeof document !== "undefined") {
  const pick = document.getElementById("pick-dataset");
  const mode = document.getElementById("pick-agreement");
  const count = document.getElementById("shown");
  const apply = () => {
    let shown = 0;
    for (const row of document.querySelectorAll("#items tbody tr")) {
      const visible = rowVisible(row, pick.value, mode.value);
      row.hidden = !visible;
      shown += visible ? 1 : 0;
    }
    count.textContent = shown;
  };
  pick.addEventListener("change", apply);
  mode.addEventListener("change", apply);
  apply();
}
"""


def _items_table(results: Sequence[ItemResult]) -> str:
    """Every item with each strategy's answer, whether it was right and its FLOPs; rows carry
    their dataset and whether the strategies agree, for the filters above the table."""
    names = [s for s in strategies_in(results) if s != ORACLE]
    by_item: dict[tuple[str, str], dict[str, ItemResult]] = {}
    for r in results:
        by_item.setdefault((r.dataset, r.item_id), {})[r.strategy] = r
    datasets = sorted({d for d, _ in by_item})
    head = "<tr><th>dataset</th><th>item</th><th>question</th><th>gold</th>" + "".join(
        f"<th>{html.escape(n)}</th>" for n in names
    ) + "</tr>"  # fmt: skip
    rows = []
    for (dataset, item_id), per in by_item.items():
        first = next(iter(per.values()))
        verdicts = {r.correct for r in per.values()}
        agree = "mixed" if len(verdicts) > 1 else ("all-right" if True in verdicts else "all-wrong")
        answers = {(r.answer or "").strip().lower() for r in per.values()}
        cells = []
        for n in names:
            cell = per.get(n)
            if cell is None:
                cells.append("<td>-</td>")
                continue
            shown = cell.answer if cell.answer is not None else f"({cell.error or 'no answer'})"
            mark = '<span class="ok">✓</span>' if cell.correct else '<span class="no">✗</span>'
            cells.append(
                f"<td>{mark} {html.escape(textwrap.shorten(shown, 80))}"
                f"<br><small>{_fmt(cell.flops)} FLOPs</small></td>"
            )
        question = first.question or ""
        rows.append(
            f'<tr data-dataset="{html.escape(dataset)}" data-agree="{agree}" '
            f'data-answers="{"differ" if len(answers) > 1 else "same"}">'
            f"<td>{html.escape(dataset)}</td><td>{html.escape(item_id)}</td>"
            f'<td class="q" title="{html.escape(question[:2000])}">'
            f"{html.escape(textwrap.shorten(question, 160))}</td>"
            f"<td>{html.escape(first.gold)}</td>{''.join(cells)}</tr>"
        )
    options = "".join(f'<option value="{html.escape(d)}">{html.escape(d)}</option>'
                      for d in datasets)  # fmt: skip
    filters = (
        '<p><label>dataset <select id="pick-dataset"><option value="">all</option>'
        f"{options}</select></label> "
        '<label>strategies <select id="pick-agreement"><option value="">all items</option>'
        '<option value="mixed">disagree (some right, some wrong)</option>'
        '<option value="differ">give different answers</option>'
        '<option value="all-wrong">all wrong</option>'
        '<option value="all-right">all right</option></select></label> '
        f'<span id="shown">{len(rows)}</span> of {len(rows)} items shown</p>'
    )
    return (
        f'{filters}<table id="items"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
        f"<script>{_FILTER_JS}</script>"
    )


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{path.name}" src="data:image/png;base64,{data}">'


def write_report(results: Sequence[ItemResult], out: Path, *, title: str) -> dict[str, Any]:
    summary = summarize(results)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for metric, (_, filename) in METRICS.items():
        plot_frontier(results, metric, out / filename, title)
    compared = complete_items(results)
    scoring = (
        "Accuracy counts exact matches; for text answers F1 (token overlap with the best gold "
        "answer) stands beside it."
        if _has_text(summary)
        else "Accuracy counts exact matches."
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>apportion bench — {html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;
text-align:right;vertical-align:top}}td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%}}#items td{{text-align:left;font-size:90%}}#items td.q{{max-width:28em}}
.ok{{color:#080}}.no{{color:#b00}}small{{color:#666}}</style>
</head><body>
<h1>apportion bench</h1><p>{html.escape(title)} — {summary["n_items"]} items.
{scoring} The oracle takes, per item, the cheapest strategy that was right.</p>
<h2>Accuracy and compute per strategy</h2>{_table(summary)}
<p>Pareto (FLOPs), fixed strategies: {html.escape(", ".join(summary["pareto_flops"]))}</p>
<h2>Frontier: accuracy vs FLOPs</h2>{_img(out / "frontier.png")}
<h2>Frontier: accuracy vs energy</h2>{_img(out / "frontier_energy.png")}
<h2>By dataset (accuracy · mean FLOPs)</h2>{_dataset_table(summary)}
<h2>Where the oracle's right answers came from</h2>{_oracle_table(summary)}
<h2>Item by item</h2>{_items_table(compared)}
</body></html>
"""
    (out / "report.html").write_text(page)
    return summary
