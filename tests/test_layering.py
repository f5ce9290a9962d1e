"""The package's layering: what routing imports, what the router depends on, and no cycles."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import apportion

PACKAGE = Path(apportion.__file__).resolve().parent

ROUTE = """
import json, sys
import apportion.router
from apportion.router.features import extract_features
from apportion.router.policy_file import load_policy
from apportion.types import Budget

policy = load_policy()
routed = {}
for question in ("What is 17*23+5?", "Solve 2x + 3 = 11 for x.",
                 "Tom has 3 apples and buys 6 more. How many apples does he have?"):
    features = extract_features(question)
    plan = policy.plan(features, Budget())
    routed[question] = [features.intent, features.has_math_expression,
                        [s.strategy for s in plan.steps]]
heavy = sorted(m for m in ("sympy", "mpmath", "torch", "sentence_transformers", "z3")
               if m in sys.modules)
bench = sorted(m for m in sys.modules if m.startswith("apportion.bench"))
print(json.dumps({"routed": routed, "heavy": heavy, "bench": bench}))
"""


def test_routing_a_question_imports_neither_sympy_nor_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", ROUTE], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    arithmetic, equation, word = out["routed"].values()
    # It did route: the math was found (without SymPy) and planned for.
    assert arithmetic[:2] == ["arithmetic", True] and "symbolic" in arithmetic[2]
    assert equation[1] is True and word[1] is False
    assert out["heavy"] == [] and out["bench"] == []


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere in its code (in functions too),
    except under `if TYPE_CHECKING:`, which never runs."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for top in ast.walk(tree)
        if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test)
        for node in ast.walk(top)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    out = set()
    for name in found:
        # `from apportion.x import y` imports apportion.x.y when y is a module, else apportion.x
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != "apportion":
            out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    graph = {name: imports(path, known) - {name} for name, path in paths.items()}
    for name, deps in graph.items():
        # importing a.b.c runs the package a.b first
        for dep in list(deps):
            parent = dep.rpartition(".")[0]
            while parent and parent != "apportion":
                if not name.startswith(parent + ".") and parent != name:
                    deps.add(parent)
                parent = parent.rpartition(".")[0]
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_through_others() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "apportion.traces" in graph
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_router_and_the_traces_depend_on_no_adapter() -> None:
    """calibrate reads traces, not bench; the router never reaches the CLI or the server."""
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("apportion.router") or name == "apportion.traces":
            outward = {d for d in deps if d.split(".")[1] in ("bench", "cli", "server")}
            assert not outward, f"{name} imports {sorted(outward)}"
