"""The method `splicenet` of `splice run`: the `batched` hooks (registry.Batched) the run fan-out drives.

`prepare` (driver, before any work: read and check the checkpoint, take its backbone), `apply_pack` (worker, per
pack of pairs: the transfer of pipeline/method/splicenet_apply.py, one MethodResult per pair) and `pack_size`
(pairs per task for --pack auto). No Ray and no storage here: the checkpoint's bytes come through the
`read_bytes(url)` the caller passes in (the fan-out passes its Storage's); the checkpoint file itself is
pipeline/method/splicenet.py's.

Inference resolution, a choice the papers leave open: the net is fully convolutional. By default
(`net_resolution="native"`) it runs at the structure image's own size, after --max-side and the pixel cap, as every
per-pair method does: the output has the structure's size and is never resampled. `"training"` (or a number S)
resizes the structure so its short side is the checkpoint's training resolution (or S), runs the net there and
resizes the output back to the structure's size (bilinear, antialiased): closer to the scale the net saw in
training when images are much larger than that.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import SpliceError
from pipeline.method.backbone import DinoBackbone
from pipeline.method.config import TrainConfig, from_dict
from pipeline.method.devices import device_name, peak_memory, reset_peak_memory
from pipeline.method.images import downscale_to
from pipeline.method.result import MethodResult
from pipeline.method.splicenet import checkpoint_file, load_checkpoint_net, read_checkpoint
from pipeline.method.splicenet_apply import GPU_PACK, net_input_size, transfer
from pipeline.method.trainer import resolve_precision

CPU_PACK = 8  # at most this many pairs per task on CPUs when --pack is auto, fewer where that would leave CPUs idle
NET_RESOLUTIONS = ("native", "training")  # or a short side in pixels
NEEDS_NET = "method splicenet needs --net URL: a `splice train-net` output folder or its net.pt"


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
            raise SpliceError(NEEDS_NET)
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
        if "checkpoint" in values or not set(values) <= {f.name for f in dataclasses.fields(cls)}:
            return from_dict(cls, values, what="splicenet option", error=SpliceError)
        raise SpliceError(NEEDS_NET)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


# --- the pack --------------------------------------------------------------------------------------------------


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
