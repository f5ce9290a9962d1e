"""Pull a final answer out of model text, and normalise answers for comparison and voting.

This is the one place that parses answers: chain-of-thought, self-consistency voting and
benchmark scoring all go through it. Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import decimal
import re
import string
from collections.abc import Sequence
from fractions import Fraction

from apportion.types import AnswerKind

__all__ = [
    "MAX_NUMBER_BITS",
    "bare_letter",
    "canonical_number",
    "extract_answer",
    "gold_letters",
    "is_bare_number",
    "match_options",
    "normalize_text",
    "parse_number",
    "predicted_letters",
    "read_boolean",
    "vote_key",
]

# ---------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------

_MINUS = "-\u2212\u2013"  # hyphen-minus, unicode minus, en dash (models emit all three)
_CURRENCY = "$€£¥₹"

# Numbers are exact Fractions, so 10**400 and 9...9 (400 digits) compare right where a float
# overflows. A number is read only while its numerator and denominator fit in this many bits
# (~3,900 decimal digits): below Python's 4,300-digit limit on int/str conversion, and cheap
# to build. Bigger ones ("1e999999999", whose exact value alone would take minutes) are not
# read as numbers at all; the work is bounded before it is done, so no literal costs more than
# milliseconds.
MAX_NUMBER_BITS = 13_000
# Longer digit strings (leading and trailing zeros aside) cannot fit; skipped unconverted.
_MAX_LITERAL_DIGITS = 4_200

# One number as people and models write it: optional sign (only where it cannot be a binary
# minus, i.e. not right after a digit, letter or closing bracket), optional currency symbol,
# digits with optional thousands separators, decimals, then an exponent ("1.5e3"), a power
# ("10**400", "2^10", "10^{-3}") or a power of ten ("6.02 × 10^23", "3 \times 10^{8}"), an
# optional "/denominator" and an optional percent sign.
_EXPONENT = r"(?:\{{\s?(?P<{0}b>[-+\u2212]?\d+)\s?\}}|(?P<{0}>[-+\u2212]?\d+))"
_NUMBER_RE = re.compile(
    rf"""
    (?<![\w./)\]}}])                       # not inside a word, number or date
    (?P<sign>(?<![\w)\]}}])[{_MINUS}+])?   # sign, never a binary operator
    (?:[{_CURRENCY}]\s?)?
    (?P<sign2>[{_MINUS}])?                 # "$-5"
    (?P<num>
        (?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?
      | \.\d+
    )
    (?:
        (?P<exp>[eE][-+]?\d+(?![\w]))
      | \s?(?:\*\*|\^)\s?{_EXPONENT.format("power")}(?![\d.])
      | \s?(?:[x×*·⋅]|\\times|\\cdot)\s?10\s?(?:\*\*|\^)\s?{_EXPONENT.format("ten")}(?![\d.])
    )?
    (?:
        \s?/\s?(?P<den>\d+(?:\.\d+)?)(?!\d|\.\d|\s?/\s?\d)
    )?
    (?P<pct>\s?%)?
    (?![\d])
    """,
    re.VERBOSE,
)

# Braces are matched in code (one pass), not with lazy groups that retry on unclosed input.
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_LATEX_NOISE_RE = re.compile(r"\\(?:left|right|,|;|!|\s|text\{[^{}]*\}|mathrm\{[^{}]*\}|%)")


def _frac_part(inner: str) -> str:
    # As the braces' content was read before: spaces trimmed, a blank one kept as one space.
    return inner.strip() or inner[-1:]


def _latex_frac(m: re.Match[str]) -> str:
    top, bottom = m.group(1), m.group(2)
    if not top or not bottom:
        return m.group(0)
    return f"{_frac_part(top)}/{_frac_part(bottom)}"


def _prepare(text: str) -> str:
    """Rewrite LaTeX fractions as a/b and drop spacing macros, for the number regex."""
    text = _LATEX_FRAC_RE.sub(_latex_frac, text)
    text = _LATEX_NOISE_RE.sub(" ", text)
    return text.replace("\\$", "$").replace("\\%", "%")


def _fits(value: Fraction) -> bool:
    return max(value.numerator.bit_length(), value.denominator.bit_length()) <= MAX_NUMBER_BITS


def _decimal(text: str) -> Fraction | None:
    """The exact value of a plain decimal literal ("1,234.5", ".5"), or None if too long."""
    whole, _, frac = text.replace(",", "").partition(".")
    whole, frac = whole.lstrip("0"), frac.rstrip("0")
    if len(whole) + len(frac) > _MAX_LITERAL_DIGITS:
        return None
    return Fraction(int(whole + frac or "0"), 10 ** len(frac))


def _integer(text: str) -> int:
    return int(text.replace("\u2212", "-"))


def _scaled(value: Fraction, base: Fraction, power: int) -> Fraction | None:
    """value * base**power, or None when it does not fit; the work is bounded first."""
    if base == 0:
        return None if power < 0 else value * base**power
    if base == 1:
        return value
    size = max(base.numerator.bit_length(), base.denominator.bit_length())
    # bit_length overestimates log2 by at most 2x, so this never refuses a result that fits.
    if abs(power) * size > 2 * MAX_NUMBER_BITS:
        return None
    result = value * base**power
    return result if _fits(result) else None


def _match_value(m: re.Match[str]) -> Fraction | None:
    value = _decimal(m.group("num"))
    if value is None:
        return None
    for group, base in (("exp", 10), ("power", 0), ("powerb", 0), ("ten", 10), ("tenb", 10)):
        text = m.group(group)
        if text is None:
            continue
        if len(text) > 8:  # no exponent this long is ever within bounds
            return None
        power = _integer(text[1:] if group == "exp" else text)
        if base:
            scaled = _scaled(value, Fraction(base), power)
        else:  # "2^10": the literal is the base
            scaled = _scaled(Fraction(1), value, power)
        if scaled is None:
            return None
        value = scaled
    den = m.group("den")
    if den is not None:
        d = _decimal(den)
        if d is None or d == 0:
            return None
        value /= d
        if not _fits(value):
            return None
    if m.group("sign") in tuple(_MINUS) or m.group("sign2") is not None:
        value = -value
    return value


def _first_number(text: str) -> tuple[Fraction, re.Match[str]] | None:
    """The first readable number in `text` (literals too large to read are skipped)."""
    for m in _NUMBER_RE.finditer(text):
        v = _match_value(m)
        if v is not None:
            return v, m
    return None


def _last_number(text: str) -> Fraction | None:
    # Values are built only from the end backwards: text full of numbers costs one regex pass.
    for m in reversed(list(_NUMBER_RE.finditer(text))):
        v = _match_value(m)
        if v is not None:
            return v
    return None


# Above this magnitude (or below its inverse) a float cannot hold the value to 15 digits.
_FLOAT_SAFE = Fraction(10) ** 300
_SIGNIFICANT = decimal.Context(prec=15, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    if 1 / _FLOAT_SAFE < abs(value) < _FLOAT_SAFE:
        return f"{float(value):.15g}"
    # Beyond float range: the same 15 significant digits, from exact decimal division.
    quotient = _SIGNIFICANT.divide(decimal.Decimal(value.numerator), value.denominator)
    return format(quotient, ".15g")


def _first_value(s: str) -> Fraction | None:
    found = _first_number(_prepare(s))
    return found[0] if found else None


def parse_number(s: str) -> Fraction | None:
    """The exact value of the first number in `s` ("$1,234.50" -> 2469/2, "3/4" -> 3/4,
    "50%" -> 50, "1e400" and "10**400" -> 10**400), or None when it holds none. Literals
    beyond MAX_NUMBER_BITS are not read; comparing with a float compares exact values."""
    return _first_value(s)


def canonical_number(s: str) -> str | None:
    """A canonical string for the first number in `s`: "1,234.50" -> "1234.5", "72.0" -> "72",
    "3/4" -> "0.75", "-0" -> "0"; integers in full, others to 15 significant digits.
    None when `s` holds no number."""
    v = _first_value(s)
    return None if v is None else _format(v)


_ONLY_NUMBER_TRAIL = re.compile(r"[\s.!]*")


def _only_number(s: str) -> Fraction | None:
    """The value of `s` when `s` is a single number and nothing else (bar a trailing period)."""
    t = _prepare(s).strip()
    found = _first_number(t)
    if found is None:
        return None
    value, m = found
    # Text before the first number, or anything but a period after it (another number
    # included), means `s` is more than one number.
    if t[: m.start()].strip() or not _ONLY_NUMBER_TRAIL.fullmatch(t[m.end() :]):
        return None
    return value


# A single number, optionally with currency, thousands separators, sign, fraction or percent:
# how a gold answer is recognised as numeric (bench/scoring.py's `infer_kind`).
_BARE_NUMBER_RE = re.compile(
    r"[-−+]?[$€£¥]?[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?"
    r"(?:\s?/\s?\d+)?\s?%?"
)


def is_bare_number(answer: str) -> bool:
    """Whether `answer` is one number and nothing else ("1,234", "$5", "3/4", "-2.5", "50%")."""
    return bool(_BARE_NUMBER_RE.fullmatch(answer) and re.search(r"\d", answer))


_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_text(s: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation and articles, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


# ---------------------------------------------------------------------------
# Markers
# ---------------------------------------------------------------------------

# "The answer is", "Final answer:", "**Answer:**", "answer would be" ...
_MARKER_RE = re.compile(
    r"\banswer\b(?:\s*\*\*|\s*__)?\s*(?:(?:is|was|would\s+be|should\s+be|will\s+be)\b\s*:?|[:=])"
    r"(?:\s*\*\*|\s*__)?",
    re.IGNORECASE,
)
_HASHES_RE = re.compile(r"####\s*")
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)")
# Words after which a period does not end the sentence ("St. Louis", "Dr. Who").
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "st",
        "jr",
        "sr",
        "vs",
        "mt",
        "ft",
        "inc",
        "ltd",
        "co",
        "approx",
        "fig",
        "e.g",
        "i.e",
        "gen",
        "col",
        "lt",
        "sgt",
        "capt",
        "prof",
        "rev",
        "ave",
    }
)


_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"[{}]")


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each "{" -> index of the "}" that closes it, for the braces that close."""
    closes: dict[int, int] = {}
    open_at: list[int] = []
    for m in _BRACE_RE.finditer(text):
        if m.group() == "{":
            open_at.append(m.start())
        elif open_at:
            closes[open_at.pop()] = m.start()
    return closes


def _boxed(text: str) -> list[str]:
    """Contents of every \\boxed{...} (and \\fbox{...}), braces balanced, in order.

    Braces are matched in one pass over the text: scanning forward from each opening would
    take quadratic time on many unclosed "\\boxed{"."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    if not starts:
        return []
    closes = _closing_braces(text)
    return [text[start : closes[start - 1]] for start in starts if start - 1 in closes]


def answer_start(text: str) -> int | None:
    """Where the answer begins in a reply that marks it ("The answer is", "Answer:", "####",
    \\boxed{…}): the offset just past the last marker, or None. Strategies read the
    log-probabilities of the answer from here (types.Completion.mean_logprob_from)."""
    ends = [m.end() for m in _MARKER_RE.finditer(text)]
    ends += [m.end() for m in _HASHES_RE.finditer(text)]
    ends += [m.end() for m in _BOXED_RE.finditer(text)]
    return max(ends) if ends else None


def _after_last_marker(text: str) -> str | None:
    """The rest of the line after the last "answer is"/"answer:" marker, or None."""
    last = None
    for m in _MARKER_RE.finditer(text):
        last = m
    if last is None:
        return None
    rest = text[last.end() :]
    line = rest.lstrip(" \t*_")
    if line.startswith("\n"):
        # "Answer:\n72" — the answer is on the next non-empty line
        line = line.lstrip()
    return line.split("\n", 1)[0]


# An abbreviation or a run of initials is never longer than this; looking back no further
# keeps `_first_sentence` linear on text with many periods.
_ABBREVIATION_CHARS = 32


def _word_before(s: str, end: int) -> str | None:
    """The run of non-space characters that ends at `end`, lower-cased; None when it is longer
    than any abbreviation."""
    start = end
    while start > 0 and not s[start - 1].isspace():
        start -= 1
        if end - start > _ABBREVIATION_CHARS:
            return None
    return s[start:end].lower()


def _first_sentence(s: str) -> str:
    for m in _SENTENCE_END_RE.finditer(s):
        if m.group() == ".":
            token = _word_before(s, m.start())
            if token is not None and (
                token in _ABBREVIATIONS or _INITIALS_RE.fullmatch(token) is not None
            ):
                continue  # an abbreviation or an initial ("J. K. Rowling", "U.S. Army")
        return s[: m.start()]
    return s


_INITIALS_RE = re.compile(r"(?:[a-z]\.)*[a-z]")
_CLAUSE_END_RE = re.compile(r",\s|;|\s(?:because|since|as|so|and|which|but|from)\b", re.I)


def _number_in_segment(segment: str) -> Fraction | None:
    # "18, since 3 x 6 = 18 and 2 + 2 = 4": only the first clause states the answer
    seg = _CLAUSE_END_RE.split(_prepare(_first_sentence(segment)), maxsplit=1)[0]
    if "=" in seg:
        after = _first_number(seg.rsplit("=", 1)[1])
        if after:
            return after[0]
    found = _first_number(seg)
    return found[0] if found else None


def _extract_number(text: str) -> str | None:
    for content in reversed(_boxed(text)):
        v = _first_value(content)
        if v is not None:
            return _format(v)
    hashes = list(_HASHES_RE.finditer(text))
    if hashes:
        v = _first_value(text[hashes[-1].end() :].split("\n", 1)[0])
        if v is not None:
            return _format(v)
    segment = _after_last_marker(text)
    if segment is not None:
        v = _number_in_segment(segment)
        if v is not None:
            return _format(v)
    prepared = _prepare(text)
    lines = [ln for ln in prepared.strip().splitlines() if ln.strip()]
    if lines and "=" in lines[-1]:
        after = _first_number(lines[-1].rsplit("=", 1)[1])
        if after:
            return _format(after[0])
    v = _last_number(prepared)
    return None if v is None else _format(v)


# ---------------------------------------------------------------------------
# Choices
# ---------------------------------------------------------------------------

_LETTERS = string.ascii_uppercase


def _valid_letters(choices: Sequence[str]) -> str:
    return _LETTERS[: len(choices)] if choices else _LETTERS


def _letter_at_start(segment: str, valid: str) -> str | None:
    """A letter answer at the start of `segment`: "(B)", "B", "B)", "B.", "option B", "[B]"."""
    seg = segment.strip().lstrip("*_ \"'`")
    seg = re.sub(r"^(?:option|choice)\s+", "", seg, flags=re.IGNORECASE)
    m = re.match(r"[(\[]([A-Za-z])[)\]]", seg)
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()
    m = re.fullmatch(r"([a-z])[).:]?", seg.rstrip(" *_\"'`"))
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()  # "Answer: c" — a lone lower-case letter
    m = re.match(r"([A-Z])(?=$|[\s).:,;!*_\"'`])", seg)
    if m and m.group(1) in valid:
        # "A dog" is an article, not option A; "A." / "A)" / "A" / "A, because" are letters.
        after = seg[1:]
        if m.group(1) == "A" and re.match(r"\s+[a-z]", after):
            return None
        return m.group(1)
    return None


def _exact(s: str) -> str:
    collapsed = " ".join(s.split())
    return collapsed.rstrip(" .!?;:,") or collapsed


def _light(s: str) -> str:
    collapsed = " ".join(s.lower().split())
    return collapsed.strip(" .!?;:,'\"`*_") or collapsed


# Ever looser ways to compare an answer with option text: verbatim up to spacing and trailing
# punctuation; then case-insensitive; then SQuAD-normalised (which merges "-1" with "1" and
# "15.6" with "156", so it only runs when the stricter forms find nothing).
_OPTION_FORMS = (_exact, _light, normalize_text)


def match_options(answer: str, choices: Sequence[str], *, loose: bool = True) -> tuple[str, ...]:
    """Letters of the options whose text `answer` is, compared verbatim, then ignoring case,
    then (when `loose`) SQuAD-normalised. Several letters when options repeat (a few MMLU and
    CommonsenseQA items repeat an option); empty when none matches."""
    for form in _OPTION_FORMS if loose else _OPTION_FORMS[:2]:
        key = form(answer)
        if not key:
            continue
        hits = tuple(_LETTERS[i] for i, opt in enumerate(choices) if form(opt) == key)
        if hits:
            return hits
    return ()


def _option_text_letter(text: str, choices: Sequence[str]) -> str | None:
    """The option whose text appears last in `text` (longest wins a tie), as a letter."""
    for norm_fn in _OPTION_FORMS:
        hay = norm_fn(text)
        best: tuple[int, int, int] | None = None
        for i, option in enumerate(choices):
            opt = norm_fn(option)
            if not opt:
                continue
            pattern = rf"(?<![\w.\-]){re.escape(opt)}(?!\w|[.,]\d)"
            found = list(re.finditer(pattern, hay))
            if not found:
                continue
            last = found[-1]
            key = (last.end(), len(opt), -i)
            if best is None or key > best:
                best = key
        if best is not None:
            return _LETTERS[-best[2]]
    return None


def _exact_option(text: str, choices: Sequence[str]) -> str | None:
    """The option `text` is (see `match_options`), unless `text` is a lone letter."""
    if not choices or re.fullmatch(r"\s*[(\[]?[A-Za-z][)\]]?[.!]?\s*", text):
        return None
    hits = match_options(text.strip(), choices, loose=False)
    return hits[0] if hits else None


def _extract_choice(text: str, choices: Sequence[str]) -> str | None:
    valid = _valid_letters(choices)
    segment = _after_last_marker(text)
    if segment is not None:
        letter = _exact_option(segment, choices) or _exact_option(_first_sentence(segment), choices)
        if letter:
            return letter
        letter = _letter_at_start(segment, valid)
        if letter:
            return letter
        if choices:
            letter = _option_text_letter(_first_sentence(segment), choices)
            if letter:
                return letter
    for content in reversed(_boxed(text)):
        letter = _exact_option(content, choices) or _letter_at_start(content, valid)
        if letter:
            return letter
    m = re.fullmatch(r"\s*[(\[]?([A-Za-z])[)\]]?[.!]?\s*", text)
    if m and m.group(1).upper() in valid:
        return m.group(1).upper()
    letter = _exact_option(text, choices)
    if letter:
        return letter
    m = re.match(r"\s*\**([A-Z])[).:]\**\s", text.strip() + " ")
    if m and m.group(1) in valid and "\n" not in text.strip():
        return m.group(1)  # a one-line reply that leads with its letter: "D) They are ..."
    parens = [m.group(1).upper() for m in re.finditer(r"\(([A-Za-z])\)", text)]
    parens = [p for p in parens if p in valid]
    if parens:
        return parens[-1]
    # [^\S\n]*, not \s*, after ^: \s* would run on over every following blank line, from
    # every line start (quadratic on a long run of newlines); the letters found are the same.
    lines = [m.group(1) for m in re.finditer(r"(?m)^[^\S\n]*\**([A-Z])[).:]\**(?:\s|$)", text)]
    lines = [ln for ln in lines if ln in valid]
    if lines:
        return lines[-1]
    if choices:
        letter = _option_text_letter(text, choices)
        if letter:
            return letter
    m = re.match(r"\s*\**[(\[]?([A-Z])[)\].:]", text)
    return m.group(1) if m and m.group(1) in valid else None


def bare_letter(answer: str, choices: Sequence[str] = ()) -> str | None:
    """`answer` as an option letter when it is a letter and nothing else ("B", "(b)", "[C]",
    "D."), within range of `choices` when they are given; else None."""
    letter = _letter_of(answer)
    if letter is not None and (not choices or ord(letter) - ord("A") < len(choices)):
        return letter
    return None


def gold_letters(gold: str, choices: Sequence[str]) -> tuple[str, ...]:
    """Gold as option letters: "B", "(B)" or an option's text (several when options repeat)."""
    letter = bare_letter(gold, choices)
    return (letter,) if letter else match_options(gold, choices)


def predicted_letters(predicted: str, choices: Sequence[str]) -> tuple[str, ...]:
    """A prediction as option letters: a bare letter, an option's text, or whatever
    `extract_answer` reads out of a longer reply ("B) library", "The answer is (B)")."""
    letter = bare_letter(predicted, choices)
    if letter:
        return (letter,)
    hits = match_options(predicted, choices, loose=False)
    if hits:
        return hits
    extracted = extract_answer(predicted, "choice", choices)
    if extracted:
        return (extracted,)
    return match_options(predicted, choices)


# ---------------------------------------------------------------------------
# Booleans and text
# ---------------------------------------------------------------------------

_BOOL_RE = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_BOOL_MAP = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
# A whole answer that is one of these words (after SQuAD normalisation) is that boolean.
_BOOL_WORDS = {**_BOOL_MAP, "y": "yes", "n": "no"}


def read_boolean(answer: str) -> str | None:
    """`answer` as "yes" or "no": a lone yes/no/true/false/y/n, else what `extract_answer`
    reads from a longer reply; None when it holds neither."""
    norm = normalize_text(answer)
    if norm in _BOOL_WORDS:
        return _BOOL_WORDS[norm]
    return extract_answer(answer, "boolean")


def _extract_boolean(text: str) -> str | None:
    segment = _after_last_marker(text)
    if segment is not None:
        m = _BOOL_RE.search(segment)
        if m:
            return _BOOL_MAP[m.group(1).lower()]
    for content in reversed(_boxed(text)):
        m = _BOOL_RE.search(content)
        if m:
            return _BOOL_MAP[m.group(1).lower()]
    m = re.match(r"[\s*_\"'`]*(yes|no|true|false)\b(?=\s*(?:[.,!;:]|$))", text, re.IGNORECASE)
    if m:
        return _BOOL_MAP[m.group(1).lower()]
    found = _BOOL_RE.findall(text)
    return _BOOL_MAP[found[-1].lower()] if found else None


_TRIM = " \t\r\n*_`\"'“”‘’"


def _clean_span(s: str) -> str:
    # rstrip, not a "[.;,!]+$" pattern, which retries from every position of a long run
    return s.strip(_TRIM).rstrip(".;,!").strip(_TRIM)


def _extract_text(text: str) -> str | None:
    boxed = _boxed(text)
    if boxed and boxed[-1].strip():
        return boxed[-1].strip()
    segment = _after_last_marker(text)
    if segment is not None:
        span = _clean_span(_first_sentence(segment.strip()))
        if span:
            return span
    for line in text.splitlines():
        if line.strip():
            span = _clean_span(_first_sentence(line.strip()))
            return span or None
    return None


def extract_answer(
    text: str, kind: AnswerKind | None = None, choices: Sequence[str] = ()
) -> str | None:
    """The final answer in model output `text`, or None when there is none.

    number  -> canonical number string ("The answer is $1,234.50" -> "1234.5")
    choice  -> an upper-case letter ("Answer: (C)" -> "C"; option text is mapped via `choices`)
    boolean -> "yes" or "no"
    text    -> the span after "Answer:"/"The answer is", else the first sentence
    None    -> like text, but a bare number comes back canonical
    """
    if not text or not text.strip():
        return None
    if kind == "number":
        return _extract_number(text)
    if kind == "choice":
        return _extract_choice(text, choices)
    if kind == "boolean":
        return _extract_boolean(text)
    span = _extract_text(text)
    if kind is None and span is not None:
        v = _only_number(span)
        if v is not None:
            return _format(v)
    return span


# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------


def _letter_of(answer: str) -> str | None:
    m = re.fullmatch(r"\s*[(\[]?([A-Za-z])[)\].]?\s*", answer)
    return m.group(1).upper() if m else None


def vote_key(answer: str | None, kind: AnswerKind | None = None) -> str | None:
    """A key under which equivalent answers collide, for majority voting.

    Numbers become canonical ("1,000.0" and "1000" agree), text is SQuAD-normalised, letters
    upper-cased, booleans "yes"/"no". None when `answer` is None or cannot be read as `kind`.
    """
    if answer is None:
        return None
    if kind == "number":
        return canonical_number(answer)
    if kind == "choice":
        letter = _letter_of(answer)
        if letter is not None:
            return letter
        norm = normalize_text(answer)
        return norm or None
    if kind == "boolean":
        m = _BOOL_RE.search(answer)
        return _BOOL_MAP[m.group(1).lower()] if m else None
    if kind is None:
        v = _only_number(answer)
        if v is not None:
            return _format(v)
    norm = normalize_text(answer)
    if norm:
        return norm
    # Punctuation-only answers (e.g. "] ) >") normalise to nothing; keep them distinct.
    raw = " ".join(answer.split())
    return raw or None
