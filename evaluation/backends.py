"""The evaluation backends and what travels between them and `evaluate.evaluate_run`: a `PairTask` per pair to
(re)evaluate, a `PairUpdate` per pair evaluated, and `evaluate_chunk`, which turns a chunk of tasks into updates.

`LocalBackend` evaluates in this process; `distributed.RayBackend` on Ray actors, each calling `evaluate_chunk`.
Both follow `Backend`: `model_info()`, then `run(chunks)` yielding each chunk's updates, then `close()`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import torch

from evaluation.engine import PairImages, compute_metrics
from evaluation.models import EvalSettings, MetricModels, load_metric_models
from pipeline.method.images import ImageError, decode_image, max_input_bytes
from pipeline.storage import Storage, redact_text, redact_url

READ_THREADS = 8


@dataclass(frozen=True)
class PairTask:
    """One pair to (re)evaluate; small and picklable, so it can travel to a Ray worker."""

    pair_id: str
    structure_uri: str
    appearance_uri: str
    output_url: str
    known_hash: str | None  # content hash of the output the stored values were computed on
    fresh: tuple[str, ...]  # metrics whose stored values stay valid if the hash is unchanged
    wanted: tuple[str, ...]  # metrics asked for


@dataclass
class PairUpdate:
    pair_id: str
    output_sha256: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    changed: bool = False  # the output's content differs from the one the stored values were computed on
    image_error: str | None = None


class Backend(Protocol):
    """Where chunks of pairs are evaluated: this process (`LocalBackend`) or a Ray cluster (`distributed.RayBackend`)."""

    def model_info(self) -> tuple[dict[str, str], dict[str, str], list[str] | None]: ...

    def run(self, chunks: Iterable[list[PairTask]]) -> Iterator[list[PairUpdate]]: ...

    def close(self) -> None: ...


class LocalBackend:
    """Evaluates in this process, on one device."""

    def __init__(self, settings: EvalSettings, device, storage: Storage):
        self.settings, self.device, self.storage = settings, torch.device(device), storage
        self.models = load_metric_models(settings, self.device)

    def model_info(self):
        return model_info(self.models)

    def run(self, chunks):
        for chunk in chunks:
            yield evaluate_chunk(chunk, self.models, self.settings, self.storage, self.device)

    def close(self):
        pass


def model_info(models: MetricModels) -> tuple[dict[str, str], dict[str, str], list[str] | None]:
    """Provenance id per available metric, why others were skipped, and the segmenter's class names."""
    classes = list(getattr(models.segmenter, "class_names", []) or []) or None
    return dict(models.ids), dict(models.skipped), classes


def evaluate_chunk(
    tasks: list[PairTask], models: MetricModels, settings: EvalSettings, storage: Storage, device
) -> list[PairUpdate]:
    """Read and hash outputs, decide per pair what to compute, decode the images and compute in batches."""
    with ThreadPoolExecutor(READ_THREADS) as pool:
        loaded = list(pool.map(lambda t: _load_pair(t, storage, settings.max_pixels), tasks))
    groups: dict[tuple[str, ...], list[PairImages]] = defaultdict(list)
    updates = []
    for update, images, needed in loaded:
        updates.append(update)
        if images is not None and needed:
            groups[needed].append(images)
    by_id = {u.pair_id: u for u in updates}
    for needed, pairs in groups.items():
        for pair_id, scores in compute_metrics(pairs, list(needed), models, device, settings.batch_size).items():
            by_id[pair_id].values.update(scores.values)
            by_id[pair_id].errors.update(scores.errors)
    return updates


def _load_pair(task: PairTask, storage: Storage, max_pixels: int):
    update = PairUpdate(task.pair_id)
    try:
        data = storage.read_bytes(task.output_url)
        update.output_sha256 = "sha256:" + hashlib.sha256(data).hexdigest()
        update.changed = update.output_sha256 != task.known_hash
        needed = tuple(m for m in task.wanted if update.changed or m not in task.fresh)
        if not needed:
            return update, None, needed
        limit = max_input_bytes(max_pixels)
        images = PairImages(
            task.pair_id,
            structure=decode_image(
                storage.read_input(task.structure_uri, max_bytes=limit),
                f"structure image {redact_url(task.structure_uri)}",
                max_pixels,
            ),
            appearance=decode_image(
                storage.read_input(task.appearance_uri, max_bytes=limit),
                f"appearance image {redact_url(task.appearance_uri)}",
                max_pixels,
            ),
            output=decode_image(data, f"output {redact_url(task.output_url)}", max_pixels),
        )
        return update, images, needed
    except FileNotFoundError as exc:
        update.image_error = redact_text(f"pair '{task.pair_id}': {exc.filename or exc} does not exist")
        return update, None, ()
    except (ImageError, OSError) as exc:
        update.image_error = redact_text(f"pair '{task.pair_id}': {exc}")
        return update, None, ()
