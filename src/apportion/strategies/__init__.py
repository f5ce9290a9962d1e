"""Answering strategies: one file each, one small protocol (`base.Strategy`), a registry."""
