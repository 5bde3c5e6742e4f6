"""Metrics over stored run outputs, tables and reports."""

# the built-in metrics register themselves on import (evaluation.registry.register_metric): importing any module of
# the package brings them, so the registry knows them by name without importing them (it sits below them)
from evaluation import metrics as _builtins  # noqa: F401
