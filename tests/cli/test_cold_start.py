"""`apportion ask` loads only what answering needs: no bench, server or plotting code, which the
other commands import when they run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Runs `apportion ask ARGS...` in this process, then writes the names of the loaded modules.
ASK_THEN_LIST_MODULES = """
import json, sys
from apportion.cli import app

listing, args = sys.argv[1], sys.argv[2:]
app(args, prog_name="apportion", standalone_mode=False)
with open(listing, "w") as f:
    json.dump(sorted(sys.modules), f)
"""

NOT_ON_THE_ASK_PATH = ("apportion.bench", "apportion.server", "matplotlib", "fastapi", "uvicorn")


def test_ask_on_the_solver_route_imports_no_bench_server_or_plotting(tmp_path: Path) -> None:
    listing = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", ASK_THEN_LIST_MODULES, str(listing), "ask", "What is 17*23+5?",
         "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["answer"] == "396"
    loaded = json.loads(listing.read_text())
    assert "apportion.cli.ask" in loaded and "apportion.runtime" in loaded  # it did run ask
    heavy = [m for m in loaded if any(m == p or m.startswith(p + ".") for p in NOT_ON_THE_ASK_PATH)]
    assert heavy == []
