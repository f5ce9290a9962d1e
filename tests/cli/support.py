"""Runs the `apportion` command line in a subprocess, as a user does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def apportion(
    *args: str,
    timeout: float = 600,
    cwd: Path | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apportion.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        input=stdin,
        env=env,
    )
