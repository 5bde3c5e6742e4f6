"""Metrics over stored run outputs, tables and reports."""
