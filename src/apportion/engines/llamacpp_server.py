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

from apportion.engines.cpu import choose_extra_buffers
from apportion.engines.llamacpp import model_params


def main() -> None:
    sys.argv = ["llama_cpp.server", *sys.argv[1:]]
    # the server builds its models' parameters as Llama does, so the block covers its loads
    with model_params(use_extra_bufts=choose_extra_buffers("auto").enabled):
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
