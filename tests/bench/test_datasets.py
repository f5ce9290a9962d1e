"""Generic JSONL items and the named loaders over shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apportion.bench import datasets
from apportion.bench.datasets import (
    BBH_TASKS,
    BenchItem,
    dataset_names,
    default_data_dir,
    load_jsonl,
    load_named,
    write_jsonl,
)
from apportion.bench.scoring import score
from apportion.errors import UnknownNameError, UsageError
from shared_data import shared_data_dir

# ---------------------------------------------------------------------------
# generic JSONL
# ---------------------------------------------------------------------------


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_fields_defaults_and_inference(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "mine.jsonl",
        [
            json.dumps({"question": "2+2?", "answer": "4"}),
            "",
            "   ",
            json.dumps(
                {
                    "id": "q7",
                    "question": "Capital of France?",
                    "answer": "Paris",
                    "aliases": ["paris, france"],
                }
            ),
            json.dumps({"question": "Pick", "answer": "B", "choices": ["x", "y"]}),
            json.dumps({"question": "Sky blue?", "answer": "Yes"}),
            json.dumps({"question": "n?", "answer": 51.0}),
            json.dumps({"id": 12, "question": "t?", "answer": "72", "kind": "text"}),
            json.dumps({"question": "b?", "answer": True}),
        ],
    )
    items = load_jsonl(path)
    assert [i.id for i in items] == ["mine-1", "q7", "mine-5", "mine-6", "mine-7", "12", "mine-9"]
    assert [i.kind for i in items] == [
        "number",
        "text",
        "choice",
        "boolean",
        "number",
        "text",
        "boolean",
    ]
    assert items[0] == BenchItem("mine-1", "2+2?", "4", "number", "mine")
    assert items[1].aliases == ("paris, france",)
    assert items[2].choices == ("x", "y")
    assert items[4].answer == "51"  # JSON numbers become canonical strings
    assert items[6].answer == "yes"
    assert all(i.dataset == "mine" for i in items)


def test_load_jsonl_dataset_override_and_record_dataset(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "f.jsonl",
        [
            json.dumps({"question": "q", "answer": "1", "dataset": "gsm8k"}),
            json.dumps({"question": "q", "answer": "2"}),
        ],
    )
    assert [i.dataset for i in load_jsonl(path)] == ["gsm8k", "f"]
    assert [i.dataset for i in load_jsonl(path, dataset="custom")] == ["custom", "custom"]


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        ('{"question": "q", "answer": ', "malformed JSON"),
        ('["question", "answer"]', "expected a JSON object"),
        ('{"answer": "1"}', "question"),
        ('{"question": "  ", "answer": "1"}', "question"),
        ('{"question": "q"}', "answer"),
        ('{"question": "q", "answer": ""}', "answer"),
        ('{"question": "q", "answer": "1", "kind": "essay"}', "essay"),
        ('{"question": "q", "answer": "1", "choices": "abc"}', "choices"),
        ('{"question": "q", "answer": "1", "aliases": [{"x": 1}]}', "aliases"),
        ('{"question": "q", "answer": "1", "id": ""}', "id"),
    ],
)
def test_load_jsonl_malformed_line_names_file_and_line(
    tmp_path: Path, bad_line: str, needle: str
) -> None:
    path = _write(
        tmp_path / "broken.jsonl",
        [json.dumps({"question": "ok", "answer": "1"}), "", bad_line],
    )
    with pytest.raises(UsageError) as info:
        load_jsonl(path)
    message = str(info.value)
    assert f"{path}:3" in message
    assert needle in message


def test_load_jsonl_duplicate_id(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "dup.jsonl",
        [
            json.dumps({"id": "a", "question": "q", "answer": "1"}),
            json.dumps({"id": "a", "question": "q2", "answer": "2"}),
        ],
    )
    with pytest.raises(UsageError, match=r"dup\.jsonl:2: duplicate id 'a'"):
        load_jsonl(path)


def test_load_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        load_jsonl(tmp_path / "absent.jsonl")


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    items = [
        BenchItem("a", "2+2?", "4", "number", "toy"),
        BenchItem("b", "Pick\nA. x\nB. y", "B", "choice", "toy", choices=("x", "y")),
        BenchItem("c", "Who?", "Denver Broncos", "text", "toy", aliases=("Broncos",)),
        BenchItem("d", "Ünïcode?", "yes", "boolean", "toy"),
    ]
    out = tmp_path / "sub" / "toy.jsonl"
    assert write_jsonl(items, out) == 4
    assert load_jsonl(out) == items
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first == {
        "id": "a",
        "dataset": "toy",
        "question": "2+2?",
        "answer": "4",
        "kind": "number",
    }
    assert not list(out.parent.glob("*.tmp"))


def test_to_json_lists() -> None:
    rec = BenchItem("b", "q", "B", "choice", "toy", choices=("x", "y")).to_json()
    assert rec["choices"] == ["x", "y"]
    assert "aliases" not in rec


# ---------------------------------------------------------------------------
# names and the data directory (no data needed)
# ---------------------------------------------------------------------------


def test_dataset_names() -> None:
    names = dataset_names()
    for n in (
        "gsm8k",
        "svamp",
        "mawps",
        "multiarith",
        "squad",
        "mmlu",
        "commonsenseqa",
        "strategyqa",
        "bbh",
        "bigbench_arithmetic",
        "deepmind_mathematics",
        "logic_grid_puzzle",
        "bbh:word_sorting",
    ):
        assert n in names
    assert len(BBH_TASKS) == 27
    assert len(names) == len(set(names))


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError) as info:
        load_named("gsm9k", data_dir=tmp_path)
    assert info.value.name == "gsm9k"
    assert "gsm8k" in info.value.valid
    assert "gsm8k" in str(info.value)


def test_unknown_bbh_task_lists_tasks(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError) as info:
        load_named("bbh:nope", data_dir=tmp_path)
    assert info.value.valid == list(BBH_TASKS)
    assert "word_sorting" in str(info.value)


def test_missing_data_dir_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_named("gsm8k", data_dir=tmp_path / "nowhere")
    with pytest.raises(UsageError, match="missing"):
        load_named("gsm8k", data_dir=tmp_path)


def test_default_data_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPORTION_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setenv("APPORTION_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="APPORTION_DATA_DIR"):
        default_data_dir()


def test_default_data_dir_searches_upward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPORTION_DATA_DIR", raising=False)
    data = tmp_path / "shared" / "data"
    data.mkdir(parents=True)
    repo = tmp_path / "main" / "src" / "deep"
    repo.mkdir(parents=True)
    monkeypatch.chdir(repo)
    assert default_data_dir() == data.resolve()


def test_default_data_dir_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPORTION_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "__file__", str(tmp_path / "pkg" / "datasets.py"))
    with pytest.raises(UsageError) as info:
        default_data_dir()
    assert "APPORTION_DATA_DIR" in str(info.value)


# ---------------------------------------------------------------------------
# named loaders on the real shared data
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return shared_data_dir()


def _need(root: Path, folder: str) -> None:
    if not (root / folder).is_dir():
        pytest.skip(f"{root / folder} is absent; set APPORTION_DATA_DIR to a full shared/data")


_cache: dict[str, list[BenchItem]] = {}


def _load(name: str, root: Path, folder: str) -> list[BenchItem]:
    _need(root, folder)
    if name not in _cache:
        _cache[name] = load_named(name, data_dir=root)
    return _cache[name]


# name, folder, item count (from each folder's README), kind
NAMED = [
    ("gsm8k", "gsm8k", 658, "number"),
    ("svamp", "svamp", 1000, "number"),
    ("mawps", "mawps", 2065, "number"),
    ("multiarith", "multiarith", 600, "number"),
    ("aqua", "aqua", 254, "choice"),
    ("squad", "squad_v1.1_dev", 10565, "text"),
    ("mmlu", "mmlu", 14042, "choice"),
    ("commonsenseqa", "commonsenseqa", 1221, "choice"),
    ("strategyqa", "strategyqa", 2290, "boolean"),
    ("bbh", "bbh", 6511, None),
    ("bigbench_arithmetic", "bigbench_arithmetic", 15523, "number"),
    # 3,550 in the sample, less the 1,028 whose answer is an expression or a list
    ("deepmind_mathematics", "deepmind_mathematics_sample", 2522, None),
    ("logic_grid_puzzle", "bigbench_logic_puzzles", 1000, "number"),
]


@pytest.mark.parametrize(("name", "folder", "count", "kind"), NAMED)
def test_named_loader_shape(
    data_dir: Path, name: str, folder: str, count: int, kind: str | None
) -> None:
    items = _load(name, data_dir, folder)
    assert len(items) == count
    ids = [i.id for i in items]
    assert len(set(ids)) == len(ids), "item ids must be unique"
    for item in items:
        assert item.question.strip() and item.answer.strip()
        assert item.kind in ("number", "text", "choice", "boolean")
        if kind is not None:
            assert item.kind == kind
        if item.kind == "choice":
            assert item.choices, item.id
            assert "ABCDEFGHIJKLMNOPQRSTUVWXYZ".index(item.answer) < len(item.choices)
        # every gold answer scores as correct against itself
        assert score(
            item.answer, item.answer, kind=item.kind, aliases=item.aliases, choices=item.choices
        ).correct, item.id
    if name != "bbh":
        assert {i.dataset for i in items} == {name}
    if name == "deepmind_mathematics":
        assert {i.kind for i in items} == {"number", "boolean"}


@pytest.mark.parametrize("name", ["gsm8k", "mmlu", "bbh:date_understanding"])
def test_named_loader_ids_are_stable(data_dir: Path, name: str) -> None:
    folder = name.split(":")[0]
    _need(data_dir, folder)
    first = load_named(name, data_dir=data_dir)
    second = load_named(name, data_dir=data_dir)
    assert [i.id for i in first] == [i.id for i in second]
    assert first == second


def test_gsm8k_first_item(data_dir: Path) -> None:
    items = _load("gsm8k", data_dir, "gsm8k")
    first = items[0]
    assert first.id == "gsm8k-0"
    assert first.question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first.answer == "18"
    assert "####" not in first.question
    # thousands separators in the "#### 2,125" style are removed
    assert "2125" in {i.answer for i in items}
    assert all("," not in i.answer for i in items)


def test_svamp_first_item(data_dir: Path) -> None:
    first = _load("svamp", data_dir, "svamp")[0]
    assert first.id == "chal-1"
    assert first.question == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack. "
        "How much do you have to pay to buy each pack?"
    )
    assert first.answer == "51"


def test_mawps_first_items(data_dir: Path) -> None:
    items = _load("mawps", data_dir, "mawps")
    assert items[0].id == "mawps-addsub-0"
    assert items[0].question.startswith("Joan found 70 seashells on the beach")
    assert items[0].answer == "43"
    by_id = {i.id: i for i in items}
    assert by_id["mawps-multiarith-0"].answer == "39"
    assert {i.id.split("-")[1] for i in items} == {"addsub", "multiarith", "singleeq", "singleop"}
    assert "3.33333" in {i.answer for i in items}  # decimal gold kept as written


def test_multiarith_first_item(data_dir: Path) -> None:
    first = _load("multiarith", data_dir, "multiarith")[0]
    assert first.id == "multiarith-0"
    assert first.question.startswith("For Halloween Debby and her sister")
    assert first.question == first.question.strip()
    assert first.answer == "39"


def test_squad_first_items(data_dir: Path) -> None:
    items = _load("squad", data_dir, "squad_v1.1_dev")
    first = items[0]
    assert first.id == "56be4db0acb8001400a502ec"
    assert first.question == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first.answer == "Denver Broncos"
    assert first.aliases == ()
    third = items[2]
    assert third.answer == "Levi's Stadium"
    assert third.aliases == (
        "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California",
        "Santa Clara, California",
    )
    assert score(
        "Santa Clara, California", third.answer, kind="text", aliases=third.aliases
    ).correct


def test_mmlu_first_item(data_dir: Path) -> None:
    items = _load("mmlu", data_dir, "mmlu")
    first = items[0]
    assert first.id == "mmlu-abstract_algebra-0"
    assert first.choices == ("0", "4", "2", "6")
    assert first.answer == "B"
    assert first.question == (
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q."
        "\nA. 0\nB. 4\nC. 2\nD. 6"
    )
    assert all(len(i.choices) == 4 for i in items)
    assert {i.answer for i in items} == {"A", "B", "C", "D"}
    assert len({i.id.rsplit("-", 1)[0] for i in items}) == 57


def test_commonsenseqa_first_item(data_dir: Path) -> None:
    first = _load("commonsenseqa", data_dir, "commonsenseqa")[0]
    assert first.id == "1afa02df02c908a558b4036e80242fac"
    assert first.answer == "A"
    assert first.choices == ("bank", "library", "department store", "mall", "new york")
    assert first.question.splitlines() == [
        "A revolving door is convenient for two direction travel, but it also serves as a "
        "security measure at a what?",
        "A. bank",
        "B. library",
        "C. department store",
        "D. mall",
        "E. new york",
    ]


def test_strategyqa_first_items(data_dir: Path) -> None:
    items = _load("strategyqa", data_dir, "strategyqa")
    assert items[0].id == "strategyqa-0"
    assert items[0].question == "Is it common to see frost during some college commencements?"
    assert items[0].answer == "yes"
    assert items[1].answer == "no"
    answers = [i.answer for i in items]
    assert answers.count("yes") == 1071 and answers.count("no") == 1219


def test_bbh_kinds_per_task(data_dir: Path) -> None:
    _need(data_dir, "bbh")
    booleans = load_named("bbh:boolean_expressions", data_dir=data_dir)
    assert len(booleans) == 250
    assert booleans[0].id == "bbh-boolean_expressions-0"
    assert booleans[0].dataset == "bbh:boolean_expressions"
    assert booleans[0].question == "not ( True ) and ( True ) is"
    assert booleans[0].answer == "False" and booleans[0].kind == "boolean"

    arithmetic = load_named("bbh:multistep_arithmetic_two", data_dir=data_dir)
    assert arithmetic[0].kind == "number"
    assert arithmetic[0].question == "((-1 + 2 + 9 * 5) - (-2 + -4 + -4 * -7)) ="
    assert arithmetic[0].answer == "24"

    dates = load_named("bbh:date_understanding", data_dir=data_dir)
    assert dates[0].kind == "choice"
    assert dates[0].answer == "B"
    assert dates[0].choices == (
        "12/11/1937",
        "12/25/1937",
        "01/04/1938",
        "12/04/1937",
        "12/25/2006",
        "07/25/1937",
    )
    assert "(B) 12/25/1937" in dates[0].question

    dyck = load_named("bbh:dyck_languages", data_dir=data_dir)
    assert all(i.kind == "text" for i in dyck)
    assert dyck[0].answer == "] ]"

    sports = load_named("bbh:sports_understanding", data_dir=data_dir)
    assert all(i.kind == "boolean" for i in sports)


def test_bbh_option_text_targets_become_text(data_dir: Path) -> None:
    _need(data_dir, "bbh")
    movies = load_named("bbh:movie_recommendation", data_dir=data_dir)
    odd = [i for i in movies if i.kind != "choice"]
    assert [(i.answer, i.kind, i.choices) for i in odd] == [("Monsters, Inc", "text", ())]


def test_bbh_all_matches_tasks(data_dir: Path) -> None:
    items = _load("bbh", data_dir, "bbh")
    assert {i.dataset for i in items} == {f"bbh:{t}" for t in BBH_TASKS}
    kinds: dict[str, int] = {}
    for i in items:
        kinds[i.kind] = kinds.get(i.kind, 0) + 1
    assert kinds == {"boolean": 1187, "choice": 4071, "number": 500, "text": 753}


def test_bigbench_arithmetic_first_items(data_dir: Path) -> None:
    items = _load("bigbench_arithmetic", data_dir, "bigbench_arithmetic")
    first = items[0]
    assert first.id == "bigbench_arithmetic-1_digit_addition-0"
    assert first.question == "What is 0 plus 0?"
    assert first.answer == "0"
    by_id = {i.id: i for i in items}
    crt = by_id["bigbench_arithmetic-chinese_remainder_theorem-0"]
    assert crt.answer == "27043"
    assert (
        sum(i.id.startswith("bigbench_arithmetic-5_digit_multiplication-") for i in items) == 1000
    )


def test_deepmind_mathematics_keeps_numbers_and_truths(data_dir: Path) -> None:
    items = _load("deepmind_mathematics", data_dir, "deepmind_mathematics_sample")
    first = items[0]
    assert first.id == "deepmind_mathematics-interpolate/algebra__linear_1d/0"
    assert first.question == "Solve -6*y + 1401 = 244*y - 1099 for y."
    assert (first.answer, first.kind) == ("10", "number")
    truths = [i for i in items if i.kind == "boolean"]
    assert truths and {i.answer for i in truths} == {"True", "False"}
    assert score("yes", truths[0].answer, kind="boolean").correct == (truths[0].answer == "True")
    # an expression answer is not kept: it could only be scored as exact text
    assert not any(
        i.id.startswith("deepmind_mathematics-interpolate/polynomials__expand/") for i in items
    )


def test_logic_grid_puzzle_gold_is_the_house_scored_right(data_dir: Path) -> None:
    items = _load("logic_grid_puzzle", data_dir, "bigbench_logic_puzzles")
    first = items[0]
    assert first.id == "logic_grid_puzzle-0"
    assert first.question.startswith("There are 5 houses in a row")
    assert first.question.endswith(
        "What is the number of the house where the person who had stew lives?"
    )
    assert first.answer == "4"


# ---------------------------------------------------------------------------
# multiple choice: the model is shown the options it is asked to pick from
# ---------------------------------------------------------------------------


def test_generic_choices_are_listed_in_the_question(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "arc.jsonl",
        [
            json.dumps(
                {
                    "id": "bare",
                    "question": "Which gas do plants take in?",
                    "choices": ["oxygen", "carbon dioxide", "helium", "neon"],
                    "answer": "B",
                }
            ),
            json.dumps(
                {
                    "id": "listed",
                    "question": "Pick one.\n(A) red\n(B) blue",
                    "choices": ["red", "blue"],
                    "answer": "A",
                }
            ),
            json.dumps({"id": "none", "question": "2+2?", "answer": "4"}),
        ],
    )
    bare, listed, plain = load_jsonl(path)
    assert bare.question == (
        "Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\nC. helium\nD. neon"
    )
    assert bare.kind == "choice" and bare.choices == ("oxygen", "carbon dioxide", "helium", "neon")
    assert listed.question == "Pick one.\n(A) red\n(B) blue"  # already shown: left alone
    assert plain.question == "2+2?"
    # written out and read back, the options are not listed twice
    write_jsonl([bare], tmp_path / "again.jsonl")
    assert load_jsonl(tmp_path / "again.jsonl")[0].question == bare.question


def test_too_many_choices_is_a_usage_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "wide.jsonl", [json.dumps(
        {"question": "Pick", "answer": "A", "choices": [str(i) for i in range(27)]}
    )])  # fmt: skip
    with pytest.raises(UsageError, match="27 choices"):
        load_jsonl(path)


@pytest.mark.parametrize(
    ("name", "folder"), [("mmlu", "mmlu"), ("commonsenseqa", "commonsenseqa"), ("bbh", "bbh")]
)
def test_named_loaders_already_list_their_options(data_dir: Path, name: str, folder: str) -> None:
    from apportion.strategies.prompts import lists_options, with_options

    with_choices = [i for i in _load(name, data_dir, folder) if i.choices]
    assert with_choices
    for item in with_choices:
        assert lists_options(item.question, item.choices), item.id
        assert with_options(item.question, item.choices) == item.question
