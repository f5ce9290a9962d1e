"""The stream relay every layer is built on: how a cancellation travels down to the engine and
its partial completion back up (engines/layers.py)."""

from __future__ import annotations

import pytest

from apportion.engines.base import GenerationCancelled
from apportion.engines.layers import Layer, consume, finish, innermost, relay
from apportion.types import Message
from fakes import ScriptedEngine

HI = [Message("user", "hi")]


def stream(engine: ScriptedEngine):  # type: ignore[no-untyped-def]
    return engine.stream(HI, max_tokens=16)


def test_a_relay_passes_every_piece_and_returns_the_completion() -> None:
    seen: list[str] = []
    completion = consume(relay(stream(ScriptedEngine(["one two three"])), seen.append))
    assert seen == ["one ", "two ", "three"] and completion.text == "one two three"


def test_a_cancellation_thrown_in_returns_the_partial_completion() -> None:
    pieces = relay(stream(ScriptedEngine(["one two three"])))
    assert next(pieces) == "one "
    partial = finish(pieces, GenerationCancelled())
    assert partial.text == "one" and partial.completion_tokens == 1


def test_a_listener_that_cancels_stops_the_engine_and_carries_the_partial_up() -> None:
    def on_piece(piece: str) -> None:
        if piece.startswith("two"):
            raise GenerationCancelled()

    with pytest.raises(GenerationCancelled) as raised:
        consume(relay(stream(ScriptedEngine(["one two three"])), on_piece))
    partial = raised.value.partial
    assert partial is not None and partial.text == "one two" and partial.completion_tokens == 2


def test_layers_pass_through_and_know_their_engine() -> None:
    engine = ScriptedEngine(["one two"])
    layered = Layer(Layer(engine))  # type: ignore[arg-type]
    assert innermost(layered) is engine
    assert layered.model_id == "scripted" and layered.count_tokens(HI) == engine.count_tokens(HI)
    (completion,) = layered.generate(HI, max_tokens=8)
    assert completion.text == "one two"
