"""The HTTP edge: OpenAI-compatible request and response bodies, plus the `apportion` extension.

Pydantic lives only here. `app.py` turns a validated request into plain values (Message,
Budget, strategy and model names) before anything else in the package sees it.

These models are the one source of truth for what a request may hold: the OpenAPI schema is
generated from them and requests are validated by them, so the two cannot disagree. Hence:

- Numbers and booleans are strict (`"seed": false` or `"stream": "yes"` are refused, as the
  schema's `integer` and `boolean` types say).
- No parameter is ignored silently. Unknown fields are refused (`additionalProperties: false`);
  OpenAI parameters this server does not implement are declared with the only value it honours
  (`n: 1`, `logprobs: false`, `tools: []`, `top_p: 1`, ...), so a client sending a neutral value
  works and one asking for the feature gets 400 `unsupported_parameter` naming it
  (`UNSUPPORTED`, below, says why each is not implemented).
- What the schema cannot say is checked after validation and documented on the field: the last
  message must be the user's, with non-blank text (an empty earlier message is harmless), and
  `max_tokens` may not exceed the server's `--max-tokens-limit`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from apportion.types import LedgerTotals, Message

AUTO_MODEL = "apportion-auto"
# llama.cpp takes a 32-bit seed, and samples use seed + i.
MAX_SEED = 2**31 - 1
MAX_STOP_SEQUENCES = 4  # as OpenAI
StopSequence = Annotated[StrictStr, Field(min_length=1, max_length=500)]
StopSequences = Annotated[list[StopSequence], Field(max_length=MAX_STOP_SEQUENCES)]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high"]

# OpenAI parameters declared below with only their neutral value, and why no other is served.
UNSUPPORTED: dict[str, str] = {
    "n": "only one choice is served (n=1); send separate requests for more",
    "logprobs": "token log-probabilities are not returned",
    "top_logprobs": "token log-probabilities are not returned",
    "tools": "tool calling is not supported",
    "tool_choice": "tool calling is not supported",
    "parallel_tool_calls": "tool calling is not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "response_format": "only plain text answers are served (response_format type 'text')",
    "top_p": "nucleus sampling is not supported (top_p must be 1)",
    "presence_penalty": "penalties are not supported (presence_penalty must be 0)",
    "frequency_penalty": "penalties are not supported (frequency_penalty must be 0)",
    "logit_bias": "logit_bias is not supported",
    "store": "completions are not stored",
    "metadata": "completions are not stored, so metadata has nowhere to go",
}


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
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    # "developer" is what newer OpenAI clients call the system role.
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] = Field(
        description="The text; may be empty, except in the last message (the question)."
    )
    name: StrictStr | None = None

    def to_message(self) -> Message:
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        return Message("system" if self.role == "developer" else self.role, text)


class BudgetIn(BaseModel):
    """Hard caps for this request; each is optional."""

    model_config = ConfigDict(extra="forbid")

    flops: StrictFloat | None = Field(default=None, ge=0, allow_inf_nan=False)
    usd: StrictFloat | None = Field(default=None, ge=0, allow_inf_nan=False)
    seconds: StrictFloat | None = Field(default=None, ge=0, allow_inf_nan=False)
    # bytes the request's local models may keep resident together
    memory: StrictInt | None = Field(default=None, gt=0)


class ApportionOptions(BaseModel):
    """The `apportion` extension object (send it with the OpenAI client's `extra_body`)."""

    model_config = ConfigDict(extra="forbid")

    budget: BudgetIn | None = None
    strategy: StrictStr | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="A strategy spec (`cot`, `consistency:n=4`); overrides routing.",
    )
    return_ledger: StrictBool = Field(
        default=False, description="Include every charged call, not just the totals."
    )
    deterministic: StrictBool | None = Field(
        default=None,
        description="The same request gives the same tokens whatever the server ran before "
        "(no model call reuses a cached prompt prefix); default: the server's setting.",
    )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool | None = Field(
        default=None,
        description="End the stream with a chunk of empty `choices` holding `usage` and the "
        "`apportion` object (without it, `apportion` rides on the finish_reason chunk).",
    )
    # OpenAI pads chunks with random text when this is true; no padding is sent here.
    include_obfuscation: Literal[False] | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
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

    model: StrictStr = Field(
        min_length=1,
        max_length=256,
        description=f"`{AUTO_MODEL}` (routed), a strategy spec, or a model id (routed on it).",
    )
    messages: list[ChatMessage] = Field(
        min_length=1,
        max_length=1000,
        description="The conversation, oldest first. The last message must be the user's "
        "question, with non-blank text (checked after validation: 400 with param `messages`).",
    )
    max_tokens: StrictInt | None = Field(
        default=None, ge=1, description="At most the server's --max-tokens-limit (4096 unless set)."
    )
    max_completion_tokens: StrictInt | None = Field(
        default=None, ge=1, description="As max_tokens, which it overrides."
    )
    temperature: StrictFloat | None = Field(
        default=None,
        ge=0,
        le=2,
        allow_inf_nan=False,
        description="Applied to strategies that sample (cot, program, consistency, ...); "
        "`direct` and `auto` choose their own, and the reply's `apportion.notes` says so.",
    )
    reasoning_effort: ReasoningEffort | None = Field(
        default=None,
        description="The thinking budget of a strategy that has one (cot): none 0 tokens, "
        "minimal 64, low 256, medium 1024, high as long as the strategy would; `auto` picks "
        "each step's own, and the reply's `apportion.notes` says so.",
    )
    stream: StrictBool = False
    stream_options: StreamOptions | None = Field(
        default=None, description="Only with `stream: true`."
    )
    seed: StrictInt | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: StopSequence | StopSequences | None = Field(
        default=None,
        description=f"Up to {MAX_STOP_SEQUENCES} non-empty sequences; the answer ends before "
        "the first one. A `direct` route also stops generating there.",
    )
    user: StrictStr | None = Field(
        default=None, max_length=256, description="An end-user id; written to the server log."
    )
    apportion: ApportionOptions | None = None
    # -- OpenAI parameters accepted only at their neutral value (see UNSUPPORTED) --------------
    n: StrictInt | None = Field(default=None, ge=1, le=1, description=UNSUPPORTED["n"])
    logprobs: Literal[False] | None = Field(default=None, description=UNSUPPORTED["logprobs"])
    top_logprobs: StrictInt | None = Field(
        default=None, ge=0, le=0, description=UNSUPPORTED["top_logprobs"]
    )
    tools: list[dict[str, Any]] | None = Field(
        default=None, max_length=0, description=UNSUPPORTED["tools"]
    )
    tool_choice: Literal["none"] | None = Field(
        default=None, description=UNSUPPORTED["tool_choice"]
    )
    parallel_tool_calls: None = Field(default=None, description=UNSUPPORTED["parallel_tool_calls"])
    functions: list[dict[str, Any]] | None = Field(
        default=None, max_length=0, description=UNSUPPORTED["functions"]
    )
    function_call: Literal["none"] | None = Field(
        default=None, description=UNSUPPORTED["function_call"]
    )
    response_format: ResponseFormat | None = Field(
        default=None, description=UNSUPPORTED["response_format"]
    )
    top_p: StrictFloat | None = Field(default=None, ge=1, le=1, description=UNSUPPORTED["top_p"])
    presence_penalty: StrictFloat | None = Field(
        default=None, ge=0, le=0, description=UNSUPPORTED["presence_penalty"]
    )
    frequency_penalty: StrictFloat | None = Field(
        default=None, ge=0, le=0, description=UNSUPPORTED["frequency_penalty"]
    )
    logit_bias: dict[str, Any] | None = Field(
        default=None, max_length=0, description=UNSUPPORTED["logit_bias"]
    )
    store: Literal[False] | None = Field(default=None, description=UNSUPPORTED["store"])
    metadata: dict[str, Any] | None = Field(
        default=None, max_length=0, description=UNSUPPORTED["metadata"]
    )

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # as OpenAI reports it: the prompt tokens served from the models' KV caches
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


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
    """A request's ledger: its Cost (apportion.types), field for field, and its calls."""

    prompt_tokens: int
    completion_tokens: int
    flops: float
    wall_s: float
    cpu_s: float
    energy_j: float
    cost_usd: float
    cached_tokens: int = Field(
        default=0, description="Prompt tokens the models took from their KV cache."
    )
    flops_cached: float = Field(
        default=0.0,
        description="FLOPs those cached tokens saved: `flops` counts them, as if uncached.",
    )
    calls: list[dict[str, Any]] | None = Field(
        default=None, description="Every charged call; only with `return_ledger`."
    )

    @classmethod
    def of(cls, totals: LedgerTotals, *, with_calls: bool) -> LedgerOut:
        """The ledger as the API shows it (times to the microsecond, as `ask --json` does),
        with every call when `with_calls`."""
        calls = [c.to_dict() for c in totals.calls] if with_calls else None
        return cls(**totals.cost_json(), calls=calls)


class ApportionInfo(BaseModel):
    strategy: str
    intent: str | None
    confidence: float
    calibrated_confidence: float | None = Field(
        default=None,
        description="The share of the answering strategy's answers this confident that were "
        "right in the policy's calibration traces; null where `auto`'s policy has no map "
        "for it, or a fixed strategy was asked for.",
    )
    route: list[str] = Field(description="The strategies tried, in order.")
    stopped_for_budget: bool
    error: str | None
    ledger: LedgerOut
    citations: list[str] = Field(
        default_factory=list,
        description="The document-store chunks (`doc_id#n`) the answer was found in (rag).",
    )
    notes: list[str] = Field(
        default_factory=list,
        description="Request parameters this route did not use, and why (never silently).",
    )


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
    kind: Literal["router", "strategy", "model", "expert"]
    # An expert's base model (as vLLM lists a LoRA adapter's); None for anything else.
    parent: str | None = None


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
