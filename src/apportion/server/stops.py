"""Stop sequences as the client sees them: the answer ends before the first one, on every
route and every engine (a `direct` route also hands them to the engine, which stops there)."""

from __future__ import annotations

from collections.abc import Sequence


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first of `stops`, and whether one was found."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


class StopFilter:
    """Streams text up to the first stop sequence, whatever the engine does with them: a piece
    that might begin a stop sequence is held back until the next one settles it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.held = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        text, hit = cut_at_stop(self.held + piece, self.stops)
        if hit:
            self.hit, self.held = True, ""
            return text
        keep = max(
            (k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0
        )
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out
