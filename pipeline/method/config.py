"""Configuration of the per-pair Splice trainer: one frozen dataclass, three presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

DEFAULT_MAX_PIXELS = 40_000_000  # 40 megapixels: inputs above this are refused (decompression-bomb guard)


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = "dino_vitb8"  # backbone spec: dino_vit{b,s}{8,16}, file:PATH or random:TIMM_ARCH
    steps: int = 2000  # optimisation steps (paper: 2000; authors' code: 10000)
    lr: float = 2e-3  # Adam learning rate, constant
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas
    appearance_weight: float = 10.0  # weight of the [CLS] appearance term
    structure_weight: float = 1.0  # weight of the key self-similarity structure term
    identity_weight: float = 1.0  # weight of the keys identity term on G(appearance crop)
    full_image_every: int = 75  # every N steps (step 0 included) the whole structure image also goes through G
    crop_min_fraction: float = 0.95  # square crop side drawn uniformly in [fraction * h, h], capped at the width
    flip_p: float = 0.5  # horizontal flip probability (both crops)
    jitter_p: float = 0.5  # colour jitter probability (structure crop)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    blur_p: float = 0.2  # 3x3 Gaussian blur probability (structure crop)
    antialias: bool = True  # antialiased resize to the backbone's input (modern torchvision); False: the authors' pinned torchvision 0.10
    max_side: int | None = None  # downscale inputs so the long side is at most this (None: full resolution)
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse inputs above this many pixels (decompression-bomb guard)
    seed: int = 0  # seeds generator init and augmentation
    precision: str = "auto"  # auto (bf16 backbone on CUDA, fp32 on CPU) | fp32 | bf16
    log_every: int = 10  # record loss terms (and sync with the device) every N steps
    checkpoint_every: int = 0  # write a resumable checkpoint every N steps (0: never)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not 0 < self.crop_min_fraction <= 1:
            raise ValueError(f"crop_min_fraction must be in (0, 1], got {self.crop_min_fraction}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        values = dict(values)
        for name in ("betas", "jitter"):
            if name in values and values[name] is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
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
