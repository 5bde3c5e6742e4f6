"""results.parquet's rows: a done pair's (from its marker or meta.json), a damaged pair's, and `ResultsTable`, the
table as `splice run`'s driver keeps it. Read and written through RunFolder (run_folder.py; docs/run-layout.md)."""

from __future__ import annotations

import time

from pipeline.runs.pair_listing import Scan
from pipeline.runs.pair_status import PairStatus


def row_from_meta(pair_id: str, meta: dict) -> dict:
    """The results row of a done pair, from its meta.json (whatever is readable of it)."""
    return {
        "pair_id": pair_id,
        "status": PairStatus.DONE.value,
        "error": None,
        "seconds": meta.get("seconds"),
        "device": meta.get("device_name") or meta.get("device"),
        "peak_memory_bytes": meta.get("peak_memory_bytes"),
        "attempts": meta.get("attempt"),
        "method": meta.get("method"),
        "weights_id": meta.get("weights_id"),
        "started_at": meta.get("started_at"),
        "finished_at": meta.get("finished_at"),
    }


def damaged_row(pair_id: str, problem: str) -> dict:
    return {
        "pair_id": pair_id,
        "status": PairStatus.DAMAGED.value,
        "error": f"pair {pair_id!r} is damaged ({problem}): `splice run` redoes it",
    }


class ResultsTable:
    """results.parquet as `splice run`'s driver keeps it: one row per pair of the run's manifest, in memory,
    written now and then and at the end, so an interrupted driver loses nothing. `folder`: the run's RunFolder."""

    def __init__(self, folder, pair_ids: list[str], found: Scan, flush_seconds: float = 5.0):
        self.folder, self.flush_seconds = folder, flush_seconds
        previous = folder.results()
        previous = {} if previous is None else {r["pair_id"]: r for r in previous.to_dict("records")}
        self.rows: dict[str, dict] = {}
        for pair_id in pair_ids:
            old = previous.get(pair_id)
            status = old and old.get("status")
            if pair_id in found.done:
                self.rows[pair_id] = (
                    old if status == PairStatus.DONE else folder.done_row(pair_id, found.markers.get(pair_id))
                )
            elif pair_id in found.damaged:
                self.rows[pair_id] = damaged_row(pair_id, found.damaged[pair_id])
            elif status == PairStatus.FAILED:
                self.rows[pair_id] = old  # still failed until a new attempt says otherwise
            else:
                self.rows[pair_id] = {"pair_id": pair_id, "status": PairStatus.PENDING.value}
        self._written = float("-inf")

    def update(self, row: dict) -> None:
        self.rows[row["pair_id"]] = row

    def maybe_write(self) -> None:
        if time.monotonic() - self._written >= self.flush_seconds:
            self.write()

    def write(self) -> None:
        self.folder.write_results(list(self.rows.values()))
        self._written = time.monotonic()

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in PairStatus), 0)
        for row in self.rows.values():
            counts[PairStatus.of(row["status"]).value] += 1
        return counts

    def failures(self) -> list[tuple[str, str]]:
        return [(r["pair_id"], r.get("error") or "") for r in self.rows.values() if r["status"] == PairStatus.FAILED]

    def weights_ids(self) -> list[str]:
        return sorted({r["weights_id"] for r in self.rows.values() if isinstance(r.get("weights_id"), str)})

    def mark_done(self, found: Scan) -> None:
        """Pairs whose _SUCCESS appeared without their row reaching the driver (e.g. interrupted just then)."""
        for pair_id in found.done & self.rows.keys():
            if self.rows[pair_id].get("status") != PairStatus.DONE:
                self.rows[pair_id] = self.folder.done_row(pair_id, found.markers.get(pair_id))
