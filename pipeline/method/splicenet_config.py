"""SpliceNet's training settings (`NetTrainConfig`), apart from the training code so that `splice train-net`'s
options are generated from the dataclass without importing torch (see pipeline/config_options.py).

Defaults the papers leave open, and why: docs/splicenet.md and pipeline/method/splicenet_train.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipeline.method.config import PRECISIONS, from_dict, setting

CURATE_MODES = ("none", "centre")


@dataclass(frozen=True)
class NetTrainConfig:
    backbone: str = setting(
        "dino_vitb8",
        "DINO backbone (its [CLS] size sets the code size): dino_vitb8 (the paper) | dino_vits8 | dino_vitb16 | "
        "dino_vits16 | file:PATH | random:TIMM_ARCH (tests only)",
    )
    resolution: int = setting(256, "side of the square training crops fed to the network")
    batch: int = setting(16, "pairs per step over all workers (the global batch)")
    steps: int = setting(20000, "optimisation steps (may grow on a resume)")
    lr: float = setting(2e-3, "Adam learning rate, constant (paper)")
    betas: tuple[float, float] = setting((0.0, 0.99), "Adam betas (paper)")
    appearance_weight: float = setting(1.0, "weight of the [CLS] appearance term (paper: 1)")
    structure_weight: float = setting(2.0, "weight of the self-similarity structure term (paper: alpha = 2)")
    identity_weight: float = setting(0.1, "weight of the keys identity term (paper: beta = 0.1)")
    crop_min_fraction: float = setting(0.95, "square crop side uniform in [fraction * h, h], both images (paper: 95%)")
    flip_p: float = setting(0.5, "horizontal flip probability, both images (paper)")
    jitter_p: float = setting(0.2, "colour jitter probability, structure image (paper)")
    jitter: tuple[float, float, float, float] = setting(
        (0.4, 0.4, 0.2, 0.1), "colour jitter strengths: brightness, contrast, saturation, hue"
    )
    blur_p: float = setting(0.1, "3x3 Gaussian blur probability, structure image (paper)")
    width: float = setting(1.0, "channel multiplier (1: the paper's 64..1024)")
    demodulate: bool = setting(True, "StyleGAN2 demodulation in the modulated convs")
    domains: tuple[str, ...] = setting(
        (), "train on these manifest domains only, pooled", flag="domain", shown="every domain"
    )
    curate: str = setting(
        "none",
        "centre: per domain, drop the images whose DINO [CLS] is farthest from the domain's mean (keeping "
        "--curate-keep of them)",
        choices=CURATE_MODES,
    )
    curate_keep: float = setting(0.9, "fraction of each domain kept by --curate centre")
    seed: int = setting(0, "seeds initialisation, pairs and augmentation")
    precision: str = setting("auto", "auto: bf16 backbone on CUDA, fp32 on CPU", choices=PRECISIONS)
    log_every: int = setting(50, "record the losses (one host sync) every N steps")
    checkpoint_every: int = setting(1000, "write a resumable checkpoint (and update net.pt) every N steps")
    max_pixels: int = setting(40_000_000, "refuse images above this many pixels (decompression-bomb guard)")

    def __post_init__(self):
        problems = []
        for name in ("resolution", "batch", "steps", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.curate not in CURATE_MODES:
            problems.append(f"curate must be one of {', '.join(CURATE_MODES)}, got {self.curate!r}")
        if not 0 < self.curate_keep <= 1:
            problems.append(f"curate_keep must be in (0, 1], got {self.curate_keep}")
        if not 0 < self.crop_min_fraction <= 1:
            problems.append(f"crop_min_fraction must be in (0, 1], got {self.crop_min_fraction}")
        if not self.width > 0:
            problems.append(f"width must be > 0, got {self.width}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> NetTrainConfig:
        return from_dict(cls, values, what="SpliceNet training option")

    def replace(self, **changes) -> NetTrainConfig:
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def loss_weights(self):
        """Constant over training; the per-pair schedule (step 0, full image every 75 steps) does not apply."""
        from pipeline.method.objective import LossWeights  # torch: only when training

        return LossWeights(
            appearance=self.appearance_weight,
            structure=self.structure_weight,
            identity=self.identity_weight,
            full_appearance=0.0,
            full_structure=0.0,
        )
