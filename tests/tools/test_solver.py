"""The solver: extraction from questions, answers and their format, errors, time limits."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from apportion.tools import solver
from apportion.tools.solver import SolverResult, extract_math, solve

WORD_PROBLEMS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "to her friends in May. How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
    "babysitting. How much did she earn?",
    "If 3 apples cost $6, how much does 1 apple cost?",
    "A train travels 60 miles per hour for 2.5 hours. How far does it go?",
    "What is 3 apples + 2 apples?",
]
NOT_MATH = [
    "What is the capital of Australia?",
    "What is love?",
    "What is the sum?",
    "What is a pi?",
    "What is x?",
    "What is 5?",
    "Who was the 1st president of the United States?",
    "What is 2 + 2 in French?",
    "Is 2 + 2 = 4?",
    "How many r's are in strawberry?",
    "",
    "?",
]


@pytest.mark.parametrize(
    ("question", "math"),
    [
        ("What is 17*23+5?", "17*23+5"),
        ("Solve 2x + 3 = 11 for x.", "2x + 3 = 11"),
        ("Calculate (3+4)^2", "(3+4)^2"),
        ("what's 12 divided by 4", "12 / 4"),
        ("What is 6 times 7?", "6 * 7"),
        ("What is 3 x 4?", "3 * 4"),
        ("What is 5 squared?", "5 ^2"),
        ("What is 2 to the power of 10?", "2 ^ 10"),
        ("What is the square root of 144?", "sqrt 144"),
        ("Solve 24 = 4*b for b.", "24 = 4*b"),
        ("Solve for x: 3x - 7 = 11", "3x - 7 = 11"),
        ("What is the value of x if 2x+3=11?", "2x+3=11"),
        ("Evaluate (-2)/(-10)*(-20)/(-6).", "(-2)/(-10)*(-20)/(-6)"),
        ("What is 2+2? Answer with a number only.", "2+2"),
        ("17*23 = ?", "17*23"),
        ("What is 100!", "100!"),
        ("What is the greatest common divisor of 12 and 18?", "gcd(12, 18)"),
        ("Calculate the remainder when 93 is divided by 12.", "(93) mod (12)"),
        ("x^2 = 4", "x^2 = 4"),
    ],
)
def test_extract_math(question: str, math: str) -> None:
    assert extract_math(question) == math


@pytest.mark.parametrize("question", WORD_PROBLEMS + NOT_MATH)
def test_no_math(question: str) -> None:
    assert extract_math(question) is None
    result = solve(question)
    assert result == SolverResult(False, None, None, "no_math", result.wall_s, result.cpu_s)


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is 17*23+5?", "396"),
        ("Solve 2x + 3 = 11", "x = 4"),
        ("x^2 = 4", "x = -2, 2"),
        ("2x + y = 5, x - y = 1", "x = 2, y = 1"),
        ("x + y = 10 and x - y = 2", "x = 6, y = 4"),
        ("What is 7/2?", "3.5"),  # non-integers: decimal, at most 10 significant digits
        ("What is 1/3?", "0.3333333333"),
        ("What is 2/3?", "0.6666666667"),
        ("What is 0.1 + 0.2?", "0.3"),
        ("sqrt(16)+2^3", "12"),
        ("What is sqrt(2)?", "1.414213562"),
        ("(1,234 + 766) * 2", "4000"),
        ("What is 2^100?", "1267650600228229401496703205376"),
        ("What is 15% of 80?", "12"),
        ("Solve 24 = 4*b for b.", "b = 6"),
        ("Solve -282*d + 929 - 178 = -1223 for d.", "d = 7"),
        ("What is -2 - (-4 + 1 - 0)?", "1"),
        ("what's 12 divided by 4", "3"),
        ("What is the value of x if 2x+3=11?", "x = 4"),
        ("x^3 = 8", "x = 2"),  # real roots preferred over complex ones
        ("x^2 = -1", "x = -i, i"),  # complex only when there is no real root
        ("Solve x^2 + 2x + 5 = 0", "x = -1 - 2i, -1 + 2i"),
        ("What is sqrt(-4)?", "2i"),
        ("x^5 - x - 1 = 0", "x = 1.167303978"),
        ("x + y = 5", "x = 5 - y"),
        ("Solve a*x + b = 0 for x", "x = -b/a"),
        ("Expand (a+b)^2", "a**2 + 2*a*b + b**2"),
        ("Factor x^2 - 1", "(x - 1)*(x + 1)"),
        ("Factor 360", "2**3*3**2*5"),
        ("2+2=4", "true"),
        ("2+2=5", "false"),
        ("x + 1 = x + 1", "infinitely many solutions"),
        ("(x+1)^2 = x^2 + 2x + 1", "infinitely many solutions"),
        ("What is 12345678901234.5?", None),  # lone numbers are not questions
        ("What is 10^20 + 0.5?", "1e+20"),
        ("What is 100!", "9332621544" + "3944152681699238856266700490715968264381621468592963"
         "895217599993229915608941463976156518286253697920827223758251185210916864"
         + "0" * 24),
    ],
)  # fmt: skip
def test_answers(question: str, answer: str | None) -> None:
    result = solve(question)
    if answer is None:
        assert result.error == "no_math"
        return
    assert result.error is None, result
    assert result.ok
    assert result.answer == answer


def test_result_fields() -> None:
    result = solve("What is 17*23+5?")
    assert result.ok and result.answer == "396"
    assert result.expression == "17*23 + 5"
    assert result.error is None
    assert 0 < result.wall_s < 5
    assert result.cpu_s > 0
    system = solve("2x + y = 5, x - y = 1")
    assert system.expression == "2*x + y = 5, x - y = 1"


# "... what is x?" around an equation, in phrasings the extraction was not written from (the
# issue's own is the first).
@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("If 6x + 72 = 174, what is x?", "x = 17"),
        ("If 3x - 4 = 11, then what is x?", "x = 5"),
        ("Given that 2(x + 1) = 10, find x.", "x = 4"),
        ("Suppose 5y = 35. Solve for y.", "y = 7"),
        ("Assuming 8x = 64, what is x?", "x = 8"),
        ("Find x: 4x - 2 = 10", "x = 3"),
        ("Find x if 7x + 1 = 50.", "x = 7"),
        ("Solve for x in 9x = 81.", "x = 9"),
        ("What value of x satisfies 3x + 4 = 19?", "x = 5"),
        ("For what value of x is 2x = 12?", "x = 6"),
        ("When 2x + 6 = 20, what does x equal?", "x = 7"),
        ("Let 10 - x = 4. What is the value of x?", "x = 6"),
        ("If 4(x - 3) = 20, determine x.", "x = 8"),
        ("If 2x = 14 then x = ?", "x = 7"),
        ("If 6x + 72 = 174, x = ?", "x = 17"),
        ("(x+1)(x-1) = 0, find x", "x = -1, 1"),
        ("If 3a + 2b = 12 and a - b = -1, what is a?", "a = 2"),
    ],
)
def test_what_is_x_around_an_equation(question: str, answer: str) -> None:
    result = solve(question)
    assert result.error is None, result
    assert result.answer == answer


@pytest.mark.parametrize(
    "question",
    [
        "If 3 apples cost $6, how much does 1 apple cost?",
        "If it rains tomorrow, what is the chance of a flood?",
        "Given the data, find x.",
        "Let me know what x is.",
        "Find x.",
        "What is x?",
    ],
)
def test_conditions_around_prose_are_still_declined(question: str) -> None:
    assert extract_math(question) is None


def test_a_condition_without_the_unknown_is_never_answered_wrongly() -> None:
    # substituting into an expression is not supported; it must be declined, not mis-solved
    assert solve("If x = 3, what is 2x + 1?").answer in (None, "7")
    wrong_unknown = solve("If 6x + 72 = 174, what is y?")
    assert wrong_unknown.error == "unsupported: y does not appear in the equation"


@pytest.mark.parametrize(
    ("question", "error"),
    [
        ("What is 1/0?", "undefined: division by zero"),
        ("What is 1/(3-3)?", "undefined: division by zero"),
        ("What is 10 mod 0?", "undefined: modulo by zero"),
        ("x/0 = 1", "undefined: division by zero"),
        ("What is log(0)?", "undefined: result is undefined or infinite"),
        ("What is tan(pi/2)?", "undefined: result is undefined or infinite"),
        ("x + 1 = x + 2", "no_solution"),
        ("sqrt(x) = -2", "no_solution"),
        ("Solve 2x = 4 for y", "unsupported: y does not appear in the equation"),
        ("2 +* 3", "parse_error: expected a number, variable or '(', got '*' at 3"),
        ("9**9**9**9", "parse_error: power too large"),
        ("What is 100000!?", "parse_error: factorial argument larger than 1000"),
        ("Expand (a+b+c+d)^10", "unsupported: answer longer than 2000 characters"),
    ],
)
def test_clean_errors(question: str, error: str) -> None:
    result = solve(question)
    assert not result.ok
    assert result.answer is None
    assert result.error == error


@pytest.mark.parametrize(
    "payload",
    [
        "__import__('os').system('touch {s}')",
        "What is __import__('os').system('touch {s}')?",
        "Calculate open('{s}', 'w').write('x')",
        "Solve exec(\"open('{s}', 'w')\") = 1",
        "What is ().__class__.__bases__[0].__subclasses__()?",
        "What is (lambda: open('{s}', 'w'))()?",
        "eval(\"open('{s}','w')\") + 1",
        "x = 1; import os; os.system('touch {s}')",
    ],
)
def test_injection_never_runs(payload: str, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    result = solve(payload.format(s=sentinel))
    assert not result.ok
    assert result.error is not None
    assert result.error == "no_math" or result.error.startswith("parse_error")
    assert not sentinel.exists()


def test_timeout_kills_the_child() -> None:
    # Accepted by the parser (degree 1000 is within limits) but SymPy needs far over 20 s.
    before = set(multiprocessing.active_children())  # others' workers, if any still run
    start = time.perf_counter()
    result = solve("Solve (x+1)^1000 = 2", timeout_s=0.5)
    elapsed = time.perf_counter() - start
    assert result.error == "timeout"
    assert not result.ok and result.answer is None
    assert elapsed < 3.0
    assert result.wall_s >= 0.5
    assert result.cpu_s > 0.05  # the child's CPU, read before it was killed
    assert set(multiprocessing.active_children()) <= before  # this solve's child is gone
    # The calling process is unharmed.
    assert solve("What is 2+2?").answer == "4"


def test_child_crash_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def die(*args: object) -> dict[str, object]:
        os._exit(3)

    # Fork copies the patched module into the child.
    monkeypatch.setattr(solver, "_work", die)
    result = solve("What is 2+2?", start_method="fork")
    assert result.error == "crashed" and not result.ok


def test_multithreaded_caller_uses_forkserver() -> None:
    results: list[SolverResult] = []
    stop = threading.Event()
    # A second live thread makes fork unsafe; solve must switch start method and still work.
    idler = threading.Thread(target=stop.wait)
    idler.start()
    try:
        assert solver._context(None).get_start_method() != "fork"
        worker = threading.Thread(target=lambda: results.append(solve("Solve 2x + 3 = 11")))
        worker.start()
        worker.join(60)
    finally:
        stop.set()
        idler.join()
    assert [r.answer for r in results] == ["x = 4"]


def test_happy_path_is_fast() -> None:
    solve("What is 17*23+5?")  # first call warms SymPy in the parent
    walls = sorted(solve("What is 17*23+5?").wall_s for _ in range(5))
    assert walls[2] < 0.25, walls  # fork: ~10 ms; spawning would cost ~300 ms
