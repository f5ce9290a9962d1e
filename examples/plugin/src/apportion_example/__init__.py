"""An example apportion plug-in package (see README.md beside pyproject.toml).

- `engine`: the `echo` engine kind, which answers with the last user message reversed;
- `store`: the `memory:` store scheme, an in-process keyword store;
- `solver`: the `factorial` solver, which answers "what is N factorial" exactly;
- `strategy`: the `shout` strategy, a direct answer in capitals.

Each is registered in pyproject.toml under one of apportion's entry-point groups; apportion
finds them when it builds its registries, without a line of its own code changed.
"""
