"""apportion: answer each query through the cheapest path that gets it right.

The public entry point is :class:`apportion.runtime.Runtime`, also named ``Engine``::

    from apportion import Engine
    answer = Engine.from_config().ask("What is 17*23+5?")
    print(answer.answer, answer.ledger.flops)

``Runtime.answer(Request(...), Hooks(...))`` is the long form (see apportion.runtime).
"""

from apportion.errors import ApportionError

__all__ = ["ApportionError", "Engine", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Lazy so that `import apportion` stays cheap (no llama.cpp, no SymPy) for the CLI's --help.
    if name == "Engine":
        from apportion.runtime import Engine

        return Engine
    raise AttributeError(name)
