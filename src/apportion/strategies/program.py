"""program: program-aided solving (PAL). The model writes `solve()`; the sandbox runs it.

The model's code is untrusted: it is only ever handed to `RunContext.run_program`, which runs it
in the sandbox (a separate, unprivileged, network-less, resource-limited process).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated

from apportion.answers import canonical_number
from apportion.strategies.base import MAX_TOKENS_BOUND, Bounds, RunContext
from apportion.strategies.prompts import instructed
from apportion.types import Attempt, Message, Query

RESULT_MARKER = "__APPORTION_RESULT__="

_FENCED = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)

# Appended to the model's code inside the sandbox; prints the return value on a marked line so
# stray prints from the model's code cannot be mistaken for the result.
_RUNNER = f"""

if __name__ == "__main__":
    _result = solve()
    if isinstance(_result, float) and _result.is_integer():
        _result = int(_result)
    elif isinstance(_result, float):
        _result = round(_result, 6)
    print({RESULT_MARKER!r} + str(_result))
"""


def extract_code(text: str) -> str | None:
    """The code block holding `def solve`, or the whole reply if it is bare code."""
    blocks = _FENCED.findall(text)
    for block in blocks:
        if "def solve" in block:
            return str(block).strip()
    if "def solve" in text:
        start = text.index("def solve")
        # keep imports written above the function
        head = text[:start]
        imports = [ln for ln in head.splitlines() if ln.startswith(("import ", "from "))]
        return "\n".join([*imports, text[start:]]).strip()
    return None


def extract_script(text: str) -> str | None:
    """A code block without `solve()` that prints its answer: small models often write one."""
    for block in _FENCED.findall(text):
        if "print(" in block:
            return str(block).strip()
    return None


def last_printed(stdout: str) -> str | None:
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else None


def parse_result(stdout: str) -> str | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            value = line[len(RESULT_MARKER) :].strip()
            return value or None
    return None


@dataclass(frozen=True)
class Program:
    model: str | None = None
    max_tokens: Annotated[int | None, Bounds(1, MAX_TOKENS_BOUND)] = None
    temperature: Annotated[float, Bounds(0, 2)] = 0.0
    # With log-probabilities, the confidence of a program that ran is its geometric-mean token
    # probability, exp(mean log-prob), which ranks right programs above wrong ones (the AUROC
    # is in benchmarks/cascade_threshold.py's output); the cascade thresholds it. Without them
    # (or when the engine cannot give them), the fixed 0.8 for solve(), 0.6 for a script.
    logprobs: bool = False
    # The question before the instructions (prompts.instructed): a plan's later steps on the
    # same model reuse this step's KV cache for the question.
    question_first: bool = False

    @property
    def name(self) -> str:
        return "program"

    def messages(self, query: Query) -> list[Message]:
        system = (
            "You solve problems by writing Python. Write a function solve() that takes no "
            "arguments, computes the answer to the user's problem step by step, and returns it "
            "(a number when the answer is numeric). Use only the standard library. Do not read "
            "input or print. Reply with one ```python code block and nothing else."
        )
        return instructed(system, query, question_first=self.question_first)

    def run(self, query: Query, ctx: RunContext, *, seed: int | None = None) -> Attempt:
        (completion,) = ctx.generate(
            self.messages(query),
            model=self.model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=seed,
            logprobs=self.logprobs,
            detail="program: write",
        )
        code = extract_code(completion.text)
        script = None if code is not None else extract_script(completion.text)
        if code is not None:
            result = ctx.run_program(code + _RUNNER, detail="program: run")
            value = parse_result(result.stdout) if result.ok else None
            confidence = 0.8
        elif script is not None:
            # A script that prints its answer: trust its last line a little less than a
            # returned value, since it may also print intermediate values.
            code = script
            result = ctx.run_program(script, detail="program: run script")
            value = last_printed(result.stdout) if result.ok else None
            confidence = 0.6
        else:
            return Attempt(
                self.name, None, 0.0, rationale=completion.text, error="no solve() in reply"
            )
        if value is None:
            why = result.error or "no result"
            last = result.stderr.strip().splitlines()[-1:] if result.stderr else []
            error = f"program failed: {why}" + (f" ({last[0][:200]})" if last else "")
            return Attempt(self.name, None, 0.0, rationale=code, error=error)
        answer = canonical_number(value) if _looks_numeric(value) else value
        answer = answer or value
        if completion.mean_logprob is not None:
            confidence = math.exp(completion.mean_logprob)
        return Attempt(self.name, answer, confidence, candidates=(answer,), rationale=code)


def _looks_numeric(value: str) -> bool:
    # The same language as -?[\d,]*\.?\d+(e-?\d+)?, written so that a long run of digits
    # before a stray character fails in linear time (that form backtracks quadratically).
    return re.fullmatch(r"-?(?:[\d,]*\.\d+|[\d,]*\d)(?:e-?\d+)?", value.strip()) is not None
