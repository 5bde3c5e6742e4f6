"""Benchmark tables, plots and the single-file HTML report, from stored run folders and their metrics."""
