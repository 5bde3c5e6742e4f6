"""Configuration of the per-pair Splice trainer: one frozen dataclass, three presets; and `from_dict`, the one strict
reading of every settings dataclass from a recorded dict (run.json, meta.json, train.json, a checkpoint)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field

DEFAULT_MAX_PIXELS = 40_000_000  # 40 megapixels: inputs above this are refused (decompression-bomb guard)


PRECISIONS = ("auto", "fp32", "bf16")
CROP_SCHEDULES = (1, 2)  # see pipeline.method.augment: 1 per pair (before 2026-12), 2 shared by same-size pairs


def setting(default, help: str, **metadata):
    """A field with its one-line description: the `splice train/run/demo` options are generated from these."""
    return field(default=default, metadata={"help": help, **metadata})


def from_dict(cls: type, values: dict, *, what: str, error: type[Exception] = ValueError):
    """An instance of the dataclass `cls` from a dict of its fields, strictly: an unknown key is an `error` naming it
    (`what`: e.g. "training option"), JSON's lists become the tuples the fields are annotated with, and integers
    become floats where a field is a float. Missing fields take their defaults; the dataclass checks the values."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise error(f"unknown {what}(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _typed(hints[name], value) for name, value in values.items()})


def _typed(hint, value):
    if value is None:
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: X
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    if typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        element = args[0] if args and (len(args) == 2 and args[1] is Ellipsis or len(set(args)) == 1) else None
        return tuple(_typed(element, item) for item in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = setting(
        "dino_vitb8",
        "DINO backbone: dino_vitb8 | dino_vits8 | dino_vitb16 | dino_vits16 (timm "
        "weights, cached on first use), file:PATH (local weights) or "
        "random:TIMM_ARCH (random weights, tests only)",
    )
    steps: int = setting(2000, "optimisation steps (paper: 2000; authors' code: 10000)")
    lr: float = setting(2e-3, "Adam learning rate, constant")
    betas: tuple[float, float] = setting((0.0, 0.99), "Adam betas")
    appearance_weight: float = setting(10.0, "weight of the [CLS] appearance term")
    structure_weight: float = setting(1.0, "weight of the key self-similarity structure term")
    identity_weight: float = setting(1.0, "weight of the keys identity term on G(appearance crop)")
    full_image_every: int = setting(75, "every N steps (step 0 included) the whole structure image also goes through G")
    crop_min_fraction: float = setting(
        0.95, "square crop side drawn uniformly in [fraction * h, h], capped at the width"
    )
    flip_p: float = setting(0.5, "horizontal flip probability (both crops)")
    jitter_p: float = setting(0.5, "colour jitter probability (structure crop)")
    jitter: tuple[float, float, float, float] = setting(
        (0.4, 0.4, 0.2, 0.1), "colour jitter strengths: brightness, contrast, saturation, hue"
    )
    blur_p: float = setting(0.2, "3x3 Gaussian blur probability (structure crop)")
    antialias: bool = setting(
        True,
        "antialiased resize to the backbone's input (modern torchvision); off: as the authors' pinned torchvision 0.10",
    )
    max_side: int | None = setting(None, "downscale inputs so the long side is at most this (none: full resolution)")
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "refuse inputs above this many pixels (decompression-bomb guard)")
    seed: int = setting(0, "seeds generator init and augmentation")
    precision: str = setting("auto", "auto: bf16 backbone on CUDA, fp32 on CPU", choices=PRECISIONS)
    log_every: int = setting(10, "record loss terms (and sync with the device) every N steps")
    checkpoint_every: int = setting(0, "write a resumable checkpoint every N steps (0: never)")
    crop_schedule: int = setting(
        2,
        "crop-side schedule: 2 draws the side at step t from (schedule seed, t, image size), so same-size pairs "
        "share crop shapes and train as one grouped generator call; 1: from each pair's RNG (runs made before it)",
        choices=(1, 2),
    )
    crop_schedule_seed: int = setting(0, "seed of the shared crop-side schedule (crop_schedule 2)")

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not 0 < self.crop_min_fraction <= 1:
            raise ValueError(f"crop_min_fraction must be in (0, 1], got {self.crop_min_fraction}")
        if self.full_image_every < 1:
            raise ValueError(f"full_image_every must be >= 1, got {self.full_image_every}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("appearance_weight", "structure_weight", "identity_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("flip_p", "jitter_p", "blur_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.crop_schedule not in CROP_SCHEDULES:
            raise ValueError(f"crop_schedule must be 1 or 2, got {self.crop_schedule!r}")
        if self.max_pixels < 1 or (self.max_side is not None and self.max_side < 1):
            raise ValueError(f"max_pixels and max_side must be >= 1, got {self.max_pixels} and {self.max_side}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1) (Adam's beta1, beta2), got {self.betas}")
        if len(self.jitter) != 4 or not all(j >= 0 for j in self.jitter) or not self.jitter[3] <= 0.5:
            raise ValueError(
                f"jitter must be four strengths >= 0 (brightness, contrast, saturation, hue; hue at most 0.5), "
                f"got {self.jitter}"
            )
        for name in ("lr", "appearance_weight", "structure_weight", "identity_weight"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.seed < 0 or self.crop_schedule_seed < 0:
            name = "seed" if self.seed < 0 else "crop_schedule_seed"
            raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        return from_dict(cls, values, what="training option")

    def replace(self, **changes) -> TrainConfig:
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self


PRESETS: dict[str, TrainConfig] = {
    # the paper's setting: DINO ViT-B/8, 2000 steps
    "paper": TrainConfig(),
    # the authors' code default: 10000 steps
    "authors": TrainConfig(steps=10000),
    # usable on a CPU: ViT-S/16, a few hundred steps, inputs capped at 512 px
    "preview": TrainConfig(backbone="dino_vits16", steps=300, max_side=512),
}


def preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
