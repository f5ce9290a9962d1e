from pathlib import Path

import pytest

from apportion.config import Settings
from apportion.errors import UsageError


def test_env_overrides_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('default_model = "smollm2-135m"\nthreads = 3\n[hardware]\nactive_watts = 40\n')
    s = Settings.load(cfg, env={"APPORTION_HOME": str(tmp_path / "h"), "APPORTION_THREADS": "1"})
    assert s.default_model == "smollm2-135m"
    assert s.threads == 1
    assert s.hardware.active_watts == 40
    assert s.models_dir == tmp_path / "h" / "models"


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("threads = 0\n")
    with pytest.raises(UsageError, match="invalid configuration"):
        Settings.load(cfg, env={})
    with pytest.raises(UsageError, match="not found"):
        Settings.load(tmp_path / "missing.toml", env={})


@pytest.mark.parametrize(
    ("toml", "key", "suggestion"),
    [
        ('defualt_model = "smollm2-135m"\n', "defualt_model", "default_model"),
        ("[hardware]\nactive_wats = 40\n", "hardware.active_wats", "active_watts"),
        (
            '[[engines]]\nid = "r"\nbase_url = "http://x"\nmodel = "m"\nparams = 1e9\n'
            "timeout = 5\n",
            "engines[0].timeout",
            "timeout_s",
        ),
    ],
)
def test_unknown_key_names_it_and_the_closest_valid_one(
    tmp_path: Path, toml: str, key: str, suggestion: str
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(toml)
    with pytest.raises(UsageError) as raised:
        Settings.load(cfg, env={})
    message = str(raised.value)
    assert f"unknown key '{key}' in {cfg}" in message
    assert f"did you mean '{suggestion}'?" in message


def test_unknown_key_with_no_close_match_lists_the_valid_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("[hardware]\nzzz = 1\n")
    with pytest.raises(UsageError) as raised:
        Settings.load(cfg, env={})
    assert "unknown key 'hardware.zzz'" in raised.value.message
    assert raised.value.hint is not None and "active_watts" in raised.value.hint
