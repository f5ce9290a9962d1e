"""The `shout` strategy: a direct answer, in capitals. `shout:model=ID,max_tokens=N` as for
`direct`; apportion coerces and checks the parameters from the dataclass fields."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, ClassVar

from apportion.strategies.base import RunContext
from apportion.strategies.direct import Direct
from apportion.strategies.registry import MAX_TOKENS_BOUND, Bounds
from apportion.types import Attempt, Query


@dataclass(frozen=True)
class Shout:
    """What the `apportion.strategies` entry point `shout` names: the dataclass is the
    factory, its fields the parameters."""

    model: str | None = None
    # Declared bounds: `shout:max_tokens=0` is refused before any work, as for the built-ins.
    max_tokens: Annotated[int | None, Bounds(1, MAX_TOKENS_BOUND)] = None

    # Like direct, it ends in an answer whenever the model says anything: a plan may end here.
    always_answers: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return "shout"

    def run(self, query: Query, ctx: RunContext) -> Attempt:
        # The model call goes through ctx, as every call must: the ledger charges it.
        attempt = Direct(model=self.model, max_tokens=self.max_tokens).run(query, ctx)
        if attempt.answer is None:
            return replace(attempt, strategy=self.name)
        return replace(
            attempt,
            strategy=self.name,
            answer=attempt.answer.upper(),
            candidates=tuple(c.upper() for c in attempt.candidates),
        )
