"""Pair manifests: the Parquet schema and its validation (`schema`), builders from dataset layouts (`builders`), examples."""
