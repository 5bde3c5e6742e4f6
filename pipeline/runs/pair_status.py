"""`PairStatus`: the one status vocabulary of a run folder's tables (results.parquet, metrics.parquet), the report's
tables and `splice status`; older formats' words are mapped onto it (`PairStatus.of`). See docs/run-layout.md."""

from __future__ import annotations

import math
from enum import Enum

import pandas as pd

from pipeline.runs.pair_folder import RunFolderError


class PairStatus(str, Enum):
    """What is known of a pair: the one vocabulary of results.parquet, metrics.parquet, tables, report and status."""

    PENDING = "pending"  # not run, not finished, or not evaluated yet: work is left, nothing is wrong
    DONE = "done"  # its output is stored under _SUCCESS (in metrics.parquet: and its metrics are computed)
    FAILED = "failed"  # the method failed on it (run), or its imported output is unreadable (import)
    MISSING = "missing"  # the imported method has no output for it, or several where one was expected
    DAMAGED = "damaged"  # marked done, but its files no longer match _SUCCESS: `splice run` redoes it
    ERROR = "error"  # evaluation could not read its files, or a metric failed on them

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, word) -> PairStatus:
        """The status a stored word means, older formats' words included ('ok', 'not evaluated')."""
        if isinstance(word, cls):
            return word
        if word is None or (isinstance(word, float) and math.isnan(word)) or word is pd.NA:
            return cls.PENDING
        text = str(word).strip().lower()
        try:
            return cls(OLDER_WORDS.get(text, text))
        except ValueError:
            raise RunFolderError(
                f"unknown pair status {word!r}: expected one of {', '.join(s.value for s in cls)}"
            ) from None


OLDER_WORDS = {"ok": "done", "not evaluated": "pending", "none": "pending", "": "pending"}  # formats 1 and 2


def status_words(statuses) -> list[str]:
    """Stored status words (any format) as words of `PairStatus`."""
    return [PairStatus.of(s).value for s in statuses]
