"""Packs for `splice run --pack K`: which pairs train together, and how many fit a GPU (the pack rule).

- `plan`: the driver's whole decision for a run's pairs: K from --pack, the method (a batched method says its own
  batch; methods that do not pack get packs of one) or the auto rule, and `packing_record` for run.json.
- `plan_packs`: pairs that share a backbone go into packs of up to K, same-size pairs first (their generators run
  as one grouped call per step, their memory is alike), then the remainders of every size together; the manifest
  order is kept otherwise.
- `auto_pack_size`: K from the device's memory and the images' sizes (the rule is in its docstring); the images'
  sizes come from their headers (`image_size`), the device's memory from one GPU task (worker.device_probe).

What a pack does on its worker: rendezvous.py.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import ray
from PIL import Image

from pipeline.method.registry import get_method
from pipeline.runs import ray_session
from pipeline.runs.jobs import PairJob, RunSettings
from pipeline.runs.worker import device_probe
from pipeline.storage import Storage

log = logging.getLogger(__name__)
MAX_PACK = 16  # above this the step is compute-bound on an H100 already: more pairs per pack add memory, not speed
HEADER_BYTES = 1 << 16  # image sizes are read from the first 64 KiB (JPEG/PNG/WebP headers), never the whole file

# Memory per pair for the auto rule, measured with saved-tensor hooks (what autograd keeps for the backward) on the
# real modules (2026-11-27): the generator keeps ~1.9 KB per input pixel (fp32; 2.07 KB at 128 px, 1.87 KB at
# 256 px); the backbone keeps per 224x224 image with an input gradient 335 MiB (ViT-B/8) and 63 MiB (ViT-S/16)
# under bf16 autocast, about twice that in fp32. Per pair the rule counts both crops and the whole structure image
# through the generator (on full-image steps every pair's graph is alive at once) and two backbone images with
# gradient. For one HD pair that gives 6.1 GB, above the 4.5 GiB peak measured for it on an H100: a safe side.
GENERATOR_BYTES_PER_PIXEL = 1900
BACKBONE_BYTES_PER_IMAGE = {8: 340 * 2**20, 16: 120 * 2**20}  # by patch size, bf16 (ViT-B; ViT-S needs less)
RESERVED_BYTES = 3 * 2**30  # backbone weights, CUDA context, workspace


def auto_pack_size(
    device_memory_bytes: int | None, sizes: list[tuple] | None, backbone_patch: int = 8, fp32: bool = False
) -> int:
    """K for `--pack auto`: 1 without a GPU; on a GPU, as many pairs as fit its memory, at most MAX_PACK.

    per pair = GENERATOR_BYTES_PER_PIXEL x (structure crop + appearance crop + whole structure image, in pixels)
               + 2 x BACKBONE_BYTES_PER_IMAGE (x 2 in fp32);
    K = (memory - RESERVED_BYTES) // (per pair of the largest pair), clamped to [1, MAX_PACK], where memory is the
    GPU's total times the task's share of it (--gpus-per-task). E.g. an 80 GB H100, ViT-B/8, bf16: 512x512 pairs
    -> 16; the HD pair (1200x900 / 1280x982) -> 13.
    """
    if not device_memory_bytes:
        return 1
    known = [size for size in (sizes or []) if size and all(size)]
    if not known:
        known = [((512, 512), (512, 512))]
    largest = max(pair_bytes(structure, appearance, backbone_patch, fp32) for structure, appearance in known)
    return int(max(1, min(MAX_PACK, (device_memory_bytes - RESERVED_BYTES) // largest)))


def pair_bytes(
    structure: tuple[int, int], appearance: tuple[int, int], backbone_patch: int = 8, fp32: bool = False
) -> int:
    """The auto rule's estimate of one pair's training memory (see auto_pack_size)."""
    pixels = (
        min(structure) ** 2 + min(appearance) ** 2 + structure[0] * structure[1]
    )  # square crops up to the short side
    backbone = BACKBONE_BYTES_PER_IMAGE.get(backbone_patch, BACKBONE_BYTES_PER_IMAGE[8]) * (2 if fp32 else 1)
    return GENERATOR_BYTES_PER_PIXEL * pixels + 2 * backbone


def plan_packs(
    items: list,
    pack_size: int,
    key: Callable[[object], tuple],
    size: Callable[[object], tuple | None] = lambda item: None,
) -> list[list]:
    """Split `items` into packs of at most `pack_size`: items with equal key() only (e.g. the backbone), those of
    equal size() next to each other; otherwise in their given order."""
    if pack_size < 1:
        raise ValueError(f"pack size must be at least 1, got {pack_size}")
    order = {id(item): n for n, item in enumerate(items)}
    groups: dict[tuple, list] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    packs = []
    for members in groups.values():
        by_size: dict = {}
        for item in members:
            by_size.setdefault(size(item), []).append(item)
        # same-size packs first (their generators run as one grouped call), then the remainders of every size
        leftovers = []
        for same in by_size.values():
            whole = len(same) - len(same) % pack_size
            packs += [same[i : i + pack_size] for i in range(0, whole, pack_size)]
            leftovers += same[whole:]
        packs += [leftovers[i : i + pack_size] for i in range(0, len(leftovers), pack_size)]
    return sorted(packs, key=lambda pack: order[id(pack[0])])


def packing_record(packs: list[list], rule: str, pack_size: int, size: Callable[[object], tuple | None]) -> dict:
    """How a run's pairs were grouped, for run.json: the rule, the number of packs, how many hold pairs of one
    image size (one grouped generator call per step) and how many mix sizes, the grouped calls per step they make
    (one per image size in a pack), and a histogram of pack sizes."""
    sizes_per_pack = [{size(item) for item in pack} for pack in packs]
    same = sum(1 for sizes in sizes_per_pack if len(sizes) == 1 and None not in sizes)
    histogram: dict[str, int] = {}
    for pack in packs:
        histogram[str(len(pack))] = histogram.get(str(len(pack)), 0) + 1
    return {
        "rule": rule,
        "pack_size": pack_size,
        "pairs": sum(len(pack) for pack in packs),
        "packs": len(packs),
        "same_size_packs": same,
        "mixed_size_packs": len(packs) - same,
        "generator_groups": sum(len(sizes) for sizes in sizes_per_pack),
        "pack_sizes": dict(sorted(histogram.items(), key=lambda item: int(item[0]))),
    }


def image_size(read_range: Callable[[int], bytes]) -> tuple[int, int] | None:
    """(height, width) of an encoded image, EXIF orientation applied, from its first bytes; None if unknown."""
    try:
        with Image.open(io.BytesIO(read_range(HEADER_BYTES))) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112)
    except Exception:  # unreadable here: the worker reports it properly; it only loses its place in a group
        return None
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def plan(todo: list[PairJob], settings: RunSettings, gpus: float) -> tuple[list[list[PairJob]], dict]:
    """Packs of pairs: of one backbone each, same-size pairs first; K from --pack or the auto rule. Also returns
    how they were grouped (run.json's `packing`)."""
    method = get_method(settings.method)
    size = settings.pack if method.packs or method.batched is not None else 1
    rule = f"--pack {size}" if size is not None else "auto"
    if size is None and method.batched is not None:  # inference in batches: the method says how many per task
        size = method.batched.pack_size(len(todo), ray_session.slots(settings.cpus_per_task, gpus), gpus)
    if size == 1 or len(todo) == 1 or (size is None and not gpus):
        packs = [[job] for job in todo]
        why = "one pair per task" + ("" if method.packs or method.batched else f" (method {method.name} does not pack)")
        return packs, packing_record(packs, f"{rule}: {why}", 1, lambda job: None)
    sizes = probe_sizes(
        [(job.pair_id, job.structure_uri, job.appearance_uri) for job in todo], Storage(settings.storage_options)
    )
    if size is None:
        size = _auto_pack_size(todo, sizes, settings, gpus)
        rule = "auto: same-size pairs first, K from the GPU's memory (pipeline/runs/packs.py)"
    packs = plan_packs(todo, size, key=lambda job: (job.config.backbone,), size=lambda job: sizes.get(job.pair_id))
    record = packing_record(packs, rule, size, lambda job: sizes.get(job.pair_id))
    log.info(
        "%d pair(s) in %d pack(s) of up to %d (%d of one image size), %s GPU(s) per pack",
        len(todo),
        len(packs),
        size,
        record["same_size_packs"],
        gpus,
    )
    if method.packs and record["mixed_size_packs"] > record["same_size_packs"] and gpus:
        log.info(
            "most packs mix image sizes, whose generators cannot share calls: several packs per GPU overlap their "
            "launches (e.g. --gpus-per-task 0.25, with NVIDIA MPS on the nodes; docs/performance.md)"
        )
    return packs, record


def probe_sizes(pairs: list[tuple[str, str, str]], storage: Storage) -> dict[str, tuple]:
    """{pair_id: ((structure h, w), (appearance h, w))} of (pair_id, structure URI, appearance URI) triples, from
    the images' headers, read in parallel; pairs with an unreadable header are left out."""

    def read_header(uri: str):
        fs, path = storage.fs(uri)
        return image_size(lambda count: fs.cat_file(path, start=0, end=count))

    def probe(pair: tuple[str, str, str]):
        return pair[0], (read_header(pair[1]), read_header(pair[2]))

    with ThreadPoolExecutor(max_workers=16) as pool:
        return {pair_id: sizes for pair_id, sizes in pool.map(probe, pairs) if all(sizes)}


def _auto_pack_size(todo: list[PairJob], sizes: dict, settings: RunSettings, gpus: float) -> int:
    """--pack auto on GPUs: ask one GPU task for the device's memory and the backbone's patch size, then the rule
    of packs.auto_pack_size over the largest pair."""
    log.info("--pack auto: asking a GPU worker for its memory (--pack K skips this)")
    probe = device_probe.options(num_cpus=settings.cpus_per_task, num_gpus=gpus, max_retries=settings.max_retries)
    try:
        device = ray.get(probe.remote(todo[0].config.backbone))
    except ray.exceptions.RayError as exc:
        log.warning("--pack auto: the GPU probe failed (%s): one pair per task", str(exc).splitlines()[0][:200])
        return 1
    memory = int(device["memory_bytes"] * min(1.0, gpus)) if device["memory_bytes"] else None
    scaled = [
        (downscaled(s, todo[0].config.max_side), downscaled(a, todo[0].config.max_side)) for s, a in sizes.values()
    ]
    pack = auto_pack_size(memory, scaled, device.get("patch_size") or 8, fp32=todo[0].config.precision == "fp32")
    log.info(
        "--pack auto: %s with %.1f GiB for each task: %d pair(s) per pack", device["name"], (memory or 0) / 2**30, pack
    )
    return pack


def downscaled(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """The size of an image after --max-side (as images.downscale_to)."""
    if not max_side or max(size) <= max_side:
        return tuple(size)
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
