"""Reading and writing one pair's outputs through an fsspec filesystem (layout: pipeline/layout.py).

`_SUCCESS` is written last: a pair directory with it holds a complete result; one without it is redone.
"""
from __future__ import annotations

import io
import json
import uuid

import pandas as pd
import torch

from . import layout
from .images import encode_png
from .objective import TERMS

LOSS_COLUMNS = ["step", "total", *TERMS]


def write_pair_result(fs, pair_dir: str, result, extra_meta: dict | None = None) -> None:
    """Write output.png, losses.parquet, meta.json, then _SUCCESS; finally drop the checkpoint."""
    fs.makedirs(pair_dir, exist_ok=True)
    fs.pipe_file(layout.join(pair_dir, layout.OUTPUT_PNG), encode_png(result.output))
    fs.pipe_file(layout.join(pair_dir, layout.LOSSES), losses_to_parquet(result.losses))
    meta = {**result.meta, **(extra_meta or {}), "status": "done"}
    fs.pipe_file(layout.join(pair_dir, layout.META_JSON), json.dumps(meta, indent=2, default=str).encode())
    fs.pipe_file(layout.join(pair_dir, layout.SUCCESS), b"")
    checkpoint = layout.join(pair_dir, layout.CHECKPOINT)
    if fs.exists(checkpoint):
        fs.rm(checkpoint)


def losses_to_parquet(rows: list[dict]) -> bytes:
    frame = pd.DataFrame(rows, columns=LOSS_COLUMNS).astype({"step": "int64"})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def is_done(fs, pair_dir: str) -> bool:
    return fs.exists(layout.join(pair_dir, layout.SUCCESS))


def save_checkpoint(fs, pair_dir: str, state: dict) -> None:
    """Write a checkpoint so that a reader never sees a half-written one (temp name, then rename)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    target = layout.join(pair_dir, layout.CHECKPOINT)
    fs.makedirs(pair_dir, exist_ok=True)
    if _is_local(fs):
        temporary = f"{target}.{uuid.uuid4().hex}.tmp"
        fs.pipe_file(temporary, buffer.getvalue())
        fs.mv(temporary, target)
    else:  # object stores replace an object atomically on put
        fs.pipe_file(target, buffer.getvalue())


def load_checkpoint(fs, pair_dir: str) -> dict | None:
    target = layout.join(pair_dir, layout.CHECKPOINT)
    if not fs.exists(target):
        return None
    try:
        return torch.load(io.BytesIO(fs.cat_file(target)), map_location="cpu", weights_only=True)
    except Exception:  # a damaged checkpoint is not worth failing the pair over: start again
        return None


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
