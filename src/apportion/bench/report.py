"""Writes summary.json, frontier.png, frontier_energy.png and report.html for a bench run."""

from __future__ import annotations

import base64
import html
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apportion.bench.frontier import (
    ADAPTIVE,
    ORACLE,
    complete_items,
    oracle,
    pareto_front,
    points,
    strategies_in,
    summarize,
)
from apportion.bench.runner import ItemResult

METRICS = {
    "flops": ("mean FLOPs per query (log scale)", "frontier.png"),
    "energy_j": ("mean energy per query, J (log scale; tool CPU included)", "frontier_energy.png"),
}


def plot_frontier(results: Sequence[ItemResult], metric: str, path: Path, title: str) -> None:
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
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    fixed = [p for p in pts if p.name.split(":")[0] not in ADAPTIVE]
    front = pareto_front(fixed)
    if front:
        xs = [max(p.cost, floor) for p in front]
        ys = [p.accuracy * 100 for p in front]
        ax.step(
            xs, ys, where="post", color="0.6", lw=1.5, ls="--", label="Pareto (fixed strategies)"
        )
    for p in pts:
        x = max(p.cost, floor)
        is_oracle = p.name == ORACLE
        is_auto = p.name.split(":")[0] == "auto"
        ax.scatter(
            [x], [p.accuracy * 100],
            s=120 if is_oracle or is_auto else 60,
            marker="*" if is_oracle else ("D" if is_auto else "o"),
            color="crimson" if is_oracle else ("darkgreen" if is_auto else "tab:blue"),
            zorder=3,
        )  # fmt: skip
        note = p.name + (" (0 model FLOPs)" if p.cost <= 0 else "")
        ax.annotate(
            note, (x, p.accuracy * 100), textcoords="offset points", xytext=(6, 5), fontsize=8
        )
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy, %")
    ax.set_ylim(-2, 102)
    # Many sources make a long title: wrap it rather than let the figure clip it.
    ax.set_title("\n".join(textwrap.wrap(title, 95)[:3]), fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    if front:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _table(summary: dict[str, Any]) -> str:
    rows = []
    strategies = summary["strategies"]
    assert isinstance(strategies, dict)
    for name, s in strategies.items():
        lo, hi = s["accuracy_ci95"]
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{s['n']}</td>"
            f"<td>{s['accuracy'] * 100:.1f}% [{lo * 100:.1f}, {hi * 100:.1f}]</td>"
            f"<td>{_fmt(s['flops']['mean'])}</td><td>{_fmt(s['flops']['p50'])}</td>"
            f"<td>{_fmt(s['flops']['p95'])}</td><td>{s['tokens']['mean']:.0f}</td>"
            f"<td>{s['wall_s']['mean']:.2f}</td><td>{s['energy_j']['mean']:.1f}</td>"
            f"<td>{s['cost_usd']['mean']:.2e}</td><td>{s['errors']}</td></tr>"
        )
    head = (
        "<tr><th>strategy</th><th>n</th><th>accuracy [95% CI]</th><th>FLOPs mean</th>"
        "<th>p50</th><th>p95</th><th>tokens</th><th>wall s</th><th>energy J</th>"
        "<th>$ / query</th><th>errors</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _dataset_table(summary: dict[str, Any]) -> str:
    by_dataset = summary["by_dataset"]
    assert isinstance(by_dataset, dict)
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


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{path.name}" src="data:image/png;base64,{data}">'


def write_report(results: Sequence[ItemResult], out: Path, *, title: str) -> dict[str, Any]:
    summary = summarize(results)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for metric, (_, filename) in METRICS.items():
        plot_frontier(results, metric, out / filename, title)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>apportion bench — {html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;
text-align:right}}td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}</style>
</head><body>
<h1>apportion bench</h1><p>{html.escape(title)} — {summary["n_items"]} items.
Accuracy counts exact matches; the oracle takes, per item, the cheapest strategy that was right.
</p>
<h2>Accuracy and compute per strategy</h2>{_table(summary)}
<p>Pareto (FLOPs), fixed strategies: {html.escape(", ".join(summary["pareto_flops"]))}</p>
<h2>Frontier: accuracy vs FLOPs</h2>{_img(out / "frontier.png")}
<h2>Frontier: accuracy vs energy</h2>{_img(out / "frontier_energy.png")}
<h2>By dataset (accuracy · mean FLOPs)</h2>{_dataset_table(summary)}
<h2>Where the oracle's right answers came from</h2>
<p>{html.escape(json.dumps(summary["oracle_routes"]))}</p>
</body></html>
"""
    (out / "report.html").write_text(page)
    return summary
