"""splice-pipeline: Splice semantic appearance transfer as a batch pipeline."""

__version__ = "0.1.0"
