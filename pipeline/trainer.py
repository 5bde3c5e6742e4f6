"""Train the Splice generator for one (structure, appearance) pair.

The loop reads top to bottom in a fixed order: loss weights for the step, augmented batch, forward + losses,
backward, optimiser step, zero_grad, then (on log steps only) a host sync to record losses, and periodic
checkpoints. Images are decoded once and live on the device as tensors for the whole run.
"""
from __future__ import annotations

import hashlib
import logging
import platform
import random
import resource
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .augment import sample_batch
from .backbone import DinoBackbone
from .config import TrainConfig
from .errors import SpliceError
from .generator import SkipGenerator
from .images import downscale_to, from_unit_float, to_unit_float
from .objective import TERMS, full_structure_target, loss_weights, splice_losses

log = logging.getLogger(__name__)
# options that may change between an interrupted run and its resumption without invalidating the checkpoint
RESUMABLE_CHANGES = ("log_every", "checkpoint_every", "steps")
# the smallest image side that trains: a 0.95 crop of it, halved five times, must keep more than one pixel per channel
# for the deepest BatchNorm
MIN_SIDE = 36


class TrainingError(SpliceError):
    """Training could not produce a valid result (e.g. a non-finite loss)."""


@dataclass
class TrainResult:
    output: torch.Tensor  # (3, H, W) uint8 on the CPU: G(structure) at the structure image's resolution
    losses: list[dict]  # one row per logged step: step, total and every term (NaN where a term was off)
    meta: dict  # JSON-able facts about the run: config, backbone, device, precision, seconds, memory, losses


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return default_device()
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpliceError(f"device {name!r} asked for, but no CUDA device is available: use --device cpu or auto")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def train_pair(structure: torch.Tensor, appearance: torch.Tensor, config: TrainConfig, backbone: DinoBackbone,
               device: torch.device, *, checkpoint: dict | None = None,
               save_checkpoint: Callable[[dict], None] | None = None, progress: bool = False) -> TrainResult:
    """Train G on (structure, appearance), each a (3, H, W) uint8 tensor, and return G(structure)."""
    started = time.perf_counter()
    device = torch.device(device)
    precision = resolve_precision(config.precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # 1. inputs: decoded once, kept on the device
    structure = downscale_to(structure, config.max_side)
    appearance = downscale_to(appearance, config.max_side)
    _check_size("structure", structure)
    _check_size("appearance", appearance)
    structure = to_unit_float(structure, device)  # (1, 3, H, W)
    appearance = to_unit_float(appearance, device)  # (1, 3, H', W')
    fingerprint = _fingerprint(structure, appearance)

    # 2. generator, optimiser, augmentation RNG; restored from a checkpoint when resuming
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        generator = SkipGenerator().to(device).train()
    optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    rng = random.Random(config.seed)
    start_step, losses = 0, []
    if checkpoint is not None and _checkpoint_fits(checkpoint, config, fingerprint):
        generator.load_state_dict(checkpoint["generator"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        rng.setstate(_rng_state_from_lists(checkpoint["rng_state"]))
        start_step, losses = int(checkpoint["step"]), list(checkpoint["losses"])
        log.info("resuming from checkpoint at step %d", start_step)
    backbone = backbone.to(device)
    full_target = full_structure_target(backbone, structure, precision, config.antialias)  # (1, N, N), constant

    # 3. train
    bar = _progress_bar(progress, start_step, config.steps)
    for step in range(start_step, config.steps):
        weights = loss_weights(step, config)
        batch = sample_batch(rng, structure, appearance, config, include_full=weights.full_image)
        terms = splice_losses(generator, backbone, batch, weights, full_target, precision, config.antialias)
        terms["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        last = step == config.steps - 1
        if step % config.log_every == 0 or last:  # the only host-device sync in the loop
            row = _loss_row(step, terms)
            if not all(_finite(row[name]) for name in terms):  # terms that were off are NaN by design
                raise TrainingError(f"loss became non-finite at step {step} ({_format(row)}); nothing was written. "
                                    f"Try --precision fp32, or check the input images")
            losses.append(row)
            if bar is not None:
                bar.set_postfix_str(f"loss {row['total']:.4g}", refresh=False)
        if bar is not None:
            bar.update(1)
        if save_checkpoint and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and not last:
            save_checkpoint(_checkpoint_state(step + 1, generator, optimizer, rng, losses, config, fingerprint))
    if bar is not None:
        bar.close()

    # 4. result: G(structure) at full resolution. Train-mode BatchNorm (batch statistics), as in the full-image
    # loss terms the generator was optimised under.
    with torch.no_grad():
        output = generator(structure)
    if not bool(torch.isfinite(output).all()):
        raise TrainingError("the generator's output is non-finite; nothing was written. Try --precision fp32")
    seconds = time.perf_counter() - started
    meta = {
        "config": config.to_dict(),
        "seed": config.seed,
        "backbone": backbone.spec,
        "weights_id": backbone.weights_id,
        "random_backbone": backbone.is_random,
        "device": str(device),
        "device_name": _device_name(device),
        "precision": str(precision).replace("torch.", ""),
        "backbone_resize": {"rule": "torchvision Resize(224, max_size=480)", "antialias": config.antialias},
        "seconds": seconds,
        "steps": config.steps,
        "resumed_from_step": start_step,
        "seconds_per_step": seconds / max(1, config.steps - start_step),
        **_peak_memory(device),
        "structure_size": list(structure.shape[-2:]),
        "appearance_size": list(appearance.shape[-2:]),
        "final_losses": losses[-1] if losses else {},
        "torch_version": torch.__version__,
    }
    return TrainResult(output=from_unit_float(output), losses=losses, meta=meta)


def _check_size(role: str, image: torch.Tensor) -> None:
    height, width = image.shape[-2:]
    if min(height, width) < MIN_SIDE:
        raise TrainingError(
            f"the {role} image is {width}x{height} px, below the {MIN_SIDE} px per side that Splice needs (its "
            f"generator halves a crop of it five times): use a larger image (or a larger --max-side)")


def _loss_row(step: int, terms: dict[str, torch.Tensor]) -> dict:
    row = {"step": step, "total": float(terms["total"].detach())}
    for name in TERMS:
        row[name] = float(terms[name].detach()) if name in terms else float("nan")
    return row


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


def _checkpoint_state(next_step, generator, optimizer, rng, losses, config, fingerprint) -> dict:
    # a snapshot on the host: state_dict() returns live tensors that the next optimiser step would overwrite
    return {
        "step": next_step,
        "generator": _to_host(generator.state_dict()),
        "optimizer": _to_host(optimizer.state_dict()),
        "rng_state": _rng_state_to_lists(rng.getstate()),
        "losses": list(losses),
        "config": config.to_dict(),
        "inputs": fingerprint,
    }


def _checkpoint_fits(checkpoint: dict, config: TrainConfig, fingerprint: str) -> bool:
    saved = dict(checkpoint.get("config", {}))
    current = config.to_dict()
    for name in RESUMABLE_CHANGES:
        saved.pop(name, None)
        current.pop(name, None)
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
    if saved != current or checkpoint.get("inputs") != fingerprint:
        log.warning("checkpoint was made with other inputs or settings: starting from scratch")
        return False
    if int(checkpoint["step"]) >= config.steps:
        log.warning("checkpoint is at step %s, past the %d steps asked for: starting from scratch", checkpoint["step"], config.steps)
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


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def _peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)), "peak_memory_kind": "cuda_allocated"}
    # the process's peak resident set (Linux reports KiB): an upper bound that includes everything in the process
    return {"peak_memory_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "peak_memory_kind": "process_rss"}


def _progress_bar(enabled: bool, start: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
