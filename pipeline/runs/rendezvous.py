"""The worker side of a pack (`splice run --pack K`): each pair of a pack runs the ordinary per-pair path
(worker.run_pair: skip if done, record the attempt, read and decode its images, load its checkpoint, write its
outputs) in its own thread. Where that path would train the pair alone, the pair joins the rendezvous instead; once
every pair of the pack has joined or dropped out (done already, unreadable image), they train together
(`trainer.train_pack`, or a batched method's `apply`), and each thread gets its pair's result the moment that pair is
done, so it writes the pair's outputs while the rest train. Which pairs form a pack: packs.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.method.trainer import PairInput


@dataclass
class _Arrival:
    structure: object
    appearance: object
    config: object
    backbone: object
    device: object
    checkpoint: dict | None
    save_checkpoint: Callable | None


class PackRendezvous:
    """Gathers a pack's pairs from their threads, trains them together, hands each its own result."""

    def __init__(self, pair_ids: list[str], train_pack: Callable, **train_options):
        self._train_pack, self._train_options = train_pack, train_options
        self._changed = threading.Condition()
        self._expected = set(pair_ids)  # neither joined nor dropped out yet
        self._joined: dict[str, _Arrival] = {}
        self._outcomes: dict[str, object] = {}

    def member(self, pair_id: str) -> Callable:
        """A stand-in for `trainer.train_pair` (same signature) that trains this pair within the pack."""

        def train(structure, appearance, config, backbone, device, *, checkpoint=None, save_checkpoint=None, **_):
            with self._changed:
                self._joined[pair_id] = _Arrival(
                    structure, appearance, config, backbone, device, checkpoint, save_checkpoint
                )
                self._expected.discard(pair_id)
                self._changed.notify_all()
                self._changed.wait_for(lambda: pair_id in self._outcomes)
                outcome = self._outcomes[pair_id]
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return train

    def drop(self, pair_id: str) -> None:
        """This pair's thread is over (done, failed, or skipped): stop waiting for it."""
        with self._changed:
            self._expected.discard(pair_id)
            self._changed.notify_all()

    def run(self) -> None:
        """In the pack's own thread: wait for every pair, train those that joined, deliver every outcome."""
        with self._changed:
            self._changed.wait_for(lambda: not self._expected)
            joined = dict(self._joined)
        if not joined:
            return
        first = next(iter(joined.values()))
        pairs = [
            PairInput(pair_id, a.structure, a.appearance, a.config, a.checkpoint, a.save_checkpoint)
            for pair_id, a in joined.items()
        ]
        try:
            self._train_pack(pairs, first.backbone, first.device, on_result=self._deliver, **self._train_options)
        except BaseException as exc:  # the pack as a whole failed (e.g. out of memory): every waiting pair hears it
            self._deliver_missing(joined, exc)
            if not isinstance(exc, Exception):
                raise
        self._deliver_missing(joined, RuntimeError("the pack ended without a result for this pair (a bug)"))

    def _deliver_missing(self, joined, outcome) -> None:
        for pair_id in joined:
            if pair_id not in self._outcomes:
                self._deliver(pair_id, outcome)

    def _deliver(self, pair_id: str, outcome) -> None:
        with self._changed:
            self._outcomes[pair_id] = outcome
            self._changed.notify_all()
