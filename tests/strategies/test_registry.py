import pytest

from apportion.errors import UnknownNameError, UsageError
from apportion.strategies.registry import (
    default_registry,
    models_of,
    parse_spec,
    spec_name,
    split_specs,
)


def test_parse_spec_with_params() -> None:
    spec = parse_spec("cascade:small=a-0.5b,large=b-1.5b,threshold=0.6")
    assert spec.name == "cascade"
    assert dict(spec.params) == {"small": "a-0.5b", "large": "b-1.5b", "threshold": "0.6"}
    assert str(spec) == "cascade:small=a-0.5b,large=b-1.5b,threshold=0.6"


def test_split_specs_keeps_params_with_their_strategy() -> None:
    assert split_specs("direct,cot:temperature=0.7,max_tokens=64,program") == [
        "direct",
        "cot:temperature=0.7,max_tokens=64",
        "program",
    ]


def test_build_coerces_typed_parameters() -> None:
    strategy = default_registry().build("cot:temperature=0.7,max_tokens=64,logprobs=true")
    assert strategy.temperature == 0.7  # type: ignore[attr-defined]
    assert strategy.max_tokens == 64  # type: ignore[attr-defined]
    assert strategy.logprobs is True  # type: ignore[attr-defined]


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        default_registry().build("telepathy")
    assert "direct" in str(info.value) and "symbolic" in str(info.value)


def test_bad_parameter_names_valid_ones() -> None:
    with pytest.raises(UsageError, match="valid parameters: .*temperature"):
        default_registry().build("cot:temp=1")
    with pytest.raises(UsageError, match="must be int"):
        default_registry().build("cot:max_tokens=lots")
    with pytest.raises(UsageError, match="key=value"):
        default_registry().build("cot:oops")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("consistency:n=100000,rule=fixed", "consistency:n must be between 1 and 64"),
        ("consistency:n=0", "consistency:n must be between 1 and 64"),
        ("best_of_n:n=1000", "best_of_n:n must be between 1 and 32"),
        ("cascade:probe_n=500", "cascade:probe_n must be between 1 and 32"),
        ("cot:max_tokens=10000000", "cot:max_tokens must be between 1 and 32768"),
        ("direct:max_tokens=0", "direct:max_tokens must be between 1 and 32768"),
        ("rag:k=100000", "rag:k must be between 1 and 50"),
        ("cot:temperature=50", "cot:temperature must be between 0 and 2"),
        ("consistency:window=1000", "consistency:window must be between 1 and 64"),
    ],
)
def test_parameters_out_of_bounds_are_refused(spec: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        default_registry().build(spec)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused(value: str) -> None:
    with pytest.raises(UsageError, match="finite"):
        default_registry().build(f"cot:temperature={value}")


def test_bounds_are_declared_on_the_parameters_and_hold_the_defaults() -> None:
    """Every count, token limit and sampling parameter of a built-in strategy is bounded, and
    every default lies inside its bounds."""
    registry = default_registry()
    bounded = {
        "consistency": {"n", "window", "confidence", "temperature", "max_tokens"},
        "best_of_n": {"n", "temperature", "max_tokens"},
        "cascade": {"threshold", "probe_n", "probe_confidence"},
        "cot": {"temperature", "max_tokens"},
        "program": {"temperature", "max_tokens"},
        "direct": {"max_tokens"},
        "rag": {"k", "max_tokens", "passage_words", "context_words", "min_overlap"},
    }
    for name, expected in bounded.items():
        bounds = registry.bounds(name)
        assert expected <= set(bounds), (name, set(bounds))
        defaults = registry.parameters(name)
        for param, limit in bounds.items():
            limit.check(defaults[param], f"{name}:{param}")  # raises if a default is out


def test_values_at_the_bounds_are_accepted() -> None:
    registry = default_registry()
    assert registry.build("consistency:n=64,rule=fixed").n == 64  # type: ignore[attr-defined]
    assert registry.build("consistency:n=1").n == 1  # type: ignore[attr-defined]
    assert registry.build("cot:max_tokens=32768").max_tokens == 32768  # type: ignore[attr-defined]


def test_spec_name_reads_the_name_whatever_the_parameters_say() -> None:
    assert spec_name("consistency:n=8,rule=fixed") == "consistency"
    assert spec_name(" cot : oops ") == "cot"  # parse_spec refuses this; its name is still cot
    with pytest.raises(UsageError):
        parse_spec("cot:oops")
    assert spec_name("") == ""


def test_expert_is_the_model_a_one_model_strategy_runs_on() -> None:
    registry = default_registry()
    built = registry.build("program:expert=pal-math,temperature=0.5")
    assert built.model == "pal-math" and built.temperature == 0.5  # type: ignore[attr-defined]
    assert models_of("program:expert=pal-math", model="m", small="s", large="l") == ["pal-math"]
    with pytest.raises(UsageError, match="not both"):
        registry.build("cot:expert=pal-math,model=qwen2.5-coder-0.5b")
    with pytest.raises(UsageError, match="takes no expert"):
        registry.build("symbolic:expert=pal-math")
