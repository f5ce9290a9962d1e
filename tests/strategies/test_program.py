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
