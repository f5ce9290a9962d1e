"""report.html and the frontier plots: labels that never overlap, a visible Pareto line, a
per-item table that filters, F1 beside exact match for text answers, and no raw JSON."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from apportion.bench.report import plot_frontier, write_report
from apportion.bench.runner import ItemResult

BASE = ItemResult(
    dataset="d", item_id="0", strategy="s", gold="1", answer="1", correct=True, f1=1.0,
    confidence=1.0, route="s", intent=None, error=None, prompt_tokens=10, completion_tokens=5,
    flops=100.0, wall_s=1.0, cpu_s=0.0, energy_j=10.0, cost_usd=0.0, calls=1, question="q?",
    kind="number",
)  # fmt: skip


def crowded(n_strategies: int = 14, n_items: int = 10) -> list[ItemResult]:
    """Strategies whose points all but coincide: nearly the same cost and accuracy."""
    out = []
    for s, i in itertools.product(range(n_strategies), range(n_items)):
        name = f"consistency:n={s + 2},rule=fixed" if s % 2 else f"cot:temperature=0.{s}"
        out.append(replace(
            BASE, item_id=str(i), strategy=name, correct=(i + s) % 3 != 0,
            flops=1e9 * (1 + 0.01 * s), energy_j=5.0 * (1 + 0.01 * s),
        ))  # fmt: skip
    # a tool route at 0 FLOPs and the adaptive policy, on top of the crowd
    for i in range(n_items):
        out.append(replace(BASE, item_id=str(i), strategy="symbolic", correct=i < 3, flops=0.0,
                           energy_j=0.1))  # fmt: skip
        out.append(replace(BASE, item_id=str(i), strategy="auto", correct=i % 3 != 0,
                           flops=1.005e9, energy_j=5.0))  # fmt: skip
    return out


def overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("metric", ["flops", "energy_j"])
def test_crowded_labels_never_print_over_each_other(tmp_path: Path, metric: str) -> None:
    results = crowded()
    drawn = plot_frontier(results, metric, tmp_path / "f.png", "crowded")
    names = {r.strategy for r in results} | {"oracle"}
    assert set(drawn.labels) == names  # every point is labelled
    boxes = list(drawn.labels.values())
    for a, b in itertools.combinations(boxes, 2):
        assert not overlaps(a, b), (a, b)
    for label, marker in itertools.product(drawn.labels.items(), drawn.markers.items()):
        assert not overlaps(label[1], marker[1]), (label[0], "covers the marker of", marker[0])
    width, height = drawn.size
    for x0, y0, x1, y1 in boxes:  # and none is cut off at the figure's edge
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


def test_pareto_line_is_drawn_even_for_one_point(tmp_path: Path) -> None:
    results = crowded()
    drawn = plot_frontier(results, "flops", tmp_path / "f.png", "t")
    assert len(drawn.pareto) >= 2
    xs = [x for x, _ in drawn.pareto]
    assert xs == sorted(xs) and xs[-1] > xs[0]  # it runs to the right edge
    one = [replace(BASE, item_id=str(i), strategy="direct") for i in range(3)]
    alone = plot_frontier(one, "flops", tmp_path / "g.png", "t")
    assert len(alone.pareto) >= 2 and alone.pareto[-1][0] > alone.pareto[0][0]


def per_item_results() -> list[ItemResult]:
    rows = []
    for i, (ds, kind, gold) in enumerate([("squad", "text", "Denver Broncos"),
                                          ("squad", "text", "1889"),
                                          ("gsm8k", "number", "72")]):  # fmt: skip
        q = f"<b>question {i}</b> & more?"
        rows += [
            replace(BASE, dataset=ds, item_id=f"i{i}", strategy="direct", question=q, gold=gold,
                    kind=kind, answer="Broncos", correct=False, f1=0.5, flops=1e9),
            replace(BASE, dataset=ds, item_id=f"i{i}", strategy="cot", question=q, gold=gold,
                    kind=kind, answer=gold, correct=True, f1=1.0, flops=3e9),
        ]  # fmt: skip
    rows[-2] = replace(rows[-2], correct=True, answer="72", f1=1.0)  # both right on gsm8k
    return rows


def test_report_has_a_per_item_table_and_no_raw_json(tmp_path: Path) -> None:
    results = per_item_results()
    summary = write_report(results, tmp_path, title="t")
    page = (tmp_path / "report.html").read_text()
    assert "&lt;b&gt;question 0&lt;/b&gt; &amp; more?" in page  # escaped, never markup
    assert "<b>question" not in page
    table = page[page.index('id="items"') :]
    for text in ("Denver Broncos", "1889", "Broncos", "3e+09", "1e+09", "✓", "✗"):
        assert text in table
    assert table.count("<tr data-dataset=") == 3
    assert 'data-dataset="squad" data-agree="mixed"' in table
    assert 'data-dataset="gsm8k" data-agree="all-right"' in table
    # filters: one option per dataset, and the disagreement modes
    assert '<option value="squad">' in page and '<option value="gsm8k">' in page
    assert 'value="mixed"' in page
    assert json.dumps(summary["oracle_routes"]) not in page
    assert not re.search(r'\{\s*"', page), "raw JSON in the report"
    assert "<script src" not in page and "<link" not in page  # no external assets
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_text_answers_show_f1_beside_exact_match(tmp_path: Path) -> None:
    summary = write_report(per_item_results(), tmp_path, title="t")
    page = (tmp_path / "report.html").read_text()
    assert "exact match" in page and "F1" in page
    direct = summary["strategies"]["direct"]
    assert direct["text_f1"] == pytest.approx(0.5)  # over the two text items only
    head = page[page.index("<table") : page.index("</tr>")]
    assert "F1" in head
    numbers = [replace(BASE, item_id=str(i), strategy="direct") for i in range(2)]
    out = tmp_path / "numbers"
    out.mkdir()
    plain = write_report(numbers, out, title="t")
    assert plain["strategies"]["direct"]["text_f1"] is None
    page = (out / "report.html").read_text()
    assert "F1" not in page[page.index("<table") : page.index("</tr>")]


@pytest.mark.skipif(shutil.which("node") is None, reason="node runs the report's filter script")
def test_report_filter_script_hides_the_rows_it_should(tmp_path: Path) -> None:
    write_report(per_item_results(), tmp_path, title="t")
    page = (tmp_path / "report.html").read_text()
    script = page[page.index("<script>") + len("<script>") : page.index("</script>")]
    # The page's own function, run on stand-ins for the rows' dataset attributes.
    harness = (
        script
        + """
const rows = [{dataset: {dataset: "squad", agree: "mixed", answers: "differ"}},
              {dataset: {dataset: "gsm8k", agree: "all-right", answers: "same"}}];
const show = (d, m) => rows.map(r => rowVisible(r, d, m) ? 1 : 0).join("");
console.log([show("", ""), show("squad", ""), show("", "mixed"), show("gsm8k", "mixed"),
             show("", "differ"), show("", "all-right")].join(" "));
"""
    )
    proc = subprocess.run(["node", "-e", harness], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["11", "10", "10", "00", "10", "01"]
