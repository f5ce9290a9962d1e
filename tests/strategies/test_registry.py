import pytest

from apportion.errors import UnknownNameError, UsageError
from apportion.strategies.registry import default_registry, parse_spec, split_specs


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
