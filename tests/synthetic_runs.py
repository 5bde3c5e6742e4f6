"""Evaluated runs written straight in the run layout, for report tests and benchmarks/report_size.py: no training, no
evaluation models, so thousands of pairs take seconds.

Images are textured (smooth colour fields, shapes and grain), closer to photographs in how they compress as JPEG
than flat test patterns, so report sizes measured on them are meaningful. The first method "trains": it has loss
curves and cost; one pair of the last method failed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from evaluation.metrics import METRICS

MODEL = "random:vit_tiny_patch16_224@random"
STRUCTURE = next(m for m, info in METRICS.items() if info.aspect == "structure")  # e.g. selfsim
APPEARANCE = next(m for m, info in METRICS.items() if info.aspect == "appearance" and info.better == "higher")


def textured_image(rng: np.random.Generator, size: int) -> bytes:
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y, r = rng.uniform(0, size, 3)
        draw.ellipse([x - r / 3, y - r / 3, x + r / 3, y + r / 3], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    array = np.asarray(image).astype(np.int16) + rng.normal(0, 6, (size, size, 3)).round().astype(np.int16)
    buffer = io.BytesIO()
    Image.fromarray(array.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_synthetic_runs(root: Path, pairs: int, methods: int = 4, size: int = 96, seed: int = 0) -> list[str]:
    """Write `methods` evaluated runs over the same `pairs` pairs under root; returns their folders."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    inputs = root / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    ids = [f"pair{i:04d}" for i in range(pairs)]
    for pair_id in ids:
        (inputs / f"{pair_id}_s.png").write_bytes(textured_image(rng, size))
        (inputs / f"{pair_id}_a.png").write_bytes(textured_image(rng, size))
    manifest = pd.DataFrame(
        {
            "pair_id": ids,
            "structure_uri": [str(inputs / f"{p}_s.png") for p in ids],
            "appearance_uri": [str(inputs / f"{p}_a.png") for p in ids],
            "domain": [("cat", "dog", "wild")[i % 3] for i in range(pairs)],
        }
    )
    runs = []
    for index in range(methods):
        method = f"method{index}"
        run = root / method
        (run / "eval").mkdir(parents=True, exist_ok=True)
        manifest.to_parquet(run / "manifest.parquet", index=False)
        (run / "run.json").write_text(json.dumps({"method": method}))
        rows = []
        for number, pair_id in enumerate(ids):
            failed = index == methods - 1 and number == 0
            pair = run / "pairs" / pair_id
            pair.mkdir(parents=True, exist_ok=True)
            row = {
                "pair_id": pair_id,
                "method": method,
                "domain": manifest["domain"][number],
                "status": "failed" if failed else "done",
                "error": "pair failed in the run (synthetic)" if failed else None,
            }
            if not failed:
                (pair / "output.png").write_bytes(textured_image(rng, size))
                (pair / "_SUCCESS").write_bytes(b"")
                row.update(
                    {
                        STRUCTURE: float(rng.gamma(2, 0.02 * (index + 1))),
                        APPEARANCE: float(rng.beta(8, 2 + index)),
                        f"{STRUCTURE}__model": MODEL,
                        f"{APPEARANCE}__model": MODEL,
                        f"{STRUCTURE}__version": METRICS[STRUCTURE].version,
                        f"{APPEARANCE}__version": METRICS[APPEARANCE].version,
                    }
                )
            if index == 0:
                steps = np.arange(0, 200, 10)
                pd.DataFrame(
                    {
                        "step": steps,
                        "total": np.exp(-steps / 80) + 0.1,
                        "appearance": np.exp(-steps / 50),
                        "structure": 0.05 + 0 * steps,
                        "identity": 0.02 + 0 * steps,
                    }
                ).to_parquet(pair / "losses.parquet")
                row.update(
                    train_seconds=30.0 + number % 7, train_device="NVIDIA H100", train_peak_memory_bytes=2 * 2**30
                )
            rows.append(row)
        pd.DataFrame(rows).to_parquet(run / "eval" / "metrics.parquet", index=False)
        (run / "eval" / "evaluation.json").write_text(
            json.dumps(
                {
                    "metrics": {m: {"version": METRICS[m].version, "model": MODEL} for m in (STRUCTURE, APPEARANCE)},
                    "skipped": {},
                }
            )
        )
        runs.append(str(run))
    return runs
