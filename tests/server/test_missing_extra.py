"""`apportion serve` without the `server` extra: one line naming the pip command, exit 1, no
traceback. The missing extra is simulated by an import hook that hides FastAPI (this file runs
with or without the extra installed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Hides fastapi from this process, as if it were not installed, then runs the `apportion`
# command as its console script does.
HIDE_FASTAPI = """
import sys

class HideFastAPI:
    def find_spec(self, name, path=None, target=None):
        if name == "fastapi" or name.startswith("fastapi."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideFastAPI())
from apportion.supervise import main  # the `apportion` command's entry point

sys.argv[0] = "apportion"
main()
"""


def test_serve_without_the_server_extra_says_how_to_install_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", HIDE_FASTAPI, "serve", "--keys-db", str(tmp_path / "k.sqlite3")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode in (1, 2), result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "pip install 'apportion[server]'" in lines[0] and "fastapi" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "k.sqlite3").exists()  # it stopped before doing anything


def test_the_other_commands_work_without_the_extra() -> None:
    result = subprocess.run(
        [sys.executable, "-c", HIDE_FASTAPI, "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--store" in result.stdout
