"""Methods a run can apply to each pair: Splice itself, cheap reference methods for benchmark tables, and plug-ins.

A method is a plain function of (structure, appearance, config) -> MethodResult (pipeline/method/result.py, what
the trainer returns too), where the images are (3, H, W) uint8 tensors, so one writer stores them all in the same
layout. `register_method` registers the function itself under its name with the facts the run needs (does it use
the backbone, can it resume from a checkpoint, which settings make its outputs comparable). Nothing here knows of
Ray or storage URLs.

  splice            the Splice generator, trained per pair (pipeline.method.trainer)
  structure-copy    the structure image itself: perfect structure, no appearance transfer (a floor/ceiling)
  appearance-copy   the appearance image, cropped to the structure's aspect and size: the opposite extreme
  color-transfer    Reinhard et al. (2001): per-channel mean/std of the structure image matched to the
                    appearance image's, in CIELAB
  splicenet         a trained SpliceNet (--checkpoint), applied to packs of pairs in batched forward passes
                    (pipeline/method/splicenet_batched.py)

Plug-ins (pipeline/plugins.py), without editing this file: `--method py:MODULE:FN` (MODULE importable or a path to
a .py file) or an entry point in group `splice.methods`. FN may be decorated with `register_method` to declare its
facts; a plain function is a method that uses no backbone and may return just the output image, (3, H, W) uint8.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import plugins
from pipeline.errors import SpliceError
from pipeline.method import splicenet_batched
from pipeline.method.config import TrainConfig
from pipeline.method.devices import device_name, peak_memory
from pipeline.method.images import downscale_to
from pipeline.method.result import MethodResult


def _max_side_only(config: TrainConfig) -> dict:
    return {"max_side": config.max_side}


@dataclass(frozen=True)
class Method:
    name: str  # recorded in run.json and results.parquet, the method's label in tables
    run: Callable[..., MethodResult]  # the function: (structure, appearance, config, **context) -> result
    uses_backbone: bool = False  # needs a DinoBackbone and a device
    resumable: bool = False  # accepts checkpoint / save_checkpoint
    packs: bool = False  # trains pairs together in packs (--pack): accepts `train`, the pack's trainer
    settings: Callable[[TrainConfig], dict] = field(default=_max_side_only, repr=False)  # what makes outputs comparable
    summary: str = ""  # what run.json says the method is
    version: str | None = None  # a plug-in's version, recorded in run.json
    spec: str = ""  # how workers name it again: its name, or a plug-in's py:MODULE:FN
    batched: Batched | None = None  # applies whole packs of pairs at once (splicenet); None: pair by pair

    def with_options(self, options: dict) -> Method:
        """This method with its options (e.g. splicenet's checkpoint and strength) in the settings run.json records,
        so a run with other options is another run."""
        if not options:
            return self
        base = self.settings
        return dataclasses.replace(self, settings=lambda config: {**base(config), **options})


@dataclass(frozen=True)
class Batched:
    """How the fan-out drives a method that applies whole packs of pairs at once. Every pack goes through `apply`
    (through worker.run_pack's rendezvous), a pack of one included."""

    prepare: Callable  # driver, before any work: (config, options, read_bytes) -> (config, resolved options)
    apply: Callable  # worker, per pack: (pairs, backbone, device, *, on_result, options, read_bytes)
    pack_size: Callable[[int, int, float], int]  # pairs per task for --pack auto: (pairs to do, task slots, GPUs/task)


METHODS: dict[str, Method] = {}  # name -> method: the built-ins below and plug-ins resolved so far
ENTRY_POINT_GROUP = "splice.methods"
_BY_SPEC: dict[str, Method] = {}  # plug-in spec -> its method, resolved once per process


def register_method(name: str, **facts) -> Callable[[Callable], Callable]:
    """Decorator: registers the function as method `name`, with `facts` (the fields of Method: uses_backbone,
    resumable, packs, settings, summary, version, batched), and returns it unchanged."""

    def decorate(fn: Callable) -> Callable:
        method = Method(name, fn, **{"summary": _first_line(fn), **facts}, spec=name)
        known = METHODS.get(name)
        if known is not None and known.run is not fn:
            raise SpliceError(f"method {name!r} is already registered ({known.summary}): give the plug-in another name")
        METHODS[name] = method
        fn.splice_method = method
        return fn

    return decorate


def run_method(
    name: str,
    structure: torch.Tensor,
    appearance: torch.Tensor,
    config: TrainConfig,
    *,
    backbone=None,
    device: torch.device | None = None,
    checkpoint: dict | None = None,
    save_checkpoint: Callable[[dict], None] | None = None,
    train: Callable | None = None,
):
    """Apply method `name` (a name or plug-in spec) to one pair. Methods that use the backbone get `backbone` and
    `device`, resumable ones the checkpoint hooks, those that train in packs `train`; the others get the images and
    the config only.

    `train` replaces `pipeline.method.trainer.train_pair` (same signature), e.g. to train the pair in a pack."""
    method = get_method(name)
    context = {}
    if method.uses_backbone:
        context.update(backbone=backbone, device=device or torch.device("cpu"))
    if method.resumable:
        context.update(checkpoint=checkpoint, save_checkpoint=save_checkpoint)
    if method.packs or method.batched is not None:  # splice's pack trainer, splicenet's batched pack
        context.update(train=train)
    started = time.perf_counter()
    return _checked(method, method.run(structure, appearance, config, **context), structure, appearance, started)


def get_method(spec: str) -> Method:
    """The method a user named: a registered name, `py:MODULE:FN`, or an entry point of group splice.methods."""
    if spec in METHODS:
        return METHODS[spec]
    spec = plugins.canonical(spec)
    if spec in _BY_SPEC:
        return _BY_SPEC[spec]
    if plugins.is_py_spec(spec):
        fn = plugins.load_py(spec, "method")
    else:
        fn = plugins.load_entry_point(ENTRY_POINT_GROUP, spec, "method")
        if fn is None:
            raise SpliceError(
                f"unknown method {spec!r}: use one of {', '.join(available())}; or a plug-in: "
                f"py:MODULE:FN (MODULE importable or a path to a .py file), or an entry point in group "
                f"{ENTRY_POINT_GROUP} (README: plug-in methods)"
            )
    if not callable(fn):
        raise SpliceError(
            f"method {spec!r} is a {type(fn).__name__}, not a function of (structure, appearance, config)"
        )
    method = getattr(fn, "splice_method", None)
    if method is None:  # a plain function: no backbone, no checkpoints, named after the function
        method = Method(fn.__name__.replace("_", "-"), fn, summary=_first_line(fn))
    method = replace(method, spec=spec)
    known = METHODS.get(method.name)
    if known is not None and known.run is not fn:
        raise SpliceError(
            f"method {spec!r} is named {method.name!r}, which is already a method ({known.summary}): "
            f"give the plug-in another name (@register_method(NAME))"
        )
    _BY_SPEC[spec] = method
    return method


def available() -> list[str]:
    """Names a user can give: registered methods and installed entry points."""
    return list(dict.fromkeys([*METHODS, *plugins.entry_point_names(ENTRY_POINT_GROUP)]))


def _checked(method: Method, result, structure, appearance, started: float) -> MethodResult:
    """A plug-in may return the output image alone: wrap it as the reference methods do; refuse anything else."""
    if isinstance(result, torch.Tensor):
        result = _result(method.name, result, structure, appearance, started)
    if not all(hasattr(result, name) for name in ("output", "losses", "meta")):  # MethodResult, TrainResult
        raise SpliceError(
            f"method {method.spec or method.name!r} returned a {type(result).__name__}: return a "
            f"MethodResult or the output image, a (3, H, W) uint8 tensor"
        )
    output = result.output
    if not (
        isinstance(output, torch.Tensor) and output.dtype == torch.uint8 and output.dim() == 3 and output.shape[0] == 3
    ):
        what = f"{tuple(output.shape)} {output.dtype}" if isinstance(output, torch.Tensor) else type(output).__name__
        raise SpliceError(
            f"method {method.spec or method.name!r} gave an output of {what}: it must be a (3, H, W) uint8 tensor"
        )
    if tuple(output.shape[-2:]) != tuple(structure.shape[-2:]):
        raise SpliceError(
            f"method {method.spec or method.name!r} gave a {output.shape[-2]}x{output.shape[-1]} output for a "
            f"{structure.shape[-2]}x{structure.shape[-1]} structure image: the output must have the structure "
            f"image's size (H, W)"
        )
    result.meta.setdefault("method", method.name)
    if method.version is not None:
        result.meta.setdefault("method_version", method.version)
    return result


def _first_line(fn: Callable) -> str:
    return ((fn.__doc__ or "").strip().splitlines() or [getattr(fn, "__name__", "")])[0]


# --- splice --------------------------------------------------------------------------------------------------


@register_method(
    "splice",
    uses_backbone=True,
    resumable=True,
    packs=True,
    settings=lambda config: config.to_dict(),
    summary="Splice: a generator trained per pair",
)
def splice(
    structure, appearance, config: TrainConfig, *, backbone, device, checkpoint=None, save_checkpoint=None, train=None
):
    from pipeline.method.trainer import train_pair

    result = (train or train_pair)(
        structure, appearance, config, backbone, device, checkpoint=checkpoint, save_checkpoint=save_checkpoint
    )
    result.meta.setdefault("method", "splice")
    return result


# --- splicenet ----------------------------------------------------------------------------------------------


def splicenet_settings(config: TrainConfig) -> dict:
    """The run settings that change a SpliceNet output, beside its options (checkpoint and its hash, strength)."""
    return {"max_side": config.max_side, "precision": config.precision, "antialias": config.antialias}


@register_method(
    "splicenet",
    uses_backbone=True,
    settings=splicenet_settings,
    summary="SpliceNet: one feed-forward network per domain (--checkpoint), batched",
    batched=Batched(
        prepare=splicenet_batched.prepare, apply=splicenet_batched.apply_pack, pack_size=splicenet_batched.pack_size
    ),
)
def splicenet(structure, appearance, config: TrainConfig, *, backbone, device, train=None, **_) -> MethodResult:
    """One pair of a pack: `train` is the pack's rendezvous member, which applies the net to the whole pack."""
    if train is None:
        raise SpliceError(
            "method splicenet applies packs of pairs: run it with `splice run --method splicenet "
            "--checkpoint URL` (pipeline.runs.worker.run_pack)"
        )
    return train(structure, appearance, config, backbone, device)


# --- reference methods ---------------------------------------------------------------------------------------


@register_method("structure-copy", summary="the structure image unchanged")
def structure_copy(structure: torch.Tensor, appearance: torch.Tensor, config: TrainConfig) -> MethodResult:
    started = time.perf_counter()
    structure = downscale_to(structure, config.max_side)
    return _result("structure-copy", structure.clone(), structure, appearance, started)


@register_method(
    "appearance-copy",
    settings=lambda config: {"max_side": config.max_side, "fit": "cover, centre crop"},
    summary="the appearance image, cropped to the structure's size",
)
def appearance_copy(structure: torch.Tensor, appearance: torch.Tensor, config: TrainConfig) -> MethodResult:
    started = time.perf_counter()
    structure = downscale_to(structure, config.max_side)
    output = _cover(appearance, tuple(structure.shape[-2:]))
    return _result("appearance-copy", output, structure, appearance, started)


@register_method(
    "color-transfer",
    settings=lambda config: {
        "max_side": config.max_side,
        "color_space": "CIELAB (D65)",
        "statistics": "per-channel mean and std (Reinhard et al. 2001)",
    },
    summary="mean/std colour statistics transfer in CIELAB",
)
def color_transfer(structure: torch.Tensor, appearance: torch.Tensor, config: TrainConfig) -> MethodResult:
    started = time.perf_counter()
    structure = downscale_to(structure, config.max_side)
    source = srgb_to_lab(structure.permute(1, 2, 0).numpy())  # (H, W, 3) L*, a*, b*
    target = srgb_to_lab(appearance.permute(1, 2, 0).numpy())
    source_mean, source_std = source.mean(axis=(0, 1)), source.std(axis=(0, 1))
    target_mean, target_std = target.mean(axis=(0, 1)), target.std(axis=(0, 1))
    scale = np.where(source_std > 1e-6, target_std / np.maximum(source_std, 1e-6), 1.0)
    transferred = (source - source_mean) * scale + target_mean
    output = torch.from_numpy(lab_to_srgb(transferred)).permute(2, 0, 1).contiguous()
    return _result("color-transfer", output, structure, appearance, started)


def _cover(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (aspect kept) so `image` covers `size`, then centre-crop to it."""
    height, width = image.shape[-2:]
    scale = max(size[0] / height, size[1] / width)
    scaled = (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
    resized = F.interpolate(image[None].float(), size=scaled, mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (scaled[0] - size[0]) // 2, (scaled[1] - size[1]) // 2
    return resized[:, top : top + size[0], left : left + size[1]].round().clamp(0, 255).to(torch.uint8)


def _result(
    name: str, output: torch.Tensor, structure: torch.Tensor, appearance: torch.Tensor, started: float
) -> MethodResult:
    seconds = time.perf_counter() - started
    cpu = torch.device("cpu")
    meta = {
        "method": name,
        "device": str(cpu),
        "device_name": device_name(cpu),
        "seconds": seconds,
        "steps": 0,
        **peak_memory(cpu),
        "structure_size": list(structure.shape[-2:]),
        "appearance_size": list(appearance.shape[-2:]),
        "final_losses": {},
    }
    return MethodResult(output=output.contiguous(), losses=[], meta=meta)


# --- CIELAB (D65) --------------------------------------------------------------------------------------------

_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = np.array([0.95047, 1.0, 1.08883])
_EPSILON, _KAPPA = 216 / 24389, 24389 / 27


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (..., 3) float64 CIELAB."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > _EPSILON, np.cbrt(xyz), (_KAPPA * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """(..., 3) CIELAB -> (..., 3) uint8 sRGB (out-of-gamut colours clipped)."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f**3 > _EPSILON, f**3, (116 * f - 16) / _KAPPA) * _WHITE
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0, 1)
    c = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.clip(np.round(c * 255), 0, 255).astype(np.uint8)
