"""Experts: LoRA adapters on a core model, trained here (`train`), from distilled examples
(`distil`), converted for llama.cpp (`convert`), kept with their manifests (`book`), and served
per request by the engine that holds the base model (`engines/llamacpp.py`), or by a remote
server that serves the adapter under a model name of its own (the `experts` of an
`[[engines]]` entry). A request names an expert as its model, or a strategy takes
`expert=NAME`."""
