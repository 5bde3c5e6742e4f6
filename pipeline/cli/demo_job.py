"""`splice demo`: a few pairs from images drawn here (no network), their manifest, and a run over them.

Structure images are neutral-coloured scenes with distinct shapes (the layout to keep); appearance images are
colourful gradients and patterns (the look to take). Everything is drawn procedurally from a seed.
"""

from __future__ import annotations

import io
import math
import os
import random

import numpy as np
from PIL import Image, ImageDraw

from pipeline.cli.demo_defaults import DEMO_PAIRS, DEMO_SIZE
from pipeline.runs import layout
from pipeline.storage import Storage

# --- drawing -------------------------------------------------------------------------------------------------


def _canvas(size: int, top, bottom) -> Image.Image:
    """A vertical gradient from colour `top` to colour `bottom`."""
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    rows = (1 - t) * np.array(top, dtype=float) + t * np.array(bottom, dtype=float)  # (size, 1, 3)
    return Image.fromarray(np.repeat(rows, size, axis=1).round().astype(np.uint8), mode="RGB")


def structure_shapes(size: int, rng: random.Random) -> Image.Image:
    image = _canvas(size, (200, 200, 195), (150, 150, 145))
    draw = ImageDraw.Draw(image)
    s = size
    draw.ellipse([0.08 * s, 0.12 * s, 0.42 * s, 0.46 * s], fill=(60, 60, 60))
    draw.rectangle([0.55 * s, 0.15 * s, 0.9 * s, 0.5 * s], fill=(100, 100, 100))
    draw.polygon([(0.2 * s, 0.9 * s), (0.5 * s, 0.55 * s), (0.8 * s, 0.9 * s)], fill=(30, 30, 30))
    return image


def structure_rings(size: int, rng: random.Random) -> Image.Image:
    image = _canvas(size, (180, 180, 180), (180, 180, 180))
    draw = ImageDraw.Draw(image)
    centre = (size * rng.uniform(0.4, 0.6), size * rng.uniform(0.4, 0.6))
    for index, radius in enumerate(np.linspace(0.45 * size, 0.06 * size, 6)):
        shade = 40 if index % 2 == 0 else 220
        draw.ellipse(
            [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius], fill=(shade,) * 3
        )
    return image


def structure_house(size: int, rng: random.Random) -> Image.Image:
    image = _canvas(size, (215, 215, 220), (120, 125, 120))
    draw = ImageDraw.Draw(image)
    s = size
    draw.rectangle([0.0, 0.78 * s, s, s], fill=(90, 90, 90))  # ground
    draw.rectangle([0.25 * s, 0.45 * s, 0.75 * s, 0.8 * s], fill=(160, 160, 160))  # walls
    draw.polygon([(0.18 * s, 0.47 * s), (0.5 * s, 0.18 * s), (0.82 * s, 0.47 * s)], fill=(70, 70, 70))  # roof
    draw.rectangle([0.44 * s, 0.6 * s, 0.56 * s, 0.8 * s], fill=(40, 40, 40))  # door
    draw.rectangle([0.3 * s, 0.52 * s, 0.4 * s, 0.62 * s], fill=(235, 235, 235))  # window
    return image


def structure_stripes(size: int, rng: random.Random) -> Image.Image:
    image = _canvas(size, (170, 170, 170), (170, 170, 170))
    draw = ImageDraw.Draw(image)
    width = max(2, size // 10)
    for offset in range(-size, 2 * size, 2 * width):
        draw.polygon(
            [(offset, 0), (offset + width, 0), (offset + width + size, size), (offset + size, size)],
            fill=(110, 110, 110),
        )
    radius = 0.2 * size
    draw.ellipse([size / 2 - radius, size / 2 - radius, size / 2 + radius, size / 2 + radius], fill=(25, 25, 25))
    return image


def appearance_sunset(size: int, rng: random.Random) -> Image.Image:
    image = _canvas(size, (255, 140, 40), (90, 30, 120))
    draw = ImageDraw.Draw(image)
    radius = 0.16 * size
    x, y = size * rng.uniform(0.3, 0.7), size * 0.55
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 230, 90))
    return image


def appearance_ocean(size: int, rng: random.Random) -> Image.Image:
    image = _canvas(size, (120, 200, 240), (10, 40, 110))
    draw = ImageDraw.Draw(image)
    for row in range(int(0.4 * size), size, max(3, size // 12)):
        phase = rng.uniform(0, math.tau)
        points = [(x, row + 3 * math.sin(x / size * 4 * math.pi + phase)) for x in range(0, size + 1, 4)]
        draw.line(points, fill=(220, 245, 255), width=max(1, size // 64))
    return image


def appearance_forest(size: int, rng: random.Random) -> Image.Image:
    image = _canvas(size, (170, 220, 120), (20, 70, 30))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y, r = size * rng.random(), size * rng.uniform(0.3, 1.0), size * rng.uniform(0.05, 0.15)
        draw.ellipse(
            [x - r, y - r, x + r, y + r], fill=(rng.randint(10, 60), rng.randint(90, 150), rng.randint(20, 60))
        )
    return image


def appearance_candy(size: int, rng: random.Random) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / size
    wave = 0.5 + 0.5 * np.sin((x + y) * 6 * math.pi)  # diagonal bands
    pink, cyan = np.array([255, 105, 180.0]), np.array([60, 220, 230.0])
    array = wave[..., None] * pink + (1 - wave[..., None]) * cyan
    return Image.fromarray(array.round().astype(np.uint8), mode="RGB")


STRUCTURES = {
    "shapes": structure_shapes,
    "rings": structure_rings,
    "house": structure_house,
    "stripes": structure_stripes,
}
APPEARANCES = {
    "sunset": appearance_sunset,
    "ocean": appearance_ocean,
    "forest": appearance_forest,
    "candy": appearance_candy,
}


# --- the demo ------------------------------------------------------------------------------------------------


def write_demo_inputs(
    folder: str, pairs: int = DEMO_PAIRS, size: int = DEMO_SIZE, seed: int = 0, storage: Storage | None = None
) -> list[str]:
    """Draw `pairs` pairs as `folder/<pair_id>/{structure,appearance}.png` (the pairs-dir layout); returns ids."""
    storage = storage or Storage()
    rng = random.Random(seed)
    structures, appearances = list(STRUCTURES.items()), list(APPEARANCES.items())
    pair_ids = []
    for index in range(pairs):
        structure_name, draw_structure = structures[index % len(structures)]
        appearance_name, draw_appearance = appearances[(index + 1 + index // len(structures)) % len(appearances)]
        pair_id = f"demo-{index:02d}-{structure_name}-{appearance_name}"
        for role, image in (("structure", draw_structure(size, rng)), ("appearance", draw_appearance(size, rng))):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            storage.write_bytes(layout.join(folder, pair_id, f"{role}.png"), buffer.getvalue())
        pair_ids.append(pair_id)
    return pair_ids


def run_demo(out: str, settings_for_run, *, pairs: int = DEMO_PAIRS, size: int = DEMO_SIZE):
    """Draw the inputs under `out/inputs`, build `out/inputs/manifest.parquet`, run into `out/run`."""
    from manifests.builders import build_pairs_dir
    from manifests.schema import validate_frame, write_manifest
    from pipeline.runs.fanout import run_manifest

    # 1. inputs and their manifest
    storage = Storage(settings_for_run.storage_options)
    inputs = layout.join(out, "inputs")
    write_demo_inputs(inputs, pairs=pairs, size=size, storage=storage)
    manifest_url = layout.join(inputs, "manifest.parquet")
    frame = validate_frame(build_pairs_dir(inputs, storage=storage), manifest_url)
    write_manifest(frame.assign(dataset="splice-demo"), manifest_url, storage)
    # 2. the run
    return manifest_url, run_manifest(manifest_url, settings_for_run)


REFERENCE_METHODS = ("structure-copy", "color-transfer")  # cheap baselines shown beside splice in the demo report


def compare_and_report(out: str, settings_for_run, manifest_url: str, *, progress: bool = True) -> tuple[list, str]:
    """Run the reference methods on the demo manifest, evaluate every run and write `out/report`.

    Returns the run summaries of the reference methods and the report folder. With a random backbone the metrics
    use it too (labelled as random in the tables); metrics whose weights are not available offline are skipped.
    """
    import dataclasses

    from evaluation.evaluate import evaluate_run
    from evaluation.report.build import build_report
    from pipeline.runs.fanout import run_manifest

    storage = Storage(settings_for_run.storage_options)
    # 1. the reference methods, into sibling run folders
    runs, summaries = [settings_for_run.out], []
    for method in REFERENCE_METHODS:
        reference = dataclasses.replace(settings_for_run, out=layout.join(out, method), method=method)
        summaries.append(run_manifest(manifest_url, reference))
        runs.append(reference.out)
    # 2. evaluation of every run (incremental: a re-run of the demo recomputes nothing)
    evaluation = demo_eval_settings(settings_for_run.config.backbone)
    for run in runs:
        print(evaluate_run(run, evaluation, storage=storage, progress=progress).line())
    # 3. tables and report.html
    report = layout.join(out, "report")
    build_report(runs, report, reference=REFERENCE_METHODS[0], storage=storage)
    return summaries, report


def demo_eval_settings(backbone: str):
    """The metrics' models for the demo: real weights where they are here or can be downloaded, else random weights
    of the same architecture (announced once, labelled in the tables). A random training backbone is evaluated with
    itself, so that a smoke run stays quick."""
    from torchvision.models import AlexNet_Weights, get_model_weights

    from evaluation.metrics import DEFAULT_METRICS, METRICS
    from evaluation.models import DINO_ROLES, EvalSettings
    from evaluation.segmenter import DEFAULT_SEGMENTER
    from evaluation.weights import can_have
    from pipeline.method.weights import announce_fallback, resolve_backbone

    if backbone.startswith("random:"):
        metric_backbone = backbone
    else:
        needed = {METRICS[m].model for m in DEFAULT_METRICS}  # the DINO roles the default metrics use
        resolved = {spec: resolve_backbone(spec, explicit=False) for role, spec in DINO_ROLES.items() if role in needed}
        for _, fallback in resolved.values():
            if fallback:
                announce_fallback(f"metric backbone {fallback}")
        metric_backbone = (
            ",".join(f"{spec}={used}" for spec, (used, _) in resolved.items())
            if any(fallback for _, fallback in resolved.values())
            else None
        )
    lpips_weights, segmenter = "pretrained", DEFAULT_SEGMENTER
    if not can_have(AlexNet_Weights.IMAGENET1K_V1.url):
        lpips_weights = "random"
        announce_fallback(
            "metric lpips_structure: the AlexNet weights are not in SPLICE_WEIGHTS_DIR nor the torch "
            "cache and cannot be downloaded: using RANDOM weights (labelled in the tables)"
        )
    if not can_have(get_model_weights(DEFAULT_SEGMENTER).DEFAULT.url):
        segmenter = f"random:{DEFAULT_SEGMENTER}"
        announce_fallback(
            f"metric layout_miou: the {DEFAULT_SEGMENTER} weights are not in SPLICE_WEIGHTS_DIR nor the "
            f"torch cache and cannot be downloaded: using RANDOM weights (labelled in the tables)"
        )
    return EvalSettings(metric_backbone=metric_backbone, lpips_weights=lpips_weights, segmenter=segmenter)


def default_out() -> str:
    return os.path.join(os.getcwd(), "demo-run")
