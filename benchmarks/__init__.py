"""Benchmarks and the original-structure reference replay loop (not part of the installed package)."""
