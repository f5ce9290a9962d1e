"""`python -m apportion.engines.llamacpp_server ARGS`: llama-cpp-python's own OpenAI-compatible
server (`python -m llama_cpp.server ARGS`, the same arguments), with llama.cpp's extra buffer
types as apportion's `extra_buffers = "auto"` decides.

On a CPU where llama.cpp's AMX path would run, the plain server segfaults at its first decode,
as an in-process model does (engines/cpu.py; llama.cpp issue 20824); this loads its models
without the extra buffer types there, and changes nothing elsewhere. The tests and
`benchmarks/bench_concurrency.py` start their reference servers with it.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

from apportion.engines.cpu import choose_extra_buffers


def main() -> None:
    import llama_cpp.llama_cpp as native

    if not choose_extra_buffers("auto").enabled:
        default = native.llama_model_default_params

        # the server builds every model's parameters from this function (as Llama does)
        def without_extra_buffers() -> Any:
            params = default()
            params.use_extra_bufts = False
            return params

        native.llama_model_default_params = without_extra_buffers
    sys.argv = ["llama_cpp.server", *sys.argv[1:]]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
