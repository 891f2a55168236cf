"""Micro-benchmarks (``python -m reproduce.benchmarks.<name>``); results go to ``results/benchmarks``."""
