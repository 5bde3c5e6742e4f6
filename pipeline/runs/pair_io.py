"""Reading and writing one pair's outputs through an fsspec filesystem (layout: pipeline/runs/layout.py).

`_SUCCESS` is written last and records the size and hash of the files before it (pipeline/runs/run_folder.py): a pair
directory with a marker that matches its files holds a complete result; one without it is redone.
"""
from __future__ import annotations

import io
import json
from typing import Callable

import pandas as pd
import torch

from pipeline.runs import layout
from pipeline.method.images import encode_png
from pipeline.runs.run_folder import success_marker
from pipeline.storage import ensure_folder, write_whole
from pipeline.method.objective import TERMS

LOSS_COLUMNS = ["step", "total", *TERMS]


def write_pair_result(fs, pair_dir: str, result, extra_meta: dict | None = None, *, row: dict | None = None,
                      fence: Callable[[], None] | None = None) -> None:
    """Write output.png, losses.parquet, meta.json, then _SUCCESS (their sizes and hashes, and the results `row`);
    finally drop the checkpoint. `fence()` runs before the first and before the last write and raises if this
    writer may no longer write here (its run's lock was taken over). A failed write (e.g. disk full) removes what
    it had written of the pair, so nothing partial stays behind."""
    meta = {**result.meta, **(extra_meta or {}), "status": "done"}
    files = {layout.OUTPUT_PNG: encode_png(result.output), layout.LOSSES: losses_to_parquet(result.losses),
             layout.META_JSON: json.dumps(meta, indent=2, default=str).encode()}
    pair_id = meta.get("pair_id") or pair_dir.rstrip("/").rsplit("/", 1)[-1]
    if fence:
        fence()
    ensure_folder(fs, pair_dir)
    try:
        for name, data in files.items():
            fs.pipe_file(layout.join(pair_dir, name), data)
        if fence:
            fence()
        fs.pipe_file(layout.join(pair_dir, layout.SUCCESS), success_marker(pair_id, files, row or {}))
    except OSError:
        remove_outputs(fs, pair_dir)
        raise
    checkpoint = layout.join(pair_dir, layout.CHECKPOINT)
    if fs.exists(checkpoint):
        fs.rm(checkpoint)


def remove_outputs(fs, pair_dir: str) -> None:
    """Best effort: remove a pair's result files (after a failed write; space may be short)."""
    for name in (layout.SUCCESS, layout.OUTPUT_PNG, layout.LOSSES, layout.META_JSON):
        try:
            fs.rm_file(layout.join(pair_dir, name))
        except (OSError, ValueError):
            pass


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
    write_whole(fs, layout.join(pair_dir, layout.CHECKPOINT), buffer.getvalue())


def load_checkpoint(fs, pair_dir: str) -> dict | None:
    target = layout.join(pair_dir, layout.CHECKPOINT)
    if not fs.exists(target):
        return None
    try:
        return torch.load(io.BytesIO(fs.cat_file(target)), map_location="cpu", weights_only=True)
    except Exception:  # a damaged checkpoint is not worth failing the pair over: start again
        return None
