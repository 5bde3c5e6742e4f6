"""The output folder of `splice train-net` (any fsspec URL: local, s3://, gs://, ...): its files, their formats,
reading, writing and checks. Written by rank 0:

  OUT/train.json                    format TRAIN_FORMAT, settings, manifest, images per domain, status (running |
                                    finished), step
  OUT/images.parquet                the image pool: uri, domain, ok / the reason it is unreadable, curation distance,
                                    kept (made in pipeline/runs/net_images.py)
  OUT/net.pt                        the latest model (method/splicenet.py's FORMAT and NET_FILE): what inference reads
  OUT/checkpoints/step-NNNNNNN.pt   TRAINING_CHECKPOINT_FORMAT: model, Adam state and steps done (the last
                                    `keep_checkpoints`)
  OUT/losses.parquet                loss terms every `log_every` steps, averaged over the global batch

Running the same command again resumes from the newest readable checkpoint (a finished training is reported and
left alone; `--steps` may grow to train further, RESUMABLE_CHANGES may differ; any other setting is an error).
"""

from __future__ import annotations

import io
import logging
import time

import pandas as pd
import torch

from pipeline.errors import SpliceError
from pipeline.method.splicenet import NET_FILE, SpliceNet, save_net
from pipeline.runs.jobs import TrainNetJob
from pipeline.runs.layout import join
from pipeline.storage import Storage, redact_url

log = logging.getLogger(__name__)

# NET_FILE (net.pt) is named in the model module, which reads it for inference and may not import pipeline.runs
TRAIN_FORMAT = "splicenet-train/1"  # train.json
TRAINING_CHECKPOINT_FORMAT = "splicenet-checkpoint/1"  # checkpoints/step-*.pt: what a resume reads (not net.pt)
TRAIN_JSON = "train.json"
IMAGES_FILE = "images.parquet"
LOSSES_FILE = "losses.parquet"
CHECKPOINTS = "checkpoints"
RESUMABLE_CHANGES = ("steps", "log_every", "checkpoint_every", "precision")  # may differ from the stored settings


# ----------------------------------------------------------------------------------------------------- train.json


def prepare_out(storage: Storage, job: TrainNetJob, images: list[dict]) -> dict:
    """Start OUT/train.json, or check that the training already there is this one (resume)."""
    url = join(job.out, TRAIN_JSON)
    config = job.config.to_dict()
    if storage.exists(url):
        record = storage.read_json(url)
        if record.get("format") != TRAIN_FORMAT:
            raise SpliceError(
                f"{redact_url(job.out)} holds a {TRAIN_JSON} of format {record.get('format')!r}, not "
                f"a SpliceNet training ({TRAIN_FORMAT}): choose another --out"
            )
        before = record.get("config", {})
        changed = {
            k: (before.get(k), v)
            for k, v in _jsonable(config).items()
            if k not in RESUMABLE_CHANGES and before.get(k) != v
        }
        if changed or record.get("manifest") != job.manifest:
            what = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()) or "the manifest"
            raise SpliceError(
                f"{redact_url(job.out)} holds a training with other settings ({what}): run with the "
                f"same settings to resume it, or choose another --out"
            )
        if record.get("status") == "finished" and record.get("step", 0) >= job.config.steps:
            return record
        record.update(config=_jsonable(config), status="running")
    else:
        counts: dict[str, int] = {}
        for image in images:
            counts[image["domain"]] = counts.get(image["domain"], 0) + 1
        record = {
            "format": TRAIN_FORMAT,
            "manifest": job.manifest,
            "config": _jsonable(config),
            "images": counts,
            "domains": sorted(counts),
            "status": "running",
            "step": 0,
            "started": time.time(),
        }
    storage.write_json(url, record)
    return record


def _jsonable(values: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def read_record(storage: Storage, out: str) -> dict:
    """OUT/train.json."""
    return storage.read_json(join(out, TRAIN_JSON))


def update_record(storage: Storage, out: str, **changes) -> dict:
    """OUT/train.json with `changes` applied, written back."""
    record = read_record(storage, out)
    record.update(changes)
    storage.write_json(join(out, TRAIN_JSON), record)
    return record


# ------------------------------------------------------------------------------------------------- images.parquet


def read_images(storage: Storage, out: str, images: list[dict]) -> pd.DataFrame | None:
    """OUT/images.parquet if it lists these images ({uri, domain} each, in order); else None."""
    url = join(out, IMAGES_FILE)
    if storage.exists(url):
        table = pd.read_parquet(io.BytesIO(storage.read_bytes(url)))
        if list(table["uri"]) == [image["uri"] for image in images] and list(table["domain"]) == [
            image["domain"] for image in images
        ]:
            return table
    return None


def write_images(storage: Storage, out: str, table: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    storage.write_bytes(join(out, IMAGES_FILE), buffer.getvalue())


# ------------------------------------------------------------------------------------------ checkpoints and logs


def checkpoint_url(out: str, step: int) -> str:
    """OUT/checkpoints/step-NNNNNNN.pt."""
    return join(out, CHECKPOINTS, f"step-{step:07d}.pt")


def write_checkpoint(
    storage: Storage, job: TrainNetJob, net: SpliceNet, optimizer, step: int, losses: list, meta: dict
) -> None:
    """Rank 0: the checkpoint first (what a resume needs), then net.pt and the losses, then old checkpoints go."""
    buffer = io.BytesIO()
    torch.save(
        {
            "format": TRAINING_CHECKPOINT_FORMAT,
            "step": step,
            "config": _jsonable(job.config.to_dict()),
            "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "optimizer": _to_cpu(optimizer.state_dict()),
        },
        buffer,
    )
    storage.write_bytes(checkpoint_url(job.out, step), buffer.getvalue())
    buffer = io.BytesIO()
    save_net(net, buffer, step=step, **meta)
    storage.write_bytes(join(job.out, NET_FILE), buffer.getvalue())
    if losses:
        frame = io.BytesIO()
        pd.DataFrame(losses).to_parquet(frame, index=False)
        storage.write_bytes(join(job.out, LOSSES_FILE), frame.getvalue())
    update_record(storage, job.out, step=step)
    for old in _checkpoints(storage, job.out)[: -job.keep_checkpoints or None]:
        storage.remove(old)


def _to_cpu(value):
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _checkpoints(storage: Storage, out: str) -> list[str]:
    return sorted(storage.glob(join(out, CHECKPOINTS, "step-*.pt")))


def resume(storage: Storage, out: str, net: SpliceNet, optimizer, device: torch.device) -> int:
    """Load the newest readable checkpoint into net and optimizer; return its step (0: none)."""
    for url in reversed(_checkpoints(storage, out)):
        try:
            state = torch.load(io.BytesIO(storage.read_bytes(url)), map_location=device, weights_only=True)
            if state.get("format") != TRAINING_CHECKPOINT_FORMAT:
                raise ValueError(f"format {state.get('format')!r}")
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except Exception as exc:  # noqa: BLE001 (a checkpoint cut short by a kill: the one before it will do)
            log.warning("checkpoint %s cannot be used (%s); trying an older one", redact_url(url), exc)
            continue
        log.info("resuming from %s (step %d)", redact_url(url), state["step"])
        return int(state["step"])
    return 0


def read_losses(storage: Storage, out: str, start: int) -> list[dict]:
    """The rows of OUT/losses.parquet up to step `start` (none when starting afresh)."""
    url = join(out, LOSSES_FILE)
    if not start or not storage.exists(url):
        return []
    frame = pd.read_parquet(io.BytesIO(storage.read_bytes(url)))
    return frame[frame["step"] <= start].to_dict("records")
