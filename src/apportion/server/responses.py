"""An answer as the client receives it: the content up to the first stop sequence, the finish
reason, `usage`, the `apportion` object (route, confidence, ledger), and the whole body of a
non-streamed completion. Streams (stream.py) end with the same pieces."""

from __future__ import annotations

from apportion.server.jobs import Job
from apportion.server.schemas import (
    ApportionInfo,
    ChatCompletion,
    Choice,
    LedgerOut,
    PromptTokensDetails,
    ResponseMessage,
    Usage,
)
from apportion.server.stops import cut_at_stop
from apportion.strategies.registry import StrategyRegistry
from apportion.types import Answer


class Responses:
    """Builds response pieces; the strategy registry says which answers came from one model
    call whose tokens a client saw (see `StrategyRegistry.token_stream`)."""

    def __init__(self, registry: StrategyRegistry) -> None:
        self.registry = registry

    @staticmethod
    def content(job: Job, answer: Answer) -> str:
        """The answer as the client receives it: up to the first stop sequence."""
        text, hit = cut_at_stop(answer.answer, job.spec.stop)
        job.stop_hit = job.stop_hit or hit
        return text

    @staticmethod
    def info(job: Job, answer: Answer) -> ApportionInfo:
        t = answer.ledger
        giver = next((a for a in answer.attempts if a.strategy == answer.strategy and a.ok), None)
        return ApportionInfo(
            strategy=answer.strategy,
            intent=answer.intent,
            confidence=answer.confidence,
            calibrated_confidence=answer.calibrated_confidence,
            route=[a.strategy for a in answer.attempts],
            stopped_for_budget=answer.stopped_for_budget,
            error=answer.error,
            ledger=LedgerOut.of(t, with_calls=job.spec.return_ledger),
            citations=list(giver.citations) if giver is not None else [],
            notes=list(job.spec.notes),
        )

    @staticmethod
    def usage(answer: Answer) -> Usage:
        t = answer.ledger
        return Usage(
            prompt_tokens=t.prompt_tokens,
            completion_tokens=t.completion_tokens,
            total_tokens=t.prompt_tokens + t.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=t.cached_tokens),
        )

    def finish_reason(self, job: Job, answer: Answer) -> str:
        """`length` when the answer is one call's tokens and that call ran out of them."""
        if job.stop_hit:
            return "stop"
        single = self.registry.token_stream(answer.strategy) is not None
        return "length" if single and job.last_finish == "length" else "stop"

    def completion(self, job: Job, answer: Answer, model: str) -> ChatCompletion:
        """A non-streamed completion; reasoning the strategy's call produced before its answer
        is `reasoning_content`, as a stream would have shown it."""
        reasoning = None
        if self.registry.token_stream(answer.strategy) == "reasoning":
            chosen = [a for a in answer.attempts if a.strategy == answer.strategy and a.ok]
            reasoning = chosen[-1].rationale if chosen else None
        content = self.content(job, answer)
        return ChatCompletion(
            id=job.id,
            created=job.created,
            model=model,
            choices=[
                Choice(
                    message=ResponseMessage(content=content, reasoning_content=reasoning),
                    finish_reason=self.finish_reason(job, answer),
                )
            ],
            usage=self.usage(answer),
            apportion=self.info(job, answer),
        )
