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
