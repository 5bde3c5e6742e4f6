"""Applying a trained SpliceNet to pairs: [CLS] codes, the appearance-strength mix, batched forward passes.

The method `splicenet` of `splice run`. No Ray and no storage here: the checkpoint's bytes come through the
`read_bytes(url)` the caller passes in (the fan-out passes its Storage's).

Choices the papers leave open, made here:
- Inference resolution. The net is fully convolutional. By default (`net_resolution="native"`) it runs at the
  structure image's own size, after --max-side and the pixel cap, as every per-pair method does: the output has the
  structure's size and is never resampled. `"training"` (or a number S) resizes the structure so its short side is
  the checkpoint's training resolution (or S), runs the net there and resizes the output back to the structure's
  size (bilinear, antialiased): closer to the scale the net saw in training when images are much larger than that.
- [CLS] codes come from the backbone the checkpoint names (its feature space is the one the net was trained on), at
  the backbone's own input size: each image, after --max-side, resized as `Resize(224, max_size=480)` exactly as in
  training and evaluation; the [CLS] of the last block before the final norm, as Splice's appearance descriptor.
- Appearance strength t (the journal's appearance interpolation): the net gets (1 - t) * cls(structure) +
  t * cls(appearance); t = 1 (default) is plain transfer, t = 0 the structure's own code. Only the codes a given
  t needs are computed (t = 1 needs no structure code).
- Batching: a task's pack of pairs goes through the backbone in as few passes as there are distinct image sizes, and
  through the net in one forward pass per distinct structure size (at most `max_batch` pairs per pass).
- Precision: the run's `precision` (auto: bf16 autocast on CUDA, fp32 on CPU, where outputs are bit-for-bit
  deterministic).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import SpliceError
from pipeline.method.backbone import DinoBackbone
from pipeline.method.config import TrainConfig
from pipeline.method.devices import device_name, peak_memory, reset_peak_memory
from pipeline.method.images import downscale_to
from pipeline.method.result import MethodResult
from pipeline.method.splicenet import load_net
from pipeline.method.trainer import resolve_precision

CHECKPOINT_FILE = "net.pt"  # what `splice train-net --out OUT` leaves for inference: OUT/net.pt
CHECKPOINT_FORMAT = "splicenet/1"
GPU_PACK = 32  # pairs per task (and per forward pass) on a GPU when --pack is auto; see benchmarks/splicenet.py
CPU_PACK = 8  # at most this many per task on CPUs, fewer where that would leave CPUs idle
CODE_BATCH = 64  # images per backbone pass when computing [CLS] codes
PIXELS_PER_PASS = 32 * 512 * 512  # at most this many structure pixels per forward pass: 32 at 512x512, 7 HD images
NET_RESOLUTIONS = ("native", "training")  # or a short side in pixels


@dataclass(frozen=True)
class SpliceNetOptions:
    """What `splice run --method splicenet` takes beyond the shared run settings."""

    checkpoint: str  # a `splice train-net` output folder (reads <folder>/net.pt) or a .pt file; any fsspec URL
    appearance_strength: float = 1.0  # t: the net gets (1 - t) * cls(structure) + t * cls(appearance)
    net_resolution: str = "native"  # native | training | a short side in pixels (see the module docstring)
    backbone: str | None = (
        None  # the backbone the codes come from; None: the checkpoint's (a different one is an error)
    )
    checkpoint_sha256: str | None = None  # filled in by `prepare`: the run's settings, so a new checkpoint is a new run
    net: dict | None = None  # filled in by `prepare`: the checkpoint's facts (config, step, resolution, domains)

    def __post_init__(self):
        if not self.checkpoint:
            raise SpliceError(
                "method splicenet needs --checkpoint URL: a `splice train-net` output folder or its net.pt"
            )
        if not isinstance(self.appearance_strength, (int, float)) or not 0.0 <= self.appearance_strength <= 1.0:
            raise SpliceError(
                f"--appearance-strength must be between 0 (the structure's own appearance) and 1 (the "
                f"appearance image's), got {self.appearance_strength!r}"
            )
        side = str(self.net_resolution)
        if side not in NET_RESOLUTIONS and not (side.isdigit() and int(side) >= 16):
            raise SpliceError(
                f"--net-resolution must be native, training or a short side of at least 16 pixels, "
                f"got {self.net_resolution!r}"
            )

    @classmethod
    def from_dict(cls, values: dict) -> SpliceNetOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpliceError(f"unknown splicenet option(s) {unknown}; known: {sorted(known)}")
        if "checkpoint" not in values:
            raise SpliceError(
                "method splicenet needs --checkpoint URL: a `splice train-net` output folder or its net.pt"
            )
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- the checkpoint --------------------------------------------------------------------------------------------


def checkpoint_file(url: str) -> str:
    """`--checkpoint OUT` and `--checkpoint OUT/net.pt` both mean OUT/net.pt: a URL whose last part ends in .pt or
    .pth is the file itself, anything else a training output folder. Local paths become absolute (workers have other
    working folders)."""
    stripped = url.rstrip("/") if "://" in url else os.path.abspath(os.path.expanduser(url))
    if stripped.rsplit("/", 1)[-1].endswith((".pt", ".pth")):
        return stripped
    return f"{stripped}/{CHECKPOINT_FILE}"


def read_checkpoint(url: str, read_bytes: Callable[[str], bytes]) -> tuple[bytes, str]:
    """The bytes of the checkpoint `url` names (see `checkpoint_file`) and their sha256; a clear error if absent."""
    path = checkpoint_file(url)
    try:
        data = read_bytes(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise SpliceError(
            f"SpliceNet checkpoint {path} does not exist: pass --checkpoint with a `splice train-net` "
            f"output folder (it holds {CHECKPOINT_FILE}) or the .pt file itself"
        ) from None
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def load_checkpoint_net(data: bytes, url: str) -> tuple[nn.Module, dict]:
    """(net in eval mode, frozen; its meta) from checkpoint bytes; a clear error naming `url` if it is not one."""
    try:
        net, meta = load_net(data, name=url)
    except SpliceError as exc:  # names the file and what is wrong with it; one line of it (torch.load's run on)
        if len(str(exc).strip().splitlines()) <= 1:
            raise
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "unreadable"
        raise SpliceError(
            f"{url}: not a readable SpliceNet checkpoint ({cause}): pass the net.pt that `splice train-net` wrote"
        ) from None
    except Exception as exc:  # noqa: BLE001  (whatever else the loader objects to, the user hears which file and why)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise SpliceError(
            f"{url}: not a SpliceNet checkpoint ({reason}): pass the net.pt that `splice train-net` wrote"
        ) from None
    if meta.get("format") != CHECKPOINT_FORMAT or not meta.get("backbone"):
        raise SpliceError(
            f"{url}: not a SpliceNet checkpoint of format {CHECKPOINT_FORMAT} with a backbone (format "
            f"{meta.get('format')!r}, backbone {meta.get('backbone')!r}): pass the net.pt that "
            f"`splice train-net` wrote"
        )
    return net.eval().requires_grad_(False), meta


def prepare(config: TrainConfig, options: dict, read_bytes: Callable[[str], bytes]) -> tuple[TrainConfig, dict]:
    """Driver side, before any work: read and check the checkpoint, fingerprint it, and take its backbone.

    Returns the run's config (backbone: the checkpoint's) and the resolved options (a SpliceNetOptions dict)."""
    # 1. options, 2. the checkpoint, 3. its backbone against --backbone, 4. the resolved options
    wanted = SpliceNetOptions.from_dict(options)
    url = checkpoint_file(wanted.checkpoint)
    data, sha256 = read_checkpoint(url, read_bytes)
    _, meta = load_checkpoint_net(data, url)
    backbone = str(meta["backbone"])
    if wanted.backbone and wanted.backbone != backbone:
        raise SpliceError(
            f"SpliceNet checkpoint {url} was trained on [CLS] codes of backbone {backbone}; --backbone "
            f"{wanted.backbone} would feed it codes from another feature space: drop --backbone (or "
            f"pass {backbone})"
        )
    if wanted.net_resolution == "training" and not meta.get("resolution"):
        raise SpliceError(
            f"SpliceNet checkpoint {url} records no training resolution: pass --net-resolution native "
            f"or a short side in pixels"
        )
    facts = {key: meta.get(key) for key in ("config", "step", "resolution", "domains")}
    resolved = dataclasses.replace(
        wanted, checkpoint=url, checkpoint_sha256=sha256, backbone=backbone, net=_jsonable(facts)
    )
    return config.replace(backbone=backbone), resolved.to_dict()


_NETS: dict[tuple[str, str], nn.Module] = {}  # (checkpoint sha256, device) -> net: loaded once per worker process
_NETS_LOCK = threading.Lock()


def cached_net(options: SpliceNetOptions, device: torch.device, read_bytes: Callable[[str], bytes]) -> nn.Module:
    """The run's net on `device`, read once per worker process; the checkpoint must still be the one the run
    started with (its sha256)."""
    key = (str(options.checkpoint_sha256), str(device))
    with _NETS_LOCK:
        if key not in _NETS:
            data, sha256 = read_checkpoint(options.checkpoint, read_bytes)
            if options.checkpoint_sha256 and sha256 != options.checkpoint_sha256:
                raise SpliceError(
                    f"SpliceNet checkpoint {options.checkpoint} changed since this run started "
                    f"({options.checkpoint_sha256} -> {sha256}): run again (a new checkpoint is a new "
                    f"run: another --out, or --force)"
                )
            net, _ = load_checkpoint_net(data, options.checkpoint)
            _NETS.clear()  # one run's net per worker at a time
            _NETS[key] = net.to(device)
        return _NETS[key]


# --- codes -----------------------------------------------------------------------------------------------------


@torch.no_grad()
def cls_codes(
    backbone: DinoBackbone,
    images: list[torch.Tensor],
    device: torch.device,
    *,
    antialias: bool = True,
    dtype: torch.dtype = torch.float32,
    batch: int = CODE_BATCH,
) -> torch.Tensor:
    """[CLS] codes (N, D) float32 of (3, H, W) uint8 images, each resized to the backbone's input for its own size
    (one at a time: full-size images never stack up); images of equal input size share a backbone pass."""
    prepared = [
        backbone.prepare(image[None].to(device=device, dtype=torch.float32) / 255.0, antialias)[0] for image in images
    ]  # (3, h, w) each, normalised
    codes: list[torch.Tensor | None] = [None] * len(images)
    for indices in _groups([tuple(pixels.shape[-2:]) for pixels in prepared], batch):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            cls = backbone.last_block(torch.stack([prepared[i] for i in indices])).cls_token  # (B, D)
        for i, code in zip(indices, cls.float()):
            codes[i] = code
    return torch.stack(codes)


def appearance_codes(
    backbone: DinoBackbone,
    structures: list[torch.Tensor],
    appearances: list[torch.Tensor],
    strength: float,
    device: torch.device,
    **options,
) -> torch.Tensor:
    """What the net is fed: (1 - t) * cls(structure) + t * cls(appearance), (N, D); only the codes t needs."""
    if strength == 1.0:
        return cls_codes(backbone, appearances, device, **options)
    if strength == 0.0:
        return cls_codes(backbone, structures, device, **options)
    codes = cls_codes(backbone, structures + appearances, device, **options)  # one pass where sizes agree
    structure, appearance = codes[: len(structures)], codes[len(structures) :]
    return (1.0 - strength) * structure + strength * appearance


# --- the net ---------------------------------------------------------------------------------------------------


def net_input_size(size: tuple[int, int], short_side: int | None) -> tuple[int, int]:
    """The size the net runs at for a structure of `size`: itself, or scaled so its short side is `short_side`."""
    if not short_side or min(size) == short_side:
        return tuple(size)
    scale = short_side / min(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


@torch.no_grad()
def transfer(
    net: nn.Module,
    backbone: DinoBackbone,
    structures: list[torch.Tensor],
    appearances: list[torch.Tensor],
    device: torch.device,
    *,
    strength: float = 1.0,
    short_side: int | None = None,
    precision: torch.dtype = torch.float32,
    antialias: bool = True,
    max_batch: int = GPU_PACK,
) -> list[torch.Tensor]:
    """SpliceNet outputs, (3, H, W) uint8 at each structure's size, for (3, H, W) uint8 structure/appearance images.

    1. the codes (see `appearance_codes`), 2. pairs grouped by the net's input size, 3. one forward pass per group
    of at most `max_batch` (and PIXELS_PER_PASS pixels), 4. back to each structure's size and to uint8."""
    codes = appearance_codes(
        backbone, structures, appearances, strength, device, antialias=antialias, dtype=precision
    )  # (N, D)
    outputs: list[torch.Tensor | None] = [None] * len(structures)
    sizes = [net_input_size(tuple(s.shape[-2:]), short_side) for s in structures]
    for indices in _groups(sizes, max_batch, pixels=PIXELS_PER_PASS):
        batch = torch.stack([_resized(structures[i], sizes[i]) for i in indices]).to(device)  # (B, 3, h, w) in [0, 1]
        with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
            result = net(batch, codes[indices].to(device)).float()  # (B, 3, h, w) in [0, 1]
        for i, image in zip(indices, result):
            target = tuple(structures[i].shape[-2:])
            if tuple(image.shape[-2:]) != target:
                image = F.interpolate(image[None], size=target, mode="bilinear", antialias=True, align_corners=False)[0]
            outputs[i] = image.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return outputs


def _resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, *size) float in [0, 1] (antialiased bilinear where the size changes)."""
    pixels = image.float() / 255.0
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    return F.interpolate(pixels[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def _groups(keys: list, batch: int, pixels: int | None = None) -> list[torch.Tensor]:
    """Indices of equal keys together, in chunks of at most `batch` (and, for (h, w) keys, of at most `pixels`
    pixels, one at least), in first-seen order."""
    groups: dict = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    chunks = []
    for key, members in groups.items():
        size = max(1, min(batch, pixels // (key[0] * key[1]))) if pixels else max(1, batch)
        chunks += [torch.tensor(members[i : i + size]) for i in range(0, len(members), size)]
    return chunks


# --- the fan-out's hooks ---------------------------------------------------------------------------------------


def apply_pack(
    pairs: list,
    backbone: DinoBackbone,
    device: torch.device,
    *,
    on_result: Callable,
    options: dict,
    read_bytes: Callable[[str], bytes],
    max_batch: int | None = None,
) -> None:
    """Worker side: apply the net to a pack of pairs (trainer.PairInput: pair_id, structure, appearance, config)
    in batches; on_result(pair_id, MethodResult or the exception that pair failed with) for each."""
    started = time.perf_counter()
    device = torch.device(device)
    settings = SpliceNetOptions.from_dict(options)
    reset_peak_memory(device)
    # 1. the net, once per worker; a pair whose manifest row names another backbone fails alone
    net = cached_net(settings, device, read_bytes)
    code_dim = getattr(getattr(net, "config", None), "code_dim", None)
    width = int(backbone.vit.embed_dim)
    if code_dim is not None and int(code_dim) != width:
        raise SpliceError(
            f"SpliceNet checkpoint {settings.checkpoint} takes {code_dim}-d codes but backbone "
            f"{backbone.spec} gives {width}-d [CLS] tokens"
        )
    ready = []
    for pair in pairs:
        if pair.config.backbone != settings.backbone:
            on_result(
                pair.pair_id,
                SpliceError(
                    f"its manifest row asks for backbone {pair.config.backbone}, but SpliceNet checkpoint "
                    f"{settings.checkpoint} was trained on {settings.backbone}: drop the row's backbone"
                ),
            )
        else:
            ready.append(pair)
    if not ready:
        return
    # 2. the inputs, as the per-pair methods see them (after --max-side)
    config = ready[0].config
    structures = [downscale_to(pair.structure, pair.config.max_side) for pair in ready]
    appearances = [downscale_to(pair.appearance, pair.config.max_side) for pair in ready]
    precision = resolve_precision(config.precision, device)
    short_side = _short_side(settings)
    # 3. the transfer, 4. one result per pair
    outputs = transfer(
        net,
        backbone,
        structures,
        appearances,
        device,
        strength=float(settings.appearance_strength),
        short_side=short_side,
        precision=precision,
        antialias=config.antialias,
        max_batch=max_batch or max(len(ready), 1),
    )
    seconds = time.perf_counter() - started
    facts = {
        "method": "splicenet",
        "backbone": backbone.spec,
        "weights_id": backbone.weights_id,
        "random_backbone": backbone.is_random,
        "checkpoint": settings.checkpoint,
        "checkpoint_sha256": settings.checkpoint_sha256,
        "net_step": (settings.net or {}).get("step"),
        "appearance_strength": float(settings.appearance_strength),
        "net_resolution": str(settings.net_resolution),
        "device": str(device),
        "device_name": device_name(device),
        "precision": str(precision).replace("torch.", ""),
        "pack_size": len(ready),
        "pack_seconds": seconds,
        "torch_version": torch.__version__,
        **peak_memory(device),
        "backbone_resize": {"rule": "torchvision Resize(224, max_size=480)", "antialias": config.antialias},
        "seconds": seconds / len(ready),  # its share of the pack's time: the pack ran in one pass
        "steps": 0,
        "final_losses": {},
    }
    for pair, structure, appearance, output in zip(ready, structures, appearances, outputs):
        meta = {
            **facts,
            "structure_size": list(structure.shape[-2:]),
            "appearance_size": list(appearance.shape[-2:]),
            "net_size": list(net_input_size(tuple(structure.shape[-2:]), short_side)),
        }
        on_result(pair.pair_id, MethodResult(output=output, losses=[], meta=meta))


def _short_side(options: SpliceNetOptions) -> int | None:
    if options.net_resolution == "native":
        return None
    if options.net_resolution == "training":
        return int((options.net or {}).get("resolution") or 0) or None
    return int(options.net_resolution)


def pack_size(pairs: int, slots: int, gpus: float) -> int:
    """Pairs per task (and per forward pass) when --pack is auto: GPU_PACK on GPUs; on CPUs as many as spread the
    pairs over every CPU slot, at most CPU_PACK."""
    if gpus:
        return GPU_PACK
    return max(1, min(CPU_PACK, math.ceil(pairs / max(1, slots))))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    return str(value)
