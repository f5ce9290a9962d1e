"""The trained intent classifier: hashed n-gram features and a multinomial logistic regression.

The weights ship beside this file (`intent_model.npz`); `scripts/build_intent_model.py`
rebuilds them from the labelled queries in `bench/intent_data.py`. Inference is pure NumPy
over a few hundred hashed features, well under a millisecond per query on one core.

Features (the single definition, shared by training and inference):

- word unigrams and bigrams, with numbers replaced by their shape (``<n2>`` for a two-digit
  number), so "48 clips" and "17 clips" look alike;
- character trigrams of words, for unseen spellings and inflections;
- a handful of cues: whether the solver found a math expression, a code fence, lettered
  options, a final question mark, and buckets of length and of how many numbers appear.

Hashing uses CRC-32, not Python's `hash`, which is salted per process.
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from apportion.arrays import read_npz
from apportion.types import INTENTS, Intent

__all__ = ["DIM", "MODEL_FILE", "IntentClassifier", "default_classifier", "hashed_features"]

DIM = 1 << 15
MODEL_FILE = Path(__file__).with_name("intent_model.npz")
# Long inputs (BBH puzzles, MMLU passages) keep their head and tail: the task statement and the
# question itself. This also bounds the latency.
_HEAD_CHARS, _TAIL_CHARS = 1500, 500
_TOKEN_RE = re.compile(r"[a-z]+|\d+(?:[.,]\d+)*|```|[^\sa-z\d]")
_NUMBER_RE = re.compile(r"\d")
_OPTIONS_RE = re.compile(r"(?m)^\s*\(?[A-E][).]\s|\bOptions:")


def _bucket(n: int) -> int:
    return 0 if n <= 0 else 1 + int(math.log2(n))


def hashed_features(text: str, *, has_math_expression: bool) -> dict[int, float]:
    """Feature index -> value, L2-normalised (log-scaled counts)."""
    if len(text) > _HEAD_CHARS + _TAIL_CHARS:
        text = text[:_HEAD_CHARS] + "\n" + text[-_TAIL_CHARS:]
    raw = _TOKEN_RE.findall(text.lower())
    tokens = [f"<n{min(len(t), 6)}>" if t[0].isdigit() else t for t in raw]
    names: list[str] = [f"w:{t}" for t in tokens]
    names += [f"b:{a} {b}" for a, b in zip(["^", *tokens], [*tokens, "$"], strict=True)]
    for t in tokens:
        if t.isalpha() and len(t) > 2:
            padded = f"^{t}$"
            names += [f"c:{padded[i : i + 3]}" for i in range(len(padded) - 2)]
    n_numbers = sum(1 for t in raw if t[0].isdigit())
    names += [
        f"m:math={has_math_expression}",
        f"m:fence={'```' in text}",
        f"m:options={_OPTIONS_RE.search(text) is not None}",
        f"m:qmark={text.rstrip().endswith('?')}",
        f"m:words={_bucket(len(raw))}",
        f"m:numbers={_bucket(n_numbers)}",
        f"m:digit_share={min(9, 10 * len(_NUMBER_RE.findall(text)) // max(1, len(text)))}",
    ]
    counts = Counter(zlib.crc32(n.encode()) % DIM for n in names)
    values = {i: 1.0 + math.log(c) for i, c in counts.items()}
    norm = math.sqrt(sum(v * v for v in values.values()))
    return {i: v / norm for i, v in values.items()}


@dataclass(frozen=True)
class IntentClassifier:
    """Linear scores over hashed features; `weights` is DIM × len(classes)."""

    weights: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    classes: tuple[Intent, ...]

    @classmethod
    def load(cls, path: Path = MODEL_FILE) -> IntentClassifier:
        data = read_npz(path)
        classes = tuple(str(c) for c in data["classes"])
        unknown = set(classes) - set(INTENTS)
        if unknown:
            raise ValueError(f"{path} has classes {sorted(unknown)} outside {INTENTS}")
        return cls(
            data["weights"].astype(np.float32),
            data["bias"].astype(np.float32),
            tuple(next(i for i in INTENTS if i == c) for c in classes),
        )

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            weights=self.weights.astype(np.float16),
            bias=self.bias.astype(np.float32),
            classes=np.array(self.classes),
        )

    def probabilities(self, text: str, *, has_math_expression: bool) -> dict[Intent, float]:
        features = hashed_features(text, has_math_expression=has_math_expression)
        index = np.fromiter(features.keys(), dtype=np.int64, count=len(features))
        value = np.fromiter(features.values(), dtype=np.float32, count=len(features))
        logits = value @ self.weights[index] + self.bias
        exp = np.exp(logits - logits.max())
        shares = exp / exp.sum()
        return {c: float(p) for c, p in zip(self.classes, shares, strict=True)}

    def predict(self, text: str, *, has_math_expression: bool) -> Intent:
        p = self.probabilities(text, has_math_expression=has_math_expression)
        return max(p, key=lambda c: p[c])


@functools.cache
def default_classifier() -> IntentClassifier:
    """The shipped model, read once per process (it is immutable)."""
    return IntentClassifier.load()
