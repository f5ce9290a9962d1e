"""Benchmarks: dataset loaders, answer scoring and evaluation runs."""
