"""Benchmark items: a generic JSONL format plus loaders for the public sets under shared/data.

Every loader returns `BenchItem`s with stable ids (the dataset's own id where it has one,
else "<dataset>-<index>"), a gold `answer` and its `kind`. Multiple-choice questions carry
their options both in `choices` and in the question text, so a model sees them: a generic
record whose question does not list its `choices` gets them appended as "A. option" lines.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from apportion.answers import canonical_number
from apportion.bench.scoring import infer_kind
from apportion.errors import ApportionError, UnknownNameError, UsageError
from apportion.strategies.prompts import OPTION_LETTERS, with_options
from apportion.traces import ItemResult
from apportion.types import AnswerKind

__all__ = [
    "BBH_TASKS",
    "DATA_DIR_ENV",
    "BenchItem",
    "dataset_names",
    "default_data_dir",
    "load_jsonl",
    "load_named",
    "write_jsonl",
]

DATA_DIR_ENV = "APPORTION_DATA_DIR"
_KINDS: tuple[str, ...] = get_args(AnswerKind)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

BBH_TASKS: tuple[str, ...] = (
    "boolean_expressions",
    "causal_judgement",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "multistep_arithmetic_two",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
    "word_sorting",
)


@dataclass(frozen=True)
class BenchItem:
    id: str
    question: str
    answer: str
    kind: AnswerKind
    dataset: str
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """The generic JSONL record (what `load_jsonl` reads back)."""
        record: dict[str, object] = {
            "id": self.id,
            "dataset": self.dataset,
            "question": self.question,
            "answer": self.answer,
            "kind": self.kind,
        }
        if self.choices:
            record["choices"] = list(self.choices)
        if self.aliases:
            record["aliases"] = list(self.aliases)
        return record


# ---------------------------------------------------------------------------
# Generic JSONL
# ---------------------------------------------------------------------------


def _answer_str(value: object) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return canonical_number(repr(value))
    if isinstance(value, str):
        return value
    return None


def _str_list(value: object, field: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise UsageError(f"{where}: `{field}` must be a list of strings")
    out = []
    for v in value:
        s = _answer_str(v)
        if s is None:
            raise UsageError(f"{where}: `{field}` must be a list of strings")
        out.append(s)
    return tuple(out)


def _item_from_record(record: object, *, where: str, default_id: str, dataset: str) -> BenchItem:
    if not isinstance(record, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(record).__name__}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise UsageError(f"{where}: missing or empty `question`")
    if "answer" not in record:
        raise UsageError(f"{where}: missing `answer`")
    answer = _answer_str(record["answer"])
    if answer is None or not answer.strip():
        raise UsageError(f"{where}: `answer` must be a non-empty string or number")
    choices = _str_list(record.get("choices"), "choices", where)
    if len(choices) > len(OPTION_LETTERS):
        raise UsageError(f"{where}: {len(choices)} choices; at most {len(OPTION_LETTERS)} (A-Z)")
    aliases = _str_list(record.get("aliases"), "aliases", where)
    raw_id = record.get("id", default_id)
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or str(raw_id) == "":
        raise UsageError(f"{where}: `id` must be a non-empty string or integer")
    kind_value = record.get("kind")
    kind: AnswerKind
    if kind_value is None:
        kind = infer_kind(answer, choices)
    elif kind_value in _KINDS:
        kind = kind_value
    else:
        raise UsageError(
            f"{where}: unknown kind {kind_value!r}", f"valid kinds: {', '.join(_KINDS)}"
        )
    ds = record.get("dataset")
    return BenchItem(
        id=str(raw_id),
        # The model is asked for an option's letter, so it is shown the lettered options.
        question=with_options(question, choices),
        answer=answer,
        kind=kind,
        dataset=dataset if not isinstance(ds, str) or not ds else ds,
        choices=choices,
        aliases=aliases,
    )


def load_jsonl(path: Path, *, dataset: str | None = None) -> list[BenchItem]:
    """Read generic records, one JSON object a line: `question`, `answer` and optionally `id`
    (default "<stem>-<line no>"), `kind` (else inferred), `choices`, `aliases`, `dataset`.
    Options in `choices` that the question does not list are appended to it, lettered A, B, ...

    `dataset`, when given, overrides the records' own; otherwise records without one get the
    file's stem. Blank lines are skipped; a malformed line raises UsageError naming file:line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    items: list[BenchItem] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: malformed JSON ({exc.msg})") from exc
        item = _item_from_record(
            record, where=where, default_id=f"{path.stem}-{lineno}", dataset=path.stem
        )
        if dataset is not None:
            item = _replace_dataset(item, dataset)
        if item.id in seen:
            raise UsageError(f"{where}: duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen[item.id] = lineno
        items.append(item)
    return items


def _replace_dataset(item: BenchItem, dataset: str) -> BenchItem:
    return BenchItem(
        id=item.id,
        question=item.question,
        answer=item.answer,
        kind=item.kind,
        dataset=dataset,
        choices=item.choices,
        aliases=item.aliases,
    )


def write_jsonl(items: Iterable[BenchItem], path: Path) -> int:
    """Write items as generic JSONL (atomically); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


# ---------------------------------------------------------------------------
# Where the data lives
# ---------------------------------------------------------------------------


def _search_upward(start: Path) -> Path | None:
    for base in (start, *start.parents):
        candidate = base / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def default_data_dir() -> Path:
    """$APPORTION_DATA_DIR, else the first `shared/data` found walking up from the current
    directory and then from this file (the repo at /work/main finds /work/shared/data)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise UsageError(f"{DATA_DIR_ENV}={env} is not a directory")
        return p
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parent):
        found = _search_upward(start)
        if found is not None:
            return found
    raise UsageError(
        "benchmark data directory not found (no shared/data above the current directory)",
        f"set {DATA_DIR_ENV} to the folder holding gsm8k/, svamp/, mmlu/, ...",
    )


# ---------------------------------------------------------------------------
# Named datasets
# ---------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise UsageError(
            f"dataset file {path} is missing", f"check {DATA_DIR_ENV} or the data folder"
        ) from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: malformed JSON ({exc.msg})") from exc


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(0-based record index, record) for each non-blank line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UsageError(
            f"dataset file {path} is missing", f"check {DATA_DIR_ENV} or the data folder"
        ) from exc
    index = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield index, json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from exc
        index += 1


def _number(value: object, where: str) -> str:
    s = _answer_str(value) if not isinstance(value, str) else canonical_number(value)
    if s is None:
        raise UsageError(f"{where}: gold answer {value!r} is not a number")
    return s


def _with_options(question: str, options: Iterable[str]) -> str:
    lines = [f"{_LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
    return question.rstrip() + "\n" + "\n".join(lines)


def _gsm8k(root: Path) -> list[BenchItem]:
    path = root / "gsm8k" / "dev.jsonl"
    items = []
    for i, rec in _iter_jsonl(path):
        solution = rec["answer"]
        if "####" not in solution:
            raise UsageError(f"{path}: record {i} has no '#### ' final answer")
        gold = _number(solution.rsplit("####", 1)[1].strip(), f"{path}: record {i}")
        items.append(BenchItem(f"gsm8k-{i}", rec["question"].strip(), gold, "number", "gsm8k"))
    return items


def _svamp(root: Path) -> list[BenchItem]:
    path = root / "svamp" / "SVAMP.json"
    items = []
    for rec in _read_json(path):
        body = " ".join(rec["Body"].split())
        if body and body[-1] not in ".?!":
            body += "."
        question = f"{body} {' '.join(rec['Question'].split())}".strip()
        gold = _number(rec["Answer"], f"{path}: {rec['ID']}")
        items.append(BenchItem(str(rec["ID"]), question, gold, "number", "svamp"))
    return items


_MAWPS_SUBSETS = ("addsub", "multiarith", "singleeq", "singleop")


def _mawps(root: Path) -> list[BenchItem]:
    items = []
    for subset in _MAWPS_SUBSETS:
        path = root / "mawps" / f"mawps{subset}.jsonl"
        for i, rec in _iter_jsonl(path):
            gold = _number(rec["target"], f"{path}: record {i}")
            question = " ".join(rec["input"].split())
            items.append(BenchItem(f"mawps-{subset}-{i}", question, gold, "number", "mawps"))
    return items


def _multiarith(root: Path) -> list[BenchItem]:
    path = root / "multiarith" / "MultiArith.json"
    items = []
    for rec in _read_json(path):
        idx = rec["iIndex"]
        gold = _number(rec["lSolutions"][0], f"{path}: iIndex {idx}")
        question = " ".join(rec["sQuestion"].split())
        items.append(BenchItem(f"multiarith-{idx}", question, gold, "number", "multiarith"))
    return items


def _squad(root: Path) -> list[BenchItem]:
    path = root / "squad_v1.1_dev" / "questions.jsonl"
    items = []
    for i, rec in _iter_jsonl(path):
        answers = [a for a in rec["answers"] if isinstance(a, str) and a.strip()]
        if not answers:
            raise UsageError(f"{path}: record {i} has no answers")
        items.append(
            BenchItem(
                id=str(rec["id"]),
                question=rec["question"].strip(),
                answer=answers[0],
                kind="text",
                dataset="squad",
                aliases=tuple(answers[1:]),
            )
        )
    return items


def _mmlu(root: Path) -> list[BenchItem]:
    folder = root / "mmlu" / "test"
    files = sorted(folder.glob("*_test.csv"))
    if not files:
        raise UsageError(f"no MMLU test files in {folder}", f"check {DATA_DIR_ENV}")
    items = []
    for path in files:
        subject = path.name.removesuffix("_test.csv")
        with path.open(encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                options = tuple(row[f"choice{j}"] for j in range(4))
                try:
                    gold = _LETTERS[int(row["answer"])]
                except (ValueError, IndexError) as exc:
                    raise UsageError(f"{path}: row {i + 1} has answer {row['answer']!r}") from exc
                items.append(
                    BenchItem(
                        id=f"mmlu-{subject}-{i}",
                        question=_with_options(row["question"], options),
                        answer=gold,
                        kind="choice",
                        dataset="mmlu",
                        choices=options,
                    )
                )
    return items


def _commonsenseqa(root: Path) -> list[BenchItem]:
    path = root / "commonsenseqa" / "dev_rand_split.jsonl"
    items = []
    for _, rec in _iter_jsonl(path):
        q = rec["question"]
        opts = sorted(q["choices"], key=lambda c: c["label"])
        labels = [c["label"] for c in opts]
        if labels != list(_LETTERS[: len(labels)]):
            raise UsageError(f"{path}: {rec['id']} has option labels {labels}")
        options = tuple(c["text"] for c in opts)
        items.append(
            BenchItem(
                id=str(rec["id"]),
                question=_with_options(q["stem"], options),
                answer=rec["answerKey"],
                kind="choice",
                dataset="commonsenseqa",
                choices=options,
            )
        )
    return items


_AQUA_OPTION = re.compile(r"^\s*([A-E])\s*\)\s*(.*)$", re.DOTALL)


def _aqua(root: Path) -> list[BenchItem]:
    """AQuA-RAT's dev split: algebra word problems, five lettered options ("A)32400")."""
    path = root / "aqua" / "dev.json"
    items = []
    for i, rec in _iter_jsonl(path):
        parsed = [_AQUA_OPTION.match(str(o)) for o in rec["options"]]
        letters = [m.group(1) if m else None for m in parsed]
        if letters != list(_LETTERS[: len(letters)]) or rec["correct"] not in letters:
            raise UsageError(f"{path}: item {i} has options {rec['options']!r}")
        options = tuple(m.group(2).strip() for m in parsed if m)
        items.append(
            BenchItem(
                id=f"aqua-{i}",
                question=_with_options(rec["question"].strip(), options),
                answer=rec["correct"],
                kind="choice",
                dataset="aqua",
                choices=options,
            )
        )
    return items


def _strategyqa(root: Path) -> list[BenchItem]:
    path = root / "strategyqa" / "task.json"
    items = []
    for i, ex in enumerate(_read_json(path)["examples"]):
        scores = ex["target_scores"]
        gold = "yes" if scores.get("Yes") == 1 else "no"
        items.append(
            BenchItem(f"strategyqa-{i}", ex["input"].strip(), gold, "boolean", "strategyqa")
        )
    return items


_BBH_OPTION_RE = re.compile(r"^\(([A-Z])\)\s?(.*)$", re.MULTILINE)
_BBH_LETTER_RE = re.compile(r"\(([A-Z])\)")


def _bbh_item(task: str, i: int, ex: dict[str, Any]) -> BenchItem:
    question: str = ex["input"]
    target = str(ex["target"]).strip()
    options = {m.group(1): m.group(2).strip() for m in _BBH_OPTION_RE.finditer(question)}
    letters = sorted(options)
    choices = tuple(options[k] for k in letters)
    kind: AnswerKind
    m = _BBH_LETTER_RE.fullmatch(target)
    if m and letters == list(_LETTERS[: len(letters)]) and m.group(1) in options:
        answer, kind = m.group(1), "choice"
    else:
        # A few upstream targets are option text rather than a letter (and their options are
        # garbled): score those as text; otherwise booleans, numbers or free text.
        answer, kind, choices = target, infer_kind(target), ()
        if kind == "choice":  # "(X)" with no matching option list
            kind = "text"
    return BenchItem(f"bbh-{task}-{i}", question, answer, kind, f"bbh:{task}", choices)


def _bbh_task(root: Path, task: str) -> list[BenchItem]:
    path = root / "bbh" / "tasks" / f"{task}.json"
    return [_bbh_item(task, i, ex) for i, ex in enumerate(_read_json(path)["examples"])]


def _bbh_all(root: Path) -> list[BenchItem]:
    return [item for task in BBH_TASKS for item in _bbh_task(root, task)]


def _bigbench_arithmetic(root: Path) -> list[BenchItem]:
    base = root / "bigbench_arithmetic"
    paths = sorted((base / "arithmetic").glob("*/task.json"))
    paths.append(base / "chinese_remainder_theorem" / "task.json")
    items = []
    for path in paths:
        task = path.parent.name
        for i, ex in enumerate(_read_json(path)["examples"]):
            target = ex["target"]
            if isinstance(target, list):
                target = target[0]
            gold = _number(target, f"{path}: example {i}")
            items.append(
                BenchItem(
                    f"bigbench_arithmetic-{task}-{i}",
                    ex["input"].strip(),
                    gold,
                    "number",
                    "bigbench_arithmetic",
                )
            )
    return items


def _deepmind_mathematics(root: Path) -> list[BenchItem]:
    """The DeepMind mathematics sample (algebra, arithmetic, calculus, number theory,
    comparison, measurement, probability; interpolate and extrapolate splits), the items whose
    answer is a number ("-5", "2/7") or true/false. The 1,028 whose answer is an expression or a
    list ("2*x**2 + 3", "2, 3, 5, 7") are left out: they would be scored as exact text."""
    path = root / "deepmind_mathematics_sample" / "mathematics_sample.jsonl"
    items = []
    for i, rec in _iter_jsonl(path):
        answer = str(rec["answer"]).strip()
        kind = infer_kind(answer)
        if kind not in ("number", "boolean"):
            continue
        if kind == "number":
            answer = _number(answer, f"{path}: record {i}")
        items.append(
            BenchItem(
                f"deepmind_mathematics-{rec['id']}",
                str(rec["question"]).strip(),
                answer,
                kind,
                "deepmind_mathematics",
            )
        )
    return items


def _logic_grid_puzzle(root: Path) -> list[BenchItem]:
    """BIG-bench's logic_grid_puzzle: Zebra-style puzzles of 2 to 5 houses, each asking for a
    house's number (gold: the option scored 1). Its sibling logical_deduction is left out: BBH's
    logical_deduction tasks are drawn from it."""
    path = root / "bigbench_logic_puzzles" / "logic_grid_puzzle" / "task.json"
    items = []
    for i, ex in enumerate(_read_json(path)["examples"]):
        gold = [option for option, right in ex["target_scores"].items() if right == 1]
        if len(gold) != 1:
            raise UsageError(f"{path}: example {i} has {len(gold)} right options")
        answer = _number(gold[0], f"{path}: example {i}")
        items.append(
            BenchItem(
                f"logic_grid_puzzle-{i}", ex["input"].strip(), answer, "number", "logic_grid_puzzle"
            )
        )
    return items


_LOADERS: dict[str, Callable[[Path], list[BenchItem]]] = {
    "gsm8k": _gsm8k,
    "svamp": _svamp,
    "mawps": _mawps,
    "multiarith": _multiarith,
    "aqua": _aqua,
    "squad": _squad,
    "mmlu": _mmlu,
    "commonsenseqa": _commonsenseqa,
    "strategyqa": _strategyqa,
    "bbh": _bbh_all,
    "bigbench_arithmetic": _bigbench_arithmetic,
    "deepmind_mathematics": _deepmind_mathematics,
    "logic_grid_puzzle": _logic_grid_puzzle,
}


def dataset_names() -> list[str]:
    """Every name `load_named` accepts ("bbh" is all 27 BBH tasks; "bbh:<task>" is one)."""
    return [*_LOADERS, *(f"bbh:{t}" for t in BBH_TASKS)]


def questions_by_id(name: str, *, data_dir: Path | None = None) -> dict[str, str]:
    """A named dataset's questions by item id; empty where the dataset cannot be read (what
    `seen_by_experts` is given to match an expert's sources by question text)."""
    try:
        return {item.id: item.question for item in load_named(name, data_dir=data_dir)}
    except ApportionError:
        return {}


def load_named(name: str, *, data_dir: Path | None = None) -> list[BenchItem]:
    """Load a named public benchmark from `data_dir` (default: `default_data_dir()`)."""
    if name.startswith("bbh:"):
        task = name.split(":", 1)[1]
        if task not in BBH_TASKS:
            raise UnknownNameError("bbh task", task, BBH_TASKS)
        loader: Callable[[Path], list[BenchItem]] = functools.partial(_bbh_task, task=task)
    elif name in _LOADERS:
        loader = _LOADERS[name]
    else:
        raise UnknownNameError("dataset", name, dataset_names())
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if not root.is_dir():
        raise UsageError(f"data directory {root} does not exist", f"set {DATA_DIR_ENV}")
    try:
        return loader(root)
    except (KeyError, TypeError, IndexError) as exc:
        raise UsageError(
            f"dataset {name!r} under {root} has an unexpected layout: {exc!r}"
        ) from exc


# ---------------------------------------------------------------------------
# Archived traces
# ---------------------------------------------------------------------------

# What an archived trace (benchmarks/traces) leaves out: the benchmark's own text, which stays
# in the shared data folder and is read back from there by item id.
ARCHIVE_DROPS = ("question", "gold")


def restore_questions(
    results: Iterable[ItemResult], *, data_dir: Path | None = None
) -> list[ItemResult]:
    """Rows with their question and gold answer read back from their named dataset (rows that
    still carry them are kept as they are). Archived traces hold neither: the benchmark data
    is not copied into the repository."""
    from dataclasses import replace

    rows = list(results)
    by_set: dict[str, dict[str, BenchItem]] = {}
    out = []
    for row in rows:
        if row.question:
            out.append(row)
            continue
        if row.dataset not in by_set:
            try:
                by_set[row.dataset] = {i.id: i for i in load_named(row.dataset, data_dir=data_dir)}
            except UnknownNameError as e:
                raise UsageError(
                    f"traced rows of {row.dataset!r} carry no question, and it is not a named "
                    "dataset to read them from", e.hint,
                ) from e  # fmt: skip
        item = by_set[row.dataset].get(row.item_id)
        if item is None:
            raise UsageError(
                f"item {row.item_id!r} is not in dataset {row.dataset!r} of the data folder",
                "the traces were made with another version of the data",
            )
        out.append(replace(row, question=item.question, gold=item.answer))
    return out


def archive_row(row: ItemResult) -> dict[str, Any]:
    """A row as an archive keeps it: without the benchmark's text (ARCHIVE_DROPS)."""
    return {k: v for k, v in row.to_json().items() if k not in ARCHIVE_DROPS}
