"""Packs for `splice run --pack K`: which pairs train together, how many fit a GPU, and the worker-side rendezvous.

Driver side:
- `plan_packs`: pairs that share a backbone go into packs of up to K, same-size pairs first (their generators run
  as one grouped call per step, their memory is alike), then the remainders of every size together; the manifest
  order is kept otherwise. `packing_record` says in run.json how the pairs were grouped.
- `auto_pack_size`: K from the device's memory and the images' sizes (the rule is in its docstring).

Worker side (`PackRendezvous`): each pair of a pack runs the ordinary per-pair path (`fanout.run_pair`: skip if
done, record the attempt, read and decode its images, load its checkpoint, write its outputs) in its own thread.
Where that path would train the pair alone, the pair joins the rendezvous instead; once every pair of the pack has
joined or dropped out (done already, unreadable image), they train together (`trainer.train_pack`), and each
thread gets its pair's result the moment that pair is done, so it writes the pair's outputs while the rest train.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from pipeline.method.trainer import PairInput

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


# --- worker side ------------------------------------------------------------------------------------------------


@dataclass
class _Arrival:
    structure: object
    appearance: object
    config: object
    backbone: object
    device: object
    checkpoint: dict | None
    save_checkpoint: Callable | None


class PackRendezvous:
    """Gathers a pack's pairs from their threads, trains them together, hands each its own result."""

    def __init__(self, pair_ids: list[str], train_pack: Callable, **train_options):
        self._train_pack, self._train_options = train_pack, train_options
        self._changed = threading.Condition()
        self._expected = set(pair_ids)  # neither joined nor dropped out yet
        self._joined: dict[str, _Arrival] = {}
        self._outcomes: dict[str, object] = {}

    def member(self, pair_id: str) -> Callable:
        """A stand-in for `trainer.train_pair` (same signature) that trains this pair within the pack."""

        def train(structure, appearance, config, backbone, device, *, checkpoint=None, save_checkpoint=None, **_):
            with self._changed:
                self._joined[pair_id] = _Arrival(
                    structure, appearance, config, backbone, device, checkpoint, save_checkpoint
                )
                self._expected.discard(pair_id)
                self._changed.notify_all()
                self._changed.wait_for(lambda: pair_id in self._outcomes)
                outcome = self._outcomes[pair_id]
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return train

    def drop(self, pair_id: str) -> None:
        """This pair's thread is over (done, failed, or skipped): stop waiting for it."""
        with self._changed:
            self._expected.discard(pair_id)
            self._changed.notify_all()

    def run(self) -> None:
        """In the pack's own thread: wait for every pair, train those that joined, deliver every outcome."""
        with self._changed:
            self._changed.wait_for(lambda: not self._expected)
            joined = dict(self._joined)
        if not joined:
            return
        first = next(iter(joined.values()))
        pairs = [
            PairInput(pair_id, a.structure, a.appearance, a.config, a.checkpoint, a.save_checkpoint)
            for pair_id, a in joined.items()
        ]
        try:
            self._train_pack(pairs, first.backbone, first.device, on_result=self._deliver, **self._train_options)
        except BaseException as exc:  # the pack as a whole failed (e.g. out of memory): every waiting pair hears it
            self._deliver_missing(joined, exc)
            if not isinstance(exc, Exception):
                raise
        self._deliver_missing(joined, RuntimeError("the pack ended without a result for this pair (a bug)"))

    def _deliver_missing(self, joined, outcome) -> None:
        for pair_id in joined:
            if pair_id not in self._outcomes:
                self._deliver(pair_id, outcome)

    def _deliver(self, pair_id: str, outcome) -> None:
        with self._changed:
            self._outcomes[pair_id] = outcome
            self._changed.notify_all()
