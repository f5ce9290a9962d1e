"""Whether llama.cpp's extra buffer types are used: decided from the CPU, the kernel and the
build, and settable both ways (issue: the first `ask` segfaulted on CPUs with Intel AMX)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from apportion.config import Settings
from apportion.engines.cpu import (
    AmxProbe,
    build_has_amx,
    choose_extra_buffers,
    cpu_flags,
    kernel_grants_amx,
    probe_amx,
)
from apportion.errors import UsageError

SAPPHIRE_RAPIDS = "fpu vme avx2 avx512f avx512_vnni amx_bf16 avx512_fp16 amx_tile amx_int8"
EPYC = "fpu vme fma avx f16c avx2"


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    one = f"vendor_id\t: X\nflags\t\t: {flags}\n"
    path.write_text(f"processor\t: 0\n{one}\nprocessor\t: 1\n{one}")
    return path


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    assert {"amx_tile", "amx_int8", "avx2"} <= cpu_flags(cpuinfo(tmp_path, SAPPHIRE_RAPIDS))
    assert "amx_tile" not in cpu_flags(cpuinfo(tmp_path, EPYC))
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_a_cpu_without_amx_is_not_probed_further(tmp_path: Path) -> None:
    probe = probe_amx(cpuinfo(tmp_path, EPYC))
    assert probe == AmxProbe(cpu=False, kernel=None, build=None)
    assert not probe.active


@pytest.mark.parametrize(
    ("probe", "enabled"),
    [
        (AmxProbe(cpu=True, kernel=True, build=True), False),  # the crashing machines
        (AmxProbe(cpu=True, kernel=None, build=True), False),  # unsure: the safe side
        (AmxProbe(cpu=True, kernel=True, build=None), False),
        (AmxProbe(cpu=True, kernel=False, build=True), True),  # kernel refuses: no AMX path
        (AmxProbe(cpu=True, kernel=True, build=False), True),  # built without AMX
        (AmxProbe(cpu=False, kernel=None, build=None), True),  # AMD EPYC, older Intel
    ],
)
def test_auto_turns_extra_buffers_off_only_where_the_amx_path_would_run(
    probe: AmxProbe, enabled: bool
) -> None:
    choice = choose_extra_buffers("auto", lambda: probe)
    assert choice.enabled is enabled
    assert choice.reason.startswith("auto: ")


def test_on_and_off_are_obeyed_without_probing() -> None:
    def never() -> AmxProbe:
        raise AssertionError("probed")

    assert choose_extra_buffers("on", never).enabled is True
    assert choose_extra_buffers("off", never).enabled is False


def test_the_build_is_read_from_llama_cpps_system_info() -> None:
    assert build_has_amx(lambda: b"CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 1 | ") is True
    assert build_has_amx(lambda: b"CPU : SSE3 = 1 | AVX2 = 1 | FMA = 1 | ") is False
    installed = build_has_amx()  # the real build here: compiled for this machine's CPU
    assert installed is ("amx_int8" in cpu_flags() and "avx512_vnni" in cpu_flags())


def test_the_kernel_probe_answers_on_this_machine() -> None:
    granted = kernel_grants_amx()
    if "amx_tile" not in cpu_flags():
        assert granted is False  # no CPU support: the kernel has no tile state to grant
    else:
        assert granted in (True, False, None)


def test_the_setting_is_read_from_the_config_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[llamacpp]\nextra_buffers = "off"\n')
    assert Settings.load(config, env={}).llamacpp.extra_buffers == "off"
    assert Settings.load(None, env={}).llamacpp.extra_buffers == "auto"
    env = {"APPORTION_EXTRA_BUFFERS": "ON"}
    assert Settings.load(config, env=env).llamacpp.extra_buffers == "on"
    with pytest.raises(UsageError, match="extra_buffers"):
        Settings.load(None, env={"APPORTION_EXTRA_BUFFERS": "maybe"})


LOAD_WITH_LOGS = """
import llama_cpp
# llama.cpp's load log on, whatever verbosity the engine asks for
loud = llama_cpp.Llama
llama_cpp.Llama = lambda *args, **kwargs: loud(*args, **{**kwargs, "verbose": True})
from apportion.config import Settings
from apportion.runtime import Engine
Engine(settings=Settings.load()).engine_for("smollm2-135m")
"""


@pytest.mark.model
@pytest.mark.parametrize(("setting", "considered"), [("on", True), ("off", False)])
def test_the_setting_reaches_llama_cpp(settings: Settings, setting: str, considered: bool) -> None:
    """With extra buffers off, llama.cpp never considers its repacking (or AMX) buffer type
    for the weights: the path that segfaulted is not taken."""
    from apportion.engines import catalogue

    catalogue.resolve("smollm2-135m", settings.models_dir)  # pulled before the subprocess
    env = {**os.environ, "APPORTION_EXTRA_BUFFERS": setting, "APPORTION_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_WITH_LOGS], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "load_tensors" in done.stderr  # the log was captured
    # the extra buffer type llama.cpp picks: CPU repacking, or AMX tiles where the CPU has them
    extra = "CPU_REPACK" in done.stderr or "AMX model buffer" in done.stderr
    assert extra is considered
