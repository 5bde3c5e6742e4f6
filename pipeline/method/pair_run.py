"""One pair's share of a training run: its images, initial generator, augmentation RNG, step counter, loss log and
checkpoints. The trainer (`pipeline.method.trainer`) steps any number of these together, their generators' live
parameters held by stacks (`pipeline.method.pair_stack`); nothing here depends on which other pairs are in the
pack, so a pair's result is the same alone or in any pack.

A checkpoint is per pair and has the same format whether the pair trained alone or in a pack: its generator, the
Adam state of its own parameters (as `torch.optim.Adam(generator.parameters())` would save it), its RNG, its losses.
Checkpoints made before the shared crop schedule (their config has no `crop_schedule`) are schedule 1's.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.errors import SpliceError
from pipeline.method.backbone import DinoBackbone
from pipeline.method.config import TrainConfig
from pipeline.method.generator import SkipGenerator
from pipeline.method.images import downscale_to, from_unit_float, to_unit_float
from pipeline.method.objective import OBJECTIVE_TERMS, full_structure_target

log = logging.getLogger(__name__)
# options that may change between an interrupted run and its resumption without invalidating the checkpoint
PAIR_RESUMABLE_CHANGES = ("log_every", "checkpoint_every", "steps")
# settings added since checkpoints were first written, with the value a checkpoint without them was made with
ADDED_SETTINGS = {"crop_schedule": 1, "crop_schedule_seed": 0}
# the smallest image side that trains: a 0.95 crop of it, halved five times, must keep more than one pixel per channel
# for the deepest BatchNorm
MIN_SIDE = 36


class TrainingError(SpliceError):
    """Training could not produce a valid result (e.g. a non-finite loss)."""


@dataclass
class PairInput:
    """What one pair brings to a training run."""

    pair_id: str
    structure: torch.Tensor  # (3, H, W) uint8
    appearance: torch.Tensor  # (3, H', W') uint8
    config: TrainConfig
    checkpoint: dict | None = None  # resume from this state when it fits the inputs and settings
    save_checkpoint: Callable[[dict], None] | None = None  # called with a host copy of the state every N steps


def new_generator(config: TrainConfig, device: torch.device) -> SkipGenerator:
    """The pair's generator, initialised from its own seed (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return SkipGenerator().to(device).train()


class PairRun:
    """A pair being trained: set up from its inputs (or its checkpoint), stepped by the trainer."""

    def __init__(self, pair: PairInput, backbone: DinoBackbone, device: torch.device, precision: torch.dtype):
        config = pair.config
        self.pair_id, self.config, self.save = pair.pair_id, config, pair.save_checkpoint
        # 1. inputs: decoded once, kept on the device
        structure = downscale_to(pair.structure, config.max_side)
        appearance = downscale_to(pair.appearance, config.max_side)
        _check_size("structure", structure)
        _check_size("appearance", appearance)
        self.structure = to_unit_float(structure, device)  # (1, 3, H, W)
        self.appearance = to_unit_float(appearance, device)  # (1, 3, H', W')
        self.fingerprint = _fingerprint(self.structure, self.appearance)
        # 2. generator and augmentation RNG from the seed; the live parameters and their Adam state are the stack's
        self.generator: SkipGenerator | None = new_generator(config, device)
        self.rng = random.Random(config.seed)
        self.start_step, self.step, self.losses = 0, 0, []
        self.optimizer_state: dict | None = None  # the checkpoint's Adam state, until the trainer takes it
        checkpoint = pair.checkpoint
        if checkpoint is not None and _checkpoint_fits(checkpoint, config, self.fingerprint, pair.pair_id):
            self.generator.load_state_dict(checkpoint["generator"])
            self.optimizer_state = checkpoint["optimizer"]
            self.rng.setstate(_rng_state_from_lists(checkpoint["rng_state"]))
            self.start_step = self.step = int(checkpoint["step"])
            self.losses = list(checkpoint["losses"])
            log.info("pair %s: resuming from checkpoint at step %d", pair.pair_id, self.start_step)
        self.full_target = full_structure_target(backbone, self.structure, precision, config.antialias)  # (1, N, N)

    @property
    def optimizer_steps(self) -> int:
        """Adam steps already taken, as the checkpoint's optimiser state records them (0 when starting)."""
        entries = (self.optimizer_state or {}).get("state") or {}
        return int(float(next(iter(entries.values()))["step"])) if entries else 0

    def initial_generator_state(self) -> dict:
        """The generator to start from (seeded, or the checkpoint's), once: the stack holds it from then on."""
        if self.generator is None:
            raise RuntimeError(f"pair {self.pair_id}: its generator was handed to a stack already")
        state, self.generator = self.generator.state_dict(), None
        return state

    def take_optimizer_state(self) -> dict | None:
        """The checkpoint's Adam state (per-pair format), once."""
        state, self.optimizer_state = self.optimizer_state, None
        return state

    @property
    def done(self) -> bool:
        return self.step >= self.config.steps

    def is_log_step(self) -> bool:
        return self.step % self.config.log_every == 0 or self.step == self.config.steps - 1

    def is_checkpoint_step(self) -> bool:
        """After the step just taken (self.step counts steps done): a checkpoint is due, and it is not the last."""
        every = self.config.checkpoint_every
        return bool(self.save and every and self.step % every == 0 and self.step < self.config.steps)

    def log(self, step: int, values: dict[str, float]) -> None:
        """Record the terms of `step`; a non-finite one fails the pair."""
        row = {"step": step, "total": values["total"]}
        row.update({name: values.get(name, float("nan")) for name in OBJECTIVE_TERMS})
        if not all(_finite(values[name]) for name in values):  # terms that were off are NaN by design
            raise TrainingError(
                f"loss became non-finite at step {step} ({_format(row)}); nothing was written. "
                f"Try --precision fp32, or check the input images"
            )
        self.losses.append(row)

    def checkpoint_state(self, generator_state: dict, optimizer_state: dict) -> dict:
        # a snapshot on the host: the states hold live tensors that the next optimiser step would overwrite
        return {
            "step": self.step,
            "generator": _to_host(generator_state),
            "optimizer": _to_host(optimizer_state),
            "rng_state": _rng_state_to_lists(self.rng.getstate()),
            "losses": list(self.losses),
            "config": self.config.to_dict(),
            "inputs": self.fingerprint,
        }

    def output(self, generator: SkipGenerator) -> torch.Tensor:
        """G(structure) at full resolution, (3, H, W) uint8 on the CPU, G being this pair's trained generator.
        Train-mode BatchNorm (batch statistics), as in the full-image loss terms the generator was optimised under."""
        with torch.no_grad():
            output = generator.train()(self.structure)
        if not bool(torch.isfinite(output).all()):
            raise TrainingError("the generator's output is non-finite; nothing was written. Try --precision fp32")
        return from_unit_float(output)


# --- helpers ----------------------------------------------------------------------------------------------------


def _check_size(role: str, image: torch.Tensor) -> None:
    height, width = image.shape[-2:]
    if min(height, width) < MIN_SIDE:
        raise TrainingError(
            f"the {role} image is {width}x{height} px, below the {MIN_SIDE} px per side that Splice needs (its "
            f"generator halves a crop of it five times): use a larger image (or a larger --max-side)"
        )


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def _format(row: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step")


def _fingerprint(*images: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for image in images:
        digest.update(str(tuple(image.shape)).encode())
        digest.update(image.mul(255).round().to(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _checkpoint_fits(checkpoint: dict, config: TrainConfig, fingerprint: str, pair_id: str) -> bool:
    saved = {**ADDED_SETTINGS, **checkpoint.get("config", {})}
    current = config.to_dict()
    for name in PAIR_RESUMABLE_CHANGES:
        saved.pop(name, None)
        current.pop(name, None)
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
    if saved != current or checkpoint.get("inputs") != fingerprint:
        log.warning("pair %s: checkpoint was made with other inputs or settings: starting from scratch", pair_id)
        return False
    if int(checkpoint["step"]) >= config.steps:
        log.warning(
            "pair %s: checkpoint is at step %s, past the %d steps asked for: starting from scratch",
            pair_id,
            checkpoint["step"],
            config.steps,
        )
        return False
    return True


def _to_host(value):
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_host(v) for v in value)
    return value


def _rng_state_to_lists(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_lists(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss
