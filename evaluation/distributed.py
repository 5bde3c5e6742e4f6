"""`splice evaluate --address` (or RAY_ADDRESS): pairs spread over a Ray cluster. A thin layer over
`backends.evaluate_chunk`, following `backends.Backend`.

One actor per GPU (or, on a CPU-only cluster, one per few CPUs of a node) loads the metric models once and
evaluates chunks of pairs, reading images and outputs from storage itself; the driver only merges the small
results, collected with `ray.wait` as they finish. An actor whose node is lost is restarted elsewhere (its models
reloaded) and the chunks it held are run again (Ray's max_restarts / max_task_retries); a chunk that still cannot
be evaluated marks its pairs as errors instead of aborting the evaluation.
"""

from __future__ import annotations

import logging

import torch

from evaluation.backends import PairUpdate, evaluate_chunk, model_info
from evaluation.models import EvalSettings, best_device, load_metric_models
from evaluation.weights import MetricUnavailable
from pipeline.runs import hooks
from pipeline.storage import Storage

log = logging.getLogger(__name__)

CPUS_PER_ACTOR = 4  # CPU-only clusters: torch threads per actor
MAX_RESTARTS = 4  # an actor lost with its node is restarted this many times ...
MAX_TASK_RETRIES = -1  # ... and the chunks it held are re-run until it is back (while the node's loss is being
# detected every call fails at once, so a finite count is used up in seconds); bounded by MAX_RESTARTS


class _Worker:
    def __init__(self, settings: EvalSettings, storage_options: dict, threads: int | None):
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
        hooks.point("evaluate.chunk")
        return evaluate_chunk(tasks, self.models, self.settings, self.storage, self.device)


class RayBackend:
    """Runs chunks on Ray actors; `address` as for ray.init ('auto', 'ray://HOST:10001', 'local' for a new local one;
    None: RAY_ADDRESS)."""

    def __init__(self, address: str | None, settings: EvalSettings, storage_options: dict):
        import ray

        self.ray = ray
        from pipeline.runs.ray_session import connect_ray

        # plug-in metrics' files or packages go with the job to the actors (Ray's runtime_env py_modules)
        self.started = connect_ray(address, runtime_env=settings.runtime_env(), log_to_driver=False)
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if gpus:
            count, options, threads = gpus, {"num_gpus": 1, "num_cpus": 1}, None
        else:  # an actor must fit on one node: size it by the largest node, not the cluster
            node_cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [cpus]
            per_actor = max(1, min(CPUS_PER_ACTOR, max(node_cpus)))
            count = max(1, sum(c // per_actor for c in node_cpus))
            options, threads = {"num_cpus": per_actor}, per_actor
        worker = ray.remote(
            max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES, runtime_env=hooks.runtime_env(), **options
        )(_Worker)
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
        pending: dict = {}  # object ref -> (actor, chunk)

        def submit(actor) -> bool:
            chunk = next(chunks, None)
            if chunk is None:
                return False
            pending[actor.evaluate.remote(chunk)] = (actor, chunk)
            return True

        for actor in self.actors:
            submit(actor) and submit(actor)
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            actor, chunk = pending.pop(done[0])
            try:
                updates = self.ray.get(done[0])
            except self.ray.exceptions.RayError as exc:  # retries used up: these pairs fail, the others go on
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                log.warning("a chunk of %d pair(s) could not be evaluated on the cluster (%s)", len(chunk), reason)
                updates = [
                    PairUpdate(
                        t.pair_id,
                        image_error=f"pair '{t.pair_id}': evaluation worker lost "
                        f"({type(exc).__name__}); run `splice evaluate` again",
                    )
                    for t in chunk
                ]
            submit(actor)
            yield updates

    def close(self):
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False
