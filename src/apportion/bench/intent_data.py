"""Labelled queries for the intent classifier (router/intent.py), built from the public sets in
shared/data by the bench loaders. Only `scripts/build_intent_model.py` and the tests read them:
the router itself never imports bench.

Each source gives one label (the label is what the dataset *is*, not a per-item judgement):

- arithmetic: bigbench_arithmetic, deepmind_mathematics_sample, BBH multistep_arithmetic_two,
  CLINC150's `calculator` intent;
- math_word: gsm8k, svamp, mawps, multiarith, aqua, BBH object_counting;
- factual: squad, mmlu (no math subjects; formal_logic goes to logic), commonsenseqa,
  strategyqa, MT-Bench/Vicuna "knowledge";
- logic: the BBH deduction, tracking, truth and navigation tasks, bigbench_logic_puzzles,
  MMLU formal_logic, Sudoku and Game-of-24 puzzles put as questions;
- code: MT-Bench/Vicuna "coding" (real, held out for testing only) and templated requests
  (the shared data has no code-question set; see `_templated_code`);
- chat: CLINC150's other 149 intents and its out-of-scope queries, MT-Bench/Vicuna writing,
  roleplay and humanities.

Texts are what `apportion bench` sends (the named loaders format options into the question),
so the classifier sees the same shapes at training and at routing time. The split into train
and held-out is by a hash of the text: stable across runs and machines.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from apportion.bench.datasets import default_data_dir, load_named
from apportion.types import Intent

__all__ = ["LabelledQuery", "labelled_queries"]

MMLU_MATH = frozenset({
    "abstract_algebra", "college_mathematics", "elementary_mathematics",
    "high_school_mathematics", "high_school_statistics", "college_physics",
    "high_school_physics", "econometrics",
})  # fmt: skip
BBH_LABELS: dict[str, Intent] = {
    "multistep_arithmetic_two": "arithmetic",
    "object_counting": "math_word",
    "boolean_expressions": "logic",
    "formal_fallacies": "logic",
    "logical_deduction_three_objects": "logic",
    "logical_deduction_five_objects": "logic",
    "logical_deduction_seven_objects": "logic",
    "tracking_shuffled_objects_three_objects": "logic",
    "tracking_shuffled_objects_five_objects": "logic",
    "tracking_shuffled_objects_seven_objects": "logic",
    "web_of_lies": "logic",
    "navigate": "logic",
    "temporal_sequences": "logic",
}
MT_BENCH_LABELS: dict[str, Intent] = {
    "coding": "code",
    "knowledge": "factual",
    "writing": "chat",
    "roleplay": "chat",
    "humanities": "chat",
    "generic": "chat",
}


@dataclass(frozen=True)
class LabelledQuery:
    text: str
    intent: Intent
    source: str
    # Held-out items never train the model; `test_only` sources are all held out.
    held_out: bool


def _held_out(source: str, text: str, share: int = 5) -> bool:
    return zlib.crc32(f"{source}|{text}".encode()) % share == 0


def _jsonl(path: Path) -> Iterator[dict[str, object]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _named(name: str, data_dir: Path) -> list[str]:
    return [item.question for item in load_named(name, data_dir=data_dir)]


def _sources(data_dir: Path) -> Iterator[tuple[str, Intent, list[str]]]:
    """(source, label, texts) for every source."""
    yield "bigbench_arithmetic", "arithmetic", _named("bigbench_arithmetic", data_dir)
    deepmind = data_dir / "deepmind_mathematics_sample" / "mathematics_sample.jsonl"
    yield "deepmind_mathematics", "arithmetic", [str(r["question"]) for r in _jsonl(deepmind)]
    for name in ("gsm8k", "svamp", "mawps", "multiarith"):
        yield name, "math_word", _named(name, data_dir)
    aqua = [json.loads(line) for line in (data_dir / "aqua" / "dev.json").open() if line.strip()]
    yield (
        "aqua",
        "math_word",
        [f"{r['question']}\n" + "\n".join(str(o) for o in r["options"]) for r in aqua],
    )
    for task, label in BBH_LABELS.items():
        yield f"bbh:{task}", label, _named(f"bbh:{task}", data_dir)
    yield "squad", "factual", _named("squad", data_dir)
    mmlu = load_named("mmlu", data_dir=data_dir)
    yield (
        "mmlu",
        "factual",
        [i.question for i in mmlu if i.id.split("-")[1] not in MMLU_MATH | {"formal_logic"}],
    )
    yield (
        "mmlu:formal_logic",
        "logic",
        [i.question for i in mmlu if i.id.split("-")[1] == "formal_logic"],
    )
    yield "commonsenseqa", "factual", _named("commonsenseqa", data_dir)
    yield "strategyqa", "factual", _named("strategyqa", data_dir)
    puzzles = data_dir / "bigbench_logic_puzzles"
    for task_file in sorted(puzzles.rglob("task.json")):
        examples = json.loads(task_file.read_text())["examples"]
        yield (
            f"logic_puzzles:{task_file.parent.name}",
            "logic",
            [str(e["input"]) for e in examples],
        )
    yield "sudoku", "logic", [_sudoku_question(str(r["puzzle"])) for r in _jsonl(
        data_dir / "sudoku" / "sudoku.jsonl"
    )]  # fmt: skip
    yield (
        "game24",
        "logic",
        [
            _game24_question([int(n) for n in r["numbers"]])  # type: ignore[attr-defined]
            for r in _jsonl(data_dir / "game24" / "24_with_solutions.jsonl")
        ],
    )
    clinc = json.loads((data_dir / "clinc150" / "data_full.json").read_text())
    splits = ("train", "val", "test", "oos_train", "oos_val")
    rows = [row for split in splits for row in clinc[split]]
    yield "clinc150:calculator", "arithmetic", [t for t, label in rows if label == "calculator"]
    yield "clinc150", "chat", [t for t, label in rows if label != "calculator"]
    for file in ("question.jsonl", "vicuna_bench_question.jsonl"):
        for category, label in MT_BENCH_LABELS.items():
            texts = [
                str(r["turns"][0])  # type: ignore[index]
                for r in _jsonl(data_dir / "mt_bench" / file)
                if r["category"] == category
            ]
            if texts:
                yield f"mt_bench:{category}", label, texts
    yield "templated_code", "code", _templated_code()


TEST_ONLY = frozenset({"mt_bench:coding"})  # real code questions: measure, never train
# CLINC150 is the only broad source of assistant requests; let it fill out the chat class.
SOURCE_CAPS = {"clinc150": 4000, "templated_code": 3000}


def labelled_queries(
    data_dir: Path | None = None, *, per_source: int = 1200, seed: int = 0
) -> list[LabelledQuery]:
    """At most `per_source` queries from each source (a seeded sample), deduplicated."""
    root = data_dir or default_data_dir()
    seen: set[str] = set()
    out: list[LabelledQuery] = []
    for source, label, texts in _sources(root):
        unique = [t.strip() for t in dict.fromkeys(texts) if t.strip() and t.strip() not in seen]
        cap = SOURCE_CAPS.get(source, per_source)
        if len(unique) > cap:
            unique = random.Random(f"{seed}|{source}").sample(unique, cap)
        for text in unique:
            seen.add(text)
            held = source in TEST_ONLY or _held_out(source, text)
            out.append(LabelledQuery(text, label, source, held))
    return out


def _sudoku_question(puzzle: str) -> str:
    rows = [" ".join(c if c != "0" else "." for c in puzzle[i : i + 9]) for i in range(0, 81, 9)]
    return "Solve this sudoku (. is an empty cell):\n" + "\n".join(rows)


def _game24_question(numbers: list[int]) -> str:
    listed = ", ".join(str(n) for n in numbers)
    return f"Use the numbers {listed} each exactly once with + - * / to make 24."


_CODE_TASKS = (
    "reverses a linked list", "parses a CSV file and sums a column", "checks if a string is a "
    "palindrome", "merges two sorted arrays", "finds the longest common subsequence",
    "implements binary search", "reads a JSON file and prints its keys", "validates an email "
    "address with a regex", "computes the nth Fibonacci number with memoization",
    "removes duplicates from a list while keeping order", "counts word frequencies in a text "
    "file", "implements an LRU cache", "serves a REST endpoint that returns the time",
    "flattens a nested list", "sorts a dictionary by value", "downloads a web page and "
    "extracts its links", "implements quicksort", "detects a cycle in a directed graph",
    "converts a Roman numeral to an integer", "rotates a matrix by 90 degrees",
    "debounces a function", "retries an HTTP request with exponential backoff",
    "connects to a PostgreSQL database and runs a query", "tokenizes an arithmetic expression",
    "implements a trie with insert and search", "finds all permutations of a string",
    "writes unit tests for a stack class", "computes the edit distance of two strings",
    "runs tasks concurrently with a thread pool", "implements Dijkstra's shortest path",
)  # fmt: skip
# Algorithmic problems, crossed with techniques below: the vocabulary of coding exercises.
_PROBLEMS = (
    "find the nth Fibonacci number", "find the majority element in an array",
    "find the kth largest element in an unsorted array", "check whether a binary tree is "
    "balanced", "find the common elements of two arrays", "count the islands in a grid",
    "find the median of two sorted arrays", "compute the factorial of n",
    "find the shortest path in a maze", "check whether parentheses are balanced",
    "generate all subsets of a set", "find the longest increasing subsequence",
    "convert a binary tree to a doubly linked list", "implement a queue with two stacks",
    "find the lowest common ancestor of two nodes", "validate a sudoku board",
    "compute the greatest common divisor", "find all prime numbers below n",
    "serialize and deserialize a binary tree", "find the maximum subarray sum",
)  # fmt: skip
_TECHNIQUES = ("recursion", "dynamic programming", "a hash map", "two pointers", "a stack",
               "binary search", "a heap", "breadth-first search", "depth-first search",
               "bit manipulation", "no extra memory", "O(n) time")  # fmt: skip
_PROBLEM_TEMPLATES = (
    "Write a {lang} program to {problem} using {technique}.",
    "Write a function to {problem} using {technique}.",
    "Implement an algorithm to {problem} with {technique}.",
    "Write a program to {problem}.",
    "Implement a function in {lang} to {problem}.",
    "Given an input, write code that can {problem}, using {technique}.",
)
_LANGUAGES = ("Python", "JavaScript", "TypeScript", "Rust", "Go", "Java", "C++", "C#", "Ruby",
              "Kotlin", "Bash", "SQL")  # fmt: skip
_CODE_TEMPLATES = (
    "Write a {lang} function that {task}.",
    "Implement a {lang} program that {task}.",
    "How do I write code in {lang} that {task}?",
    "Can you show me {lang} code that {task}?",
    "Give me a {lang} snippet that {task}, with comments.",
    "I need a {lang} class that {task}. Please include type hints or annotations.",
    "write {lang} code which {task}",
    "What is the most efficient way in {lang} to write something that {task}?",
)
_CODE_FIXES = (
    "Why does this {lang} code raise an error?\n```\n{snippet}\n```",
    "Fix the bug in this {lang} function:\n```\n{snippet}\n```",
    "Explain what this code does:\n```\n{snippet}\n```",
    "Refactor this {lang} code to be more readable:\n```\n{snippet}\n```",
    "What is the time complexity of this code?\n```\n{snippet}\n```",
)
_SNIPPETS = (
    "def add(a, b):\n    return a - b",
    "for i in range(len(xs)):\n    if xs[i] = target:\n        return i",
    "function sum(arr) {\n  let s = 0;\n  for (const x in arr) s += x;\n  return s;\n}",
    'fn main() {\n    let v = vec![1, 2, 3];\n    let w = v;\n    println!("{:?}", v);\n}',
    "SELECT name, COUNT(*) FROM orders GROUP BY customer_id;",
    "while True:\n    line = f.readline()\n    print(line)",
    "int* p = malloc(10);\np[10] = 1;",
    "public int fact(int n) { return n * fact(n - 1); }",
    "x = [i**2 for i in range(10) if i % 2]\nprint(sum(x) / len(x))",
    "const res = await fetch(url)\nconst data = res.json()\nconsole.log(data.items)",
)


def _templated_code() -> list[str]:
    """Code requests from templates: every template × task × language, plus questions about
    snippets. Templates teach the shape of a code request; the real MT-Bench/Vicuna coding
    questions, never trained on, check that it carries over."""
    requests = [
        template.format(lang=lang, task=task)
        for template in _CODE_TEMPLATES
        for task in _CODE_TASKS
        for lang in _LANGUAGES
    ]
    fixes = [
        template.format(lang=lang, snippet=snippet)
        for template in _CODE_FIXES
        for snippet in _SNIPPETS
        for lang in _LANGUAGES[:6]
    ]
    problems = [
        template.format(lang=lang, problem=problem, technique=technique)
        for template in _PROBLEM_TEMPLATES
        for problem in _PROBLEMS
        for lang, technique in zip(_LANGUAGES, _TECHNIQUES, strict=True)
    ]
    return requests + fixes + problems
