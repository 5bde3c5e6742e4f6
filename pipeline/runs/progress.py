"""Live progress of the pairs in flight: `pairs/<id>/progress.json`, written by workers, read by the driver's bar
and by `splice status`.

A record is {"version", "pair_id", "step", "steps", "time" (epoch seconds), "updated_at" (ISO, UTC), "host", "pid"}.
Workers write it through Storage (whole-file writes) when a pair starts (its first or resumed step), then at most
every `INTERVAL_S` seconds, and at the last step: time- rather than step-based, because a step takes milliseconds
with the preview preset on a GPU and seconds with the paper preset on a CPU. A write costs one small PUT, never
fails a pair, and the record is removed when the pair ends (its meta.json, error.txt and results row supersede it).

`ProgressRecorder` is the worker side: a callable `(pair_id, step)`, so it serves the one-pair trainer
(`on_step=functools.partial(recorder, pair_id)`) and a trainer of several pairs at once alike.
`RunProgress` is the driver side: a bar in steps (finished pairs count all their steps, pairs in flight the steps
they reported), so its rate and ETA come from step rates and it moves during the first wave of long pairs.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from pipeline.runs import layout
from pipeline.runs.pair_folder import PairFolder
from pipeline.runs.run_folder import RunFolder
from pipeline.storage import Storage

log = logging.getLogger(__name__)

PROGRESS_VERSION = 1
INTERVAL_S = 5.0  # a worker writes a pair's record at most this often
POLL_S = 5.0  # the driver reads the records of pairs in flight at most this often
READ_THREADS = 8


# --- worker side -----------------------------------------------------------------------------------------------


class ProgressRecorder:
    """Writes `pairs/<id>/progress.json` for the pairs it tracks; call it as on_step(pair_id, step)."""

    def __init__(self, storage: Storage, interval_s: float = INTERVAL_S, clock=time.time):
        self.storage, self.interval_s, self.clock = storage, interval_s, clock
        self._pairs: dict[str, tuple[str, int]] = {}  # pair_id -> (its progress.json, total steps)
        self._last: dict[str, float] = {}  # pair_id -> time of its last write

    def track(self, pair_id: str, pair_dir: str, steps: int) -> None:
        self._pairs[pair_id] = (PairFolder(self.storage, pair_dir, pair_id).progress_url, int(steps))
        self._last.pop(pair_id, None)

    def __call__(self, pair_id: str, step: int) -> None:
        if pair_id not in self._pairs:  # not a pair this recorder tracks (e.g. a method without training steps)
            return
        url, steps = self._pairs[pair_id]
        now = self.clock()
        last = self._last.get(pair_id)
        if last is not None and now - last < self.interval_s and step < steps:
            return
        self._last[pair_id] = now
        record = {
            "version": PROGRESS_VERSION,
            "pair_id": pair_id,
            "step": int(step),
            "steps": steps,
            "time": now,
            "updated_at": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        try:
            self.storage.write_json(url, record)
        except Exception as exc:  # progress is a courtesy: it never fails a pair
            log.debug("could not write the progress of pair %s: %s", pair_id, exc)

    def finish(self, pair_id: str) -> None:
        """The pair ended (done or failed): remove its record."""
        url, _ = self._pairs.pop(pair_id, (None, 0))
        self._last.pop(pair_id, None)
        if url is None:
            return
        try:
            self.storage.remove(url)
        except Exception as exc:
            log.debug("could not remove the progress record of pair %s: %s", pair_id, exc)


# --- readers ---------------------------------------------------------------------------------------------------


def read_progress(storage: Storage, run: str, pair_ids=None) -> dict[str, dict]:
    """pair_id -> its progress record: of `pair_ids` (one read each), or of every pair that has one (one listing)."""
    folder = RunFolder(storage, run)  # the run folder's owner says where the records are
    pair_ids = list(folder.pairs_with(layout.PROGRESS_JSON) if pair_ids is None else pair_ids)
    if not pair_ids:
        return {}

    def read(pair_id):
        try:
            record = storage.read_json(folder.pair(pair_id).progress_url)
        except (FileNotFoundError, ValueError):
            return pair_id, None
        except OSError as exc:
            log.debug("could not read the progress of pair %s: %s", pair_id, exc)
            return pair_id, None
        return pair_id, record if isinstance(record, dict) and "step" in record else None

    with ThreadPoolExecutor(min(READ_THREADS, len(pair_ids))) as pool:
        return {p: r for p, r in pool.map(read, pair_ids) if r is not None}


def age_seconds(record: dict, now: float | None = None) -> float | None:
    """Seconds since the record was written (None if it has no time)."""
    try:
        return max(0.0, (time.time() if now is None else now) - float(record["time"]))
    except (KeyError, TypeError, ValueError):
        return None


# --- driver side -----------------------------------------------------------------------------------------------


class RunProgress:
    """The `splice run` bar: pairs done plus the steps of pairs in flight, with an ETA from step rates.

    Every pair weighs its number of steps (at least 1, so methods without training count one per pair). A finished
    pair (done or failed) counts all its steps; a pair in flight counts the steps its record reports.
    """

    def __init__(
        self,
        storage: Storage,
        run: str,
        steps: dict[str, int],
        *,
        enabled: bool,
        skipped: int = 0,
        poll_s: float = POLL_S,
        clock=time.monotonic,
    ):
        from tqdm import tqdm

        self.storage, self.run, self.enabled, self.skipped = storage, run, enabled, skipped
        self.weights = {pair_id: max(1, int(s or 0)) for pair_id, s in steps.items()}
        self.poll_s, self.clock = poll_s, clock
        self.finished: dict[str, str] = {}  # pair_id -> done | failed
        self.reported: dict[str, int] = {}  # pair_id in flight -> steps it reported
        self.running = 0
        self._last_poll = -float("inf")
        trains = any(s > 1 for s in self.weights.values())
        self.bar = tqdm(
            total=sum(self.weights.values()),
            unit="step" if trains else "pair",
            desc="splice run",
            dynamic_ncols=True,
            disable=not enabled,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit}s{postfix} "
            "[{elapsed}<{remaining}, {rate_fmt}]",
        )
        self._refresh()

    def poll(self, in_flight: list[str]) -> None:
        """Read the records of the pairs in flight (at most every poll_s seconds) and move the bar."""
        self.running = len(in_flight)
        if not self.enabled or self.clock() - self._last_poll < self.poll_s:
            return
        self._last_poll = self.clock()
        records = read_progress(self.storage, self.run, in_flight)
        self.reported = {p: min(int(r["step"]), self.weights[p]) for p, r in records.items() if p in self.weights}
        self._refresh()

    def pair_finished(self, pair_id: str, status: str) -> None:
        self.finished[pair_id] = status
        self.reported.pop(pair_id, None)
        self._refresh()

    def write(self, line: str) -> None:
        """A line above the bar (or plainly, when there is no bar)."""
        self.bar.write(line)

    def close(self) -> None:
        self._refresh()
        self.bar.close()

    def _refresh(self) -> None:
        if not self.enabled:
            return
        position = sum(self.weights[p] for p in self.finished) + sum(self.reported.values())
        self.bar.update(position - self.bar.n)  # tqdm computes its rate and ETA from these increments
        done = sum(1 for s in self.finished.values() if s == "done")
        failed = len(self.finished) - done
        postfix = f"pairs {done}/{len(self.weights)} done, {failed} failed, {self.running} in flight"
        self.bar.set_postfix_str(postfix + (f", {self.skipped} done before" if self.skipped else ""), refresh=False)
        self.bar.refresh()
