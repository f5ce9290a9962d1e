"""The HTTP edge: OpenAI-compatible request and response bodies, plus the `apportion` extension.

Pydantic lives only here. `app.py` turns a validated request into plain values (Message,
Budget, strategy and model names) before anything else in the package sees it. Request models
allow extra fields, since OpenAI clients send parameters we do not use; the `apportion`
extension forbids them, so a misspelt budget field is an error rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from apportion.types import Message

AUTO_MODEL = "apportion-auto"
# llama.cpp takes a 32-bit seed, and samples use seed + i.
MAX_SEED = 2**31 - 1


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """What every error answers with, as OpenAI's API does."""

    error: ErrorDetail


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    # "developer" is what newer OpenAI clients call the system role.
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def to_message(self) -> Message:
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        return Message("system" if self.role == "developer" else self.role, text)


class BudgetIn(BaseModel):
    """Hard caps for this request; each is optional."""

    model_config = ConfigDict(extra="forbid")

    flops: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class ApportionOptions(BaseModel):
    """The `apportion` extension object (send it with the OpenAI client's `extra_body`)."""

    model_config = ConfigDict(extra="forbid")

    budget: BudgetIn | None = None
    strategy: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="A strategy spec (`cot`, `consistency:n=4`); overrides routing.",
    )
    return_ledger: bool = Field(
        default=False, description="Include every charged call, not just the totals."
    )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": AUTO_MODEL,
                    "messages": [{"role": "user", "content": "What is 17*23+5?"}],
                    "apportion": {"budget": {"flops": 1e12}, "return_ledger": True},
                }
            ]
        },
    )

    model: str = Field(
        min_length=1,
        max_length=256,
        description=f"`{AUTO_MODEL}` (routed), a strategy spec, or a model id (routed on it).",
    )
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    n: int | None = Field(default=None, ge=1, le=1, description="Only one choice is served.")
    user: str | None = None
    apportion: ApportionOptions | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    # cot's reasoning (what a streamed cot request sends as `reasoning_content` deltas).
    reasoning_content: str | None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str
    logprobs: None = None


class LedgerOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    flops: float
    wall_s: float
    cpu_s: float
    energy_j: float
    cost_usd: float
    calls: list[dict[str, Any]] | None = Field(
        default=None, description="Every charged call; only with `return_ledger`."
    )


class ApportionInfo(BaseModel):
    strategy: str
    intent: str | None
    confidence: float
    route: list[str] = Field(description="The strategies tried, in order.")
    stopped_for_budget: bool
    error: str | None
    ledger: LedgerOut


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    apportion: ApportionInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "apportion"
    kind: Literal["router", "strategy", "model"]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class QueueInfo(BaseModel):
    running: int
    waiting: int
    depth: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    auth: bool
    default_model: str
    local_queue: QueueInfo
