"""Text generators behind one protocol (`base.TextEngine`): llama.cpp in-process, or any
OpenAI-compatible server over HTTP."""
