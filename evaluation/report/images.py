"""The report's images: each read once, encoded once, stored once and shown from anywhere in the page by its key.

Two ways to store them (`splice report --assets`):
- inline (default): JPEG data URIs in report.html itself, so the page is one file that works offline anywhere.
  Size budget (for the whole page: 60 MB at 1000 pairs x 4 methods, i.e. 6000 images):
  * view images (every structure, appearance and output image, shown in the pair views, tables and grids):
    `VIEW_BUDGET` bytes in all. The long side and quality come from `VIEW_LADDER`: the largest step whose mean
    encoded size, measured on a seeded sample of the images, fits the budget per image (384 px for small runs,
    about 160 px at 1000 x 4 for photographs); if the budget runs out anyway, the remaining images take the last
    step;
  * full-resolution images (click on a view image): long side capped at `FULL_SIDE` px, quality `FULL_QUALITY`,
    pair by pair in priority order (the sampled examples, then the worst/best pairs, then the rest) until
    `FULL_BUDGET` bytes are spent; a pair past it says so and names its files. An image no larger than its view
    is not stored twice.
  The rest of the page (tables, per-pair rows and views, SVG plots and loss curves) takes about 11 MB at that scale.
- external: JPEG files under assets/ beside report.html (the view images, `EXTERNAL_VIEW` px), and full resolution
  links to the stored images themselves (a relative path when the run is on this machine).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipeline.method.images import decode_image
from pipeline.runs import layout
from pipeline.storage import Storage, is_local, redact_text, redact_url

log = logging.getLogger(__name__)

MODES = ("inline", "external")
VIEW_LADDER = [
    (384, 85),
    (320, 82),
    (256, 80),
    (224, 78),
    (192, 76),
    (160, 74),
    (128, 72),
    (112, 70),
    (96, 68),
    (80, 65),
    (64, 60),
]  # (long side px, JPEG quality), best first
VIEW_BUDGET = 34 * 2**20  # bytes of view images (as base64) in one report.html
FULL_SIDE, FULL_QUALITY = 1024, 85
FULL_BUDGET = 10 * 2**20  # bytes of full-resolution images (as base64) in one report.html
EXTERNAL_VIEW = (384, 85)
ASSETS = "assets"
SAMPLE = 12  # images encoded at every ladder step to choose the view size
READ_THREADS = 8


@dataclass
class ImageSource:
    key: str  # short id used in the page
    url: str  # where the image is stored
    what: str  # for messages: "structure image of pair p0"


@dataclass
class ImageStore:
    """key -> src of every image (data URI or relative path), its full-resolution src, or why it is missing."""

    mode: str
    view: dict[str, str] = field(default_factory=dict)
    full: dict[str, str] = field(default_factory=dict)  # "" where the view image is already at full resolution
    errors: dict[str, str] = field(default_factory=dict)
    original: dict[str, str] = field(default_factory=dict)  # key -> the stored image's URL (redacted)
    view_step: tuple[int, int] = EXTERNAL_VIEW
    view_bytes: int = 0
    full_bytes: int = 0
    full_pairs: int = 0  # pairs whose full-resolution images are in the page
    pairs: int = 0

    def note(self) -> str:
        """One sentence for the page: how the images are stored and what was left out."""
        side, quality = self.view_step
        if self.mode == "external":
            return (
                f"Images: JPEG files under {ASSETS}/ (long side {side} px, quality {quality}); click one for the "
                f"stored image at full resolution."
            )
        text = (
            f"Images are embedded in this file: views as JPEG, long side up to {side} px, quality {quality} "
            f"({self.view_bytes / 2**20:.1f} MB); click one for full resolution (where the stored image is "
            f"larger than its view, a JPEG with long side up to {FULL_SIDE} px: {self.full_bytes / 2**20:.1f} MB)"
        )
        if self.full_pairs < self.pairs:
            text += (
                f", embedded for {self.full_pairs} of {self.pairs} pairs (the examples and the worst and best "
                f"first) to keep the page under its size budget; `splice report --assets external` links every one"
            )
        return text + "."


def build_store(
    storage: Storage,
    pairs: list[list[ImageSource]],
    out_dir: str,
    mode: str = "inline",
    *,
    view_budget: int | None = None,
    full_budget: int | None = None,
    seed: int = 0,
) -> ImageStore:
    """Encode every pair's images (`pairs` in priority order, each a list of its sources) into an ImageStore."""
    view_budget = VIEW_BUDGET if view_budget is None else view_budget
    full_budget = FULL_BUDGET if full_budget is None else full_budget
    if mode not in MODES:
        raise ValueError(f"--assets {mode!r}: use inline or external")
    store = ImageStore(mode, pairs=len(pairs))
    count = sum(len(p) for p in pairs)
    if mode == "inline" and count:
        store.view_step = _choose_step(storage, [s for p in pairs for s in p], view_budget / count, seed)
    full_budget = full_budget if mode == "inline" else 0

    def encode_pair(sources: list[ImageSource]):
        """In a reader thread: decode, write or encode the view images, keep the decoded ones if full ones may fit."""
        views, images = {}, {}
        for source in sources:
            try:
                image = _load(storage, source)
            except Exception as exc:  # an image that cannot be shown is shown as such, never fails the report
                views[source.key] = exc
                continue
            if mode == "external":
                name = f"{ASSETS}/{source.key}.jpg"
                storage.write_bytes(layout.join(out_dir, name), _jpeg(image, *EXTERNAL_VIEW))
                views[source.key] = name
            else:  # past the budget (images larger than the sample suggested), the smallest step
                side, quality = store.view_step if store.view_bytes < view_budget else VIEW_LADDER[-1]
                views[source.key] = _data_uri(image, side, quality)
                if max(image.size) <= side:  # the view is the image at full resolution already
                    images[source.key] = None
            if store.full_bytes < full_budget and source.key not in images:
                images[source.key] = image
        return sources, views, images

    with ThreadPoolExecutor(READ_THREADS) as pool:
        for start in range(0, len(pairs), 4 * READ_THREADS):  # in order: the full-size budget goes to the first pairs
            for sources, views, images in pool.map(encode_pair, pairs[start : start + 4 * READ_THREADS]):
                _add_pair(store, sources, views, images, out_dir, full_budget)
    if mode == "external":
        store.full_pairs = store.pairs
    return store


def _add_pair(store: ImageStore, sources, views, images, out_dir: str, full_budget: int) -> None:
    full = {}
    for source in sources:
        store.original[source.key] = redact_url(source.url)
        view = views[source.key]
        if isinstance(view, Exception):
            store.errors[source.key] = redact_text(f"{source.what}: {view}")
            continue
        store.view[source.key] = view
        if store.mode == "inline":
            store.view_bytes += len(view)
        link = _link(source.url, out_dir) if store.mode == "external" else None
        if link:
            store.full[source.key] = link
        elif source.key in images and images[source.key] is None:
            full[source.key] = ""  # "": the view image is the full resolution
        elif source.key in images and store.full_bytes < full_budget:
            full[source.key] = _data_uri(images[source.key], FULL_SIDE, FULL_QUALITY)
    size = sum(len(v) for v in full.values())
    if full and store.full_bytes + size <= full_budget and len(full) == len(images):
        store.full.update(full)
        store.full_bytes += size
        store.full_pairs += 1


def _load(storage: Storage, source: ImageSource) -> Image.Image:
    tensor = decode_image(storage.read_bytes(source.url), redact_url(source.url))
    return Image.fromarray(tensor.permute(1, 2, 0).numpy())


def _choose_step(storage: Storage, sources: list[ImageSource], per_image: float, seed: int) -> tuple[int, int]:
    """The largest ladder step whose mean data-URI size on a seeded sample fits `per_image` (with 10% to spare)."""
    rng = np.random.default_rng(seed)
    picked = [sources[i] for i in sorted(rng.choice(len(sources), min(SAMPLE, len(sources)), replace=False))]
    images = []
    for source in picked:
        try:
            images.append(_load(storage, source))
        except Exception:
            continue
    if not images:
        return VIEW_LADDER[0]
    for side, quality in VIEW_LADDER:
        mean = sum(len(_data_uri(image, side, quality)) for image in images) / len(images)
        if mean * 1.1 <= per_image:
            return side, quality
    return VIEW_LADDER[-1]


def _jpeg(image: Image.Image, side: int, quality: int) -> bytes:
    if max(image.size) > side:
        scale = side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _data_uri(image: Image.Image, side: int, quality: int) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(_jpeg(image, side, quality)).decode("ascii")


def _link(url: str, out_dir: str) -> str | None:
    """A link from the report folder to a stored image: relative on this machine, None for remote storage."""
    if not (is_local(url) and is_local(out_dir)):
        return None
    path = os.path.abspath(url.removeprefix("file://"))
    return posixpath.join(*os.path.relpath(path, os.path.abspath(out_dir.removeprefix("file://"))).split(os.sep))
