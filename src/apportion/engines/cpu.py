"""What this CPU, kernel and llama.cpp build can do, and whether llama.cpp's extra buffer types
are safe to use here.

llama.cpp's "extra buffer types" repack weights at load time for faster kernels: CPU repacking
(AVX2/AVX-512 layouts) everywhere, and Intel AMX tiles where the build has them. The AMX path
segfaults at the first decode on some Sapphire Rapids-class machines (a general protection
fault at `ldtilecfg` in `ggml_backend_amx_mul_mat`; llama.cpp issue 20824). llama.cpp uses
that path only when all three hold:
- the build has it: compiled with `-march=native` on an AMX CPU, so the CPU backend reports
  `AMX_INT8 = 1` in `llama_print_system_info()`;
- the CPU has it: `/proc/cpuinfo` lists `amx_tile` and `amx_int8`;
- the kernel grants it: Linux ≥ 5.16 hands out AMX tile state on request
  (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); `ARCH_GET_XCOMP_SUPP` says whether
  it would.
`extra_buffers = "auto"` turns the extra buffers off only where all three hold, so every
other machine keeps the repacked kernels (the README's platform section gives what turning
them off costs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ExtraBuffers = Literal["auto", "on", "off"]

# linux/arch/x86/include/uapi/asm/prctl.h and the xstate feature numbers
_SYS_ARCH_PRCTL = 158  # x86-64
_ARCH_GET_XCOMP_SUPP = 0x1021
_XFEATURE_XTILEDATA = 18


@dataclass(frozen=True)
class AmxProbe:
    """The three conditions under which llama.cpp takes its AMX path (None: could not tell)."""

    cpu: bool
    kernel: bool | None
    build: bool | None

    @property
    def active(self) -> bool:
        """Whether llama.cpp would use AMX here. An unknown kernel or build counts as yes:
        a wrong yes costs some speed, a wrong no costs a segfault."""
        return self.cpu and self.kernel is not False and self.build is not False

    def describe(self) -> str:
        def word(value: bool | None) -> str:
            return "unknown" if value is None else ("yes" if value else "no")

        if not self.cpu:
            return "AMX in CPU flags: no"
        return (
            f"AMX in CPU flags: yes, granted by the kernel: {word(self.kernel)}, "
            f"in this llama.cpp build: {word(self.build)}"
        )


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's flags, or none where /proc/cpuinfo cannot be read."""
    try:
        with cpuinfo.open() as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def kernel_grants_amx() -> bool | None:
    """Whether the kernel supports AMX tile data (`ARCH_GET_XCOMP_SUPP`), None off x86-64 Linux
    or when the call cannot be made."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
    except OSError:
        return None
    supported = ctypes.c_uint64(0)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_SUPP, ctypes.byref(supported)) != 0:
        # EINVAL: a kernel older than 5.16, which has no AMX support at all
        return False if ctypes.get_errno() == 22 else None
    return bool(supported.value & (1 << _XFEATURE_XTILEDATA))


def build_has_amx(system_info: Callable[[], bytes] | None = None) -> bool | None:
    """Whether the installed llama.cpp's CPU backend was compiled with AMX (None: unknown)."""
    if system_info is None:
        try:
            import llama_cpp
        except ImportError:
            return None
        system_info = llama_cpp.llama_print_system_info
    try:
        text = system_info().decode("utf-8", "replace")
    except (OSError, AttributeError):
        return None
    return "AMX_INT8 = 1" in text


def probe_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> AmxProbe:
    flags = cpu_flags(cpuinfo)
    cpu = {"amx_tile", "amx_int8"} <= flags
    # only worth a syscall and a library load where the CPU has it
    return AmxProbe(
        cpu=cpu,
        kernel=kernel_grants_amx() if cpu else None,
        build=build_has_amx() if cpu else None,
    )


@dataclass(frozen=True)
class ExtraBuffersChoice:
    enabled: bool
    reason: str


def choose_extra_buffers(
    setting: ExtraBuffers, probe: Callable[[], AmxProbe] = probe_amx
) -> ExtraBuffersChoice:
    """Whether to load models with llama.cpp's extra buffer types, and why."""
    if setting == "on":
        return ExtraBuffersChoice(True, "extra_buffers = on")
    if setting == "off":
        return ExtraBuffersChoice(False, "extra_buffers = off")
    found = probe()
    if found.active:
        return ExtraBuffersChoice(
            False,
            f"auto: off, since llama.cpp's AMX path crashes on some CPUs ({found.describe()})",
        )
    return ExtraBuffersChoice(True, "auto: on (llama.cpp's AMX path is not used here)")

