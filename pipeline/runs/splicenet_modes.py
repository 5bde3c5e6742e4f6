"""`splice splicenet modes`: the appearance modes of a SpliceNet's domain, written to storage.

1. the checkpoint (its backbone: the codes' feature space), 2. the manifest's images (unique URIs; both columns by
default: the training set's appearances), 3. their [CLS] codes, streamed in chunks, 4. k-means
(pipeline/method/appearance_modes.py), 5. OUT/modes.pt (the centres, for the net), OUT/modes.json (counts, nearest
image per mode, settings), and with a structure image OUT/modes.png: that image rendered with every mode.
"""

from __future__ import annotations

import io
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

from manifests.schema import read_manifest
from pipeline.errors import SpliceError
from pipeline.method.appearance_modes import kmeans
from pipeline.method.images import (
    ImageError,
    decode_image,
    downscale_to,
    encode_png,
    max_input_bytes,
)
from pipeline.method.splicenet import checkpoint_file, load_checkpoint_net, read_checkpoint
from pipeline.method.splicenet_apply import cls_codes
from pipeline.runs import layout
from pipeline.storage import Storage, redact_url

log = logging.getLogger(__name__)
MODES_FORMAT = "splicenet-modes/1"
IMAGE_ROLES = {
    "both": ("structure_uri", "appearance_uri"),
    "structure": ("structure_uri",),
    "appearance": ("appearance_uri",),
}
CHUNK = 128  # images read and encoded at a time (bounded memory for large manifests)


@dataclass(frozen=True)
class ModesSettings:
    checkpoint: str  # a `splice train-net` output folder or its net.pt (any fsspec URL)
    manifest: str  # whose images' codes are clustered
    out: str  # folder for modes.pt, modes.json (and modes.png)
    k: int = 9  # number of modes
    seed: int = 0  # k-means++ seeding
    restarts: int = 4  # k-means seedings, the lowest inertia kept
    images: str = "both"  # which manifest column(s): both | structure | appearance
    domains: tuple[str, ...] = ()  # only rows of these manifest domains (none: every row)
    limit: int | None = None  # at most this many images (first in manifest order)
    structure: str | None = None  # render this image with every mode into modes.png
    max_side: int | None = 512  # images downscaled so their long side is at most this (the codes see 224 px anyway)
    backbone: str | None = None  # must be the checkpoint's if given
    device: str = "auto"  # auto | cpu | cuda
    storage_options: dict = field(default_factory=dict)  # never logged


def write_modes(settings: ModesSettings) -> dict:
    """Compute and write the modes; returns what modes.json holds."""
    from pipeline.method.backbone import load_backbone
    from pipeline.method.trainer import resolve_device

    storage = Storage(settings.storage_options)
    if settings.images not in IMAGE_ROLES:
        raise SpliceError(f"--images must be one of {', '.join(IMAGE_ROLES)}, got {settings.images!r}")
    # 1. the checkpoint and its backbone
    url = checkpoint_file(settings.checkpoint)
    data, sha256 = read_checkpoint(url, storage.read_bytes)
    net, meta = load_checkpoint_net(data, redact_url(url))
    spec = str(meta["backbone"])
    if settings.backbone and settings.backbone != spec:
        raise SpliceError(
            f"SpliceNet checkpoint {redact_url(url)} was trained on [CLS] codes of backbone {spec}, not "
            f"{settings.backbone}: drop --backbone (or pass {spec})"
        )
    # 2. the images
    uris = _image_uris(settings, storage)
    if len(uris) < settings.k:
        raise SpliceError(
            f"manifest {redact_url(settings.manifest)} has {len(uris)} image(s) for k = {settings.k} "
            f"modes: lower -k or give more images"
        )
    device = resolve_device(settings.device)
    backbone = load_backbone(spec, device)
    # 3. the codes
    codes, kept, skipped = _codes(uris, backbone, device, settings, storage)
    if len(kept) < settings.k:
        raise SpliceError(f"only {len(kept)} of {len(uris)} image(s) could be read, fewer than k = {settings.k}")
    # 4. k-means
    modes = kmeans(codes, settings.k, seed=settings.seed, restarts=settings.restarts)
    # 5. outputs
    record = {
        "format": MODES_FORMAT,
        "k": settings.k,
        "seed": settings.seed,
        "restarts": settings.restarts,
        "checkpoint": redact_url(url),
        "checkpoint_sha256": sha256,
        "backbone": spec,
        "weights_id": backbone.weights_id,
        "manifest": redact_url(settings.manifest),
        "images_role": settings.images,
        "domains": list(settings.domains),
        "images": len(kept),
        "max_side": settings.max_side,
        "skipped": [{"uri": redact_url(u), "error": e} for u, e in skipped],
        "inertia": modes.inertia,
        "iterations": modes.iterations,
        "modes": [
            {
                "mode": i,
                "count": int(modes.counts[i]),
                "nearest_image": redact_url(kept[int(modes.nearest[i])]),
                "nearest_distance": float((codes[int(modes.nearest[i])] - modes.centres[i]).norm()),
            }
            for i in range(settings.k)
        ],
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    buffer = io.BytesIO()
    torch.save(
        {
            "format": MODES_FORMAT,
            "centres": modes.centres,
            "counts": modes.counts,
            "backbone": spec,
            "checkpoint_sha256": sha256,
            "k": settings.k,
            "seed": settings.seed,
        },
        buffer,
    )
    storage.write_bytes(layout.join(settings.out, "modes.pt"), buffer.getvalue())
    if settings.structure:
        grid = _render(net.to(device), backbone, modes.centres, settings, storage, device)
        storage.write_bytes(layout.join(settings.out, "modes.png"), encode_png(grid))
        record["grid"] = {
            "structure": redact_url(settings.structure),
            "file": "modes.png",
            "layout": "structure image first, then mode 0, 1, ... row by row",
        }
    storage.write_bytes(layout.join(settings.out, "modes.json"), json.dumps(record, indent=2).encode())
    return record


def _image_uris(settings: ModesSettings, storage: Storage) -> list[str]:
    manifest = read_manifest(settings.manifest, storage)
    frame = manifest.frame
    if settings.domains:
        if "domain" not in frame.columns:
            raise SpliceError(f"--domain given but manifest {redact_url(settings.manifest)} has no domain column")
        frame = frame[frame["domain"].isin(settings.domains)]
        if frame.empty:
            raise SpliceError(
                f"manifest {redact_url(settings.manifest)} has no rows of domain(s) {', '.join(settings.domains)}"
            )
    uris: dict[str, None] = {}  # unique, in manifest order
    for row in frame.to_dict("records"):
        for column in IMAGE_ROLES[settings.images]:
            uris.setdefault(row[column], None)
    uris = list(uris)
    return uris[: settings.limit] if settings.limit else uris


def _codes(uris: list[str], backbone, device, settings: ModesSettings, storage: Storage):
    """[CLS] codes (N, D) of the readable images, their URIs, and (URI, error) of the others; CHUNK at a time."""

    def load(uri: str):
        try:
            data = storage.read_input(uri, max_bytes=max_input_bytes())
            return downscale_to(decode_image(data, redact_url(uri)), settings.max_side), None
        except (ImageError, OSError, SpliceError) as exc:
            return None, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__

    codes, kept, skipped = [], [], []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for start in range(0, len(uris), CHUNK):
            chunk = uris[start : start + CHUNK]
            loaded = list(pool.map(load, chunk))
            images = [image for image, _ in loaded if image is not None]
            for uri, (image, error) in zip(chunk, loaded):
                if image is None:
                    log.warning("skipping image %s: %s", redact_url(uri), error)
                    skipped.append((uri, error))
                else:
                    kept.append(uri)
            if images:
                codes.append(cls_codes(backbone, images, device).cpu())
            log.info("codes of %d / %d image(s)", min(start + CHUNK, len(uris)), len(uris))
    return (torch.cat(codes) if codes else torch.zeros(0, 0)), kept, skipped


def _render(net, backbone, centres: torch.Tensor, settings: ModesSettings, storage: Storage, device) -> torch.Tensor:
    """A grid (3, H, W) uint8: the structure image, then the net's output for it with each mode's code."""
    structure = downscale_to(
        decode_image(
            storage.read_input(settings.structure, max_bytes=max_input_bytes()), redact_url(settings.structure)
        ),
        settings.max_side,
    )
    tiles = [structure]
    with torch.no_grad():
        for codes in centres.split(16):  # the structure with up to 16 modes per forward pass
            batch = structure[None].float().div(255).expand(len(codes), -1, -1, -1).to(device)  # (B, 3, H, W)
            outputs = net(batch, codes.to(device)).float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
            tiles += list(outputs)
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    height, width = structure.shape[-2:]
    grid = torch.full((3, rows * height, columns * width), 255, dtype=torch.uint8)
    for n, tile in enumerate(tiles):
        row, column = divmod(n, columns)
        grid[:, row * height : (row + 1) * height, column * width : (column + 1) * width] = tile
    return grid
