"""`splice evaluate --address`: pairs spread over a Ray cluster. A thin layer over `evaluate.evaluate_chunk`.

One actor per GPU (or, on a CPU-only cluster, one per few CPUs) loads the metric models once and evaluates chunks
of pairs, reading images and outputs from storage itself; the driver only merges the small results, collected
with `ray.wait` as they finish.
"""
from __future__ import annotations

import logging

from pipeline.storage import Storage

from .models import EvalSettings, best_device, load_metric_models
from .weights import MetricUnavailable

log = logging.getLogger(__name__)

CPUS_PER_ACTOR = 4  # CPU-only clusters: torch threads per actor


class _Worker:
    def __init__(self, settings: EvalSettings, storage_options: dict, threads: int | None):
        import torch

        from .evaluate import model_info

        if threads:
            torch.set_num_threads(threads)
        self.settings = settings
        self.storage = Storage(storage_options)
        self.device = best_device()
        self.error = None
        try:
            self.models = load_metric_models(settings, self.device)
            self.info = model_info(self.models)
        except MetricUnavailable as exc:
            self.error = str(exc)

    def model_info(self):
        return self.error, None if self.error else self.info

    def evaluate(self, tasks):
        from .evaluate import evaluate_chunk

        return evaluate_chunk(tasks, self.models, self.settings, self.storage, self.device)


class RayBackend:
    """Runs chunks on Ray actors; `address` as for ray.init ('auto', 'ray://HOST:10001', 'local' for a new local one)."""

    def __init__(self, address: str, settings: EvalSettings, storage_options: dict):
        import ray

        self.ray = ray
        from pipeline.fanout import connect_ray

        self.started = connect_ray(address, log_to_driver=False)
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if gpus:
            count, options, threads = gpus, {"num_gpus": 1, "num_cpus": 1}, None
        else:
            per_actor = max(1, min(CPUS_PER_ACTOR, cpus))
            count, options, threads = max(1, cpus // per_actor), {"num_cpus": per_actor}, per_actor
        worker = ray.remote(**options)(_Worker)
        self.actors = [worker.remote(settings, storage_options, threads) for _ in range(count)]
        log.info("evaluating on Ray: %d worker(s) with %s each", count, options)

    def model_info(self):
        error, info = self.ray.get(self.actors[0].model_info.remote())
        if error:
            self.close()
            raise MetricUnavailable(error)
        return info

    def run(self, chunks):
        """Yield each chunk's updates as it finishes; every actor holds at most two chunks at a time."""
        chunks = iter(chunks)
        pending: dict = {}  # object ref -> actor

        def submit(actor) -> bool:
            chunk = next(chunks, None)
            if chunk is None:
                return False
            pending[actor.evaluate.remote(chunk)] = actor
            return True

        for actor in self.actors:
            submit(actor) and submit(actor)
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            actor = pending.pop(done[0])
            submit(actor)
            yield self.ray.get(done[0])

    def close(self):
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False
