"""How fast each model reads prompts and writes tokens on this machine, as measured.

A time budget is a hard cap, yet llama.cpp cannot stop in the middle of reading a prompt: a
call whose prompt alone would outlast the budget has to be refused before it starts, and a
running call has to stop before the token that would cross the cap. Both need the model's
speed here. The book learns it from every streamed call (time to the first token, then time
per token) and keeps it across runs in a small JSON file under APPORTION_HOME, so even a
one-shot `apportion ask --budget-seconds` knows the speed its earlier runs measured. A model
never measured here is measured by a one-token probe when a time budget is tight enough for
its prompt to matter (RunContext).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Prompt throughput assumed before a model has been measured, per llama.cpp thread: the low
# end of what the 2-core development VMs gave for the 135M-1.5B models (0.5-1.6e11, MODELS.md).
# It only decides whether an unmeasured model needs a speed probe (RunContext) before a call
# under a tight time budget; the probe's measurement decides whether the call fits.
PRIOR_FLOPS_PER_S_PER_THREAD = 5e10
# Weight of a new measurement in the running averages.
ALPHA = 0.3


@dataclass
class Speed:
    prompt_s_per_token: float
    step_s: float | None  # seconds per generated token (None: not measured yet)
    measured_at: float = 0.0  # time.time() of the last measurement


# A measurement older than this is not trusted: the machine's load changes, and a speed taken
# on a busy machine would otherwise refuse every tight budget (and so never be re-measured).
STALE_AFTER_S = 600.0

class SpeedBook:
    """Measured speeds by model key (its weights' fingerprint and thread count)."""

    def __init__(self, path: Path | None = None, *, now: Callable[[], float] = time.time) -> None:
        self._path = path
        self._now = now
        self._lock = threading.Lock()
        self._speeds: dict[str, Speed] = {}
        self._dirty = False
        if path is not None:
            try:
                raw = json.loads(path.read_text())
                self._speeds = {
                    key: Speed(
                    float(v["prompt_s_per_token"]),
                    None if v.get("step_s") is None else float(v["step_s"]),
                    float(v.get("measured_at", 0.0)),
                )
                for key, v in raw.items()
                }
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self._speeds = {}  # absent or damaged: measure afresh

    def get(self, key: str) -> Speed | None:
        """The model's measured speed, unless it is stale."""
        with self._lock:
            known = self._speeds.get(key)
        if known is None or self._now() - known.measured_at > STALE_AFTER_S:
            return None
        return known

    def prefill_s(self, key: str, prompt_tokens: int, *, params: float, threads: int) -> float:
        """Expected seconds to read a prompt: measured, else from the prior throughput."""
        known = self.get(key)
        if known is not None:
            return prompt_tokens * known.prompt_s_per_token
        return prompt_tokens * 2 * params / (PRIOR_FLOPS_PER_S_PER_THREAD * max(threads, 1))

    def step_s(self, key: str) -> float | None:
        known = self.get(key)
        return None if known is None else known.step_s

    def record(
        self, key: str, *, prompt_tokens: int, first_token_s: float, steps: int, decode_s: float
    ) -> None:
        """One streamed call: its time to the first token and its time per later token."""
        if prompt_tokens <= 0 or first_token_s <= 0:
            return
        prompt = first_token_s / prompt_tokens
        step = decode_s / steps if steps > 0 else None
        now = self._now()
        with self._lock:
            old = self._speeds.get(key)
            if old is None or now - old.measured_at > STALE_AFTER_S:
                self._speeds[key] = Speed(prompt, step, now)
            else:
                if step is not None and old.step_s is not None:
                    step = (1 - ALPHA) * old.step_s + ALPHA * step
                self._speeds[key] = Speed(
                    (1 - ALPHA) * old.prompt_s_per_token + ALPHA * prompt,
                    step if step is not None else old.step_s,
                    now,
                )
            self._dirty = True

    def save(self) -> None:
        """Write the book back (0600, replaced atomically), if anything was learnt."""
        if self._path is None:
            return
        with self._lock:
            if not self._dirty:
                return
            data = {
                key: {
                    "prompt_s_per_token": s.prompt_s_per_token,
                    "step_s": s.step_s,
                    "measured_at": s.measured_at,
                }
                for key, s in sorted(self._speeds.items())
            }
            self._dirty = False
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self._path)
        except OSError:
            pass  # a cache of measurements: losing it costs only a prior next time
