from apportion.strategies.program import RESULT_MARKER, extract_code, parse_result


def test_extract_code_from_fenced_block() -> None:
    text = "Here you go:\n```python\nimport math\ndef solve():\n    return 48 + 24\n```\nDone."
    code = extract_code(text)
    assert code == "import math\ndef solve():\n    return 48 + 24"


def test_extract_code_prefers_block_with_solve() -> None:
    text = "```python\nprint('x')\n```\n```python\ndef solve():\n    return 1\n```"
    assert extract_code(text) == "def solve():\n    return 1"


def test_extract_code_bare_and_unterminated() -> None:
    assert extract_code("from math import sqrt\ndef solve():\n    return sqrt(4)") == (
        "from math import sqrt\ndef solve():\n    return sqrt(4)"
    )
    assert extract_code("```python\ndef solve():\n    return 2") == "def solve():\n    return 2"
    assert extract_code("I cannot write code.") is None


def test_parse_result_ignores_stray_prints() -> None:
    stdout = f"debug 5\n{RESULT_MARKER}72\n"
    assert parse_result(stdout) == "72"
    assert parse_result("72\n") is None


def test_script_fallback_takes_the_last_printed_line() -> None:
    from apportion.strategies.program import extract_script, last_printed

    text = "```python\nx = 180 + 2 * 185\nprint(x / 110)\n```"
    assert extract_script(text) == "x = 180 + 2 * 185\nprint(x / 110)"
    assert extract_script("```python\nx = 1\n```") is None
    assert last_printed("step 1\n5.0\n\n") == "5.0"
    assert last_printed("") is None


def _run(reply: str):  # type: ignore[no-untyped-def]
    from apportion.ledger import Ledger
    from apportion.strategies.base import RunContext
    from apportion.strategies.program import Program
    from apportion.tools.sandbox import SandboxLimits
    from apportion.types import Query
    from fakes import ScriptedEngine

    engine = ScriptedEngine([reply])
    ctx = RunContext.over(
        lambda _id: engine, "scripted", Ledger(), sandbox_limits=SandboxLimits(cpu_s=2, wall_s=5)
    )
    return Program().run(Query("q", kind="number"), ctx), ctx.ledger.totals()


def test_program_runs_solve_in_the_sandbox_and_charges_it() -> None:
    attempt, totals = _run("```python\ndef solve():\n    return 48 + 48 / 2\n```")
    assert (attempt.answer, attempt.confidence) == ("72", 0.8)
    assert [c.name for c in totals.calls] == ["scripted", "sandbox"]
    assert totals.calls[1].wall_s > 0


def test_program_falls_back_to_a_printing_script() -> None:
    attempt, _ = _run("```python\nx = 180 + 2 * 185\nprint(x / 110)\n```")
    assert (attempt.answer, attempt.confidence) == ("5", 0.6)


def test_program_that_crashes_or_loops_is_a_failed_attempt() -> None:
    attempt, _ = _run("```python\ndef solve():\n    return 1 / 0\n```")
    assert attempt.answer is None and "ZeroDivisionError" in (attempt.error or "")
    attempt, _ = _run("```python\ndef solve():\n    while True:\n        pass\n```")
    assert attempt.answer is None and attempt.error and "program failed" in attempt.error
