"""Splice's objective for one step, with the backbone passes fused.

Terms (MSE everywhere), x = G(structure crop), y = G(appearance crop):
  appearance       [CLS](x) vs [CLS](appearance crop)                       weight 10
  structure        self-similarity(keys(x)) vs that of the structure crop   weight 1   (off at step 0)
  identity         keys(y) vs keys(appearance crop)                         weight 1   (off at step 0)
  full_structure   self-similarity of G(structure) vs of the structure      weight 1   (every 75 steps)
  full_appearance  [CLS](G(structure)) vs [CLS](appearance crop)            weight 10  (every 75 steps)

Both crops are square, so both are 224x224 at the backbone (torchvision's `Resize(224, max_size=480)` rule, as the
authors resize): the targets come from ONE no-grad pass over [structure crop, appearance crop] and the predictions
from ONE pass over [x, y]. The whole structure image has its own size and its own pass; its target never changes
and is computed once by the trainer. `antialias` is the resize's antialiasing (TrainConfig.antialias).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .augment import StepBatch
from .backbone import DinoBackbone, self_similarity
from .config import TrainConfig

TERMS = ("appearance", "structure", "identity", "full_appearance", "full_structure")


@dataclass(frozen=True)
class LossWeights:
    appearance: float
    structure: float
    identity: float
    full_appearance: float
    full_structure: float

    @property
    def full_image(self) -> bool:
        return self.full_appearance > 0 or self.full_structure > 0


def loss_weights(step: int, config: TrainConfig) -> LossWeights:
    """The weight of every term at `step`: a pure function of the step."""
    crops_on = step > 0  # step 0 trains the crops on appearance only
    full_on = step % config.full_image_every == 0
    return LossWeights(
        appearance=config.appearance_weight,
        structure=config.structure_weight if crops_on else 0.0,
        identity=config.identity_weight if crops_on else 0.0,
        full_appearance=config.appearance_weight if full_on else 0.0,
        full_structure=config.structure_weight if full_on else 0.0,
    )


def full_structure_target(backbone: DinoBackbone, structure: torch.Tensor, precision: torch.dtype | None,
                          antialias: bool = True) -> torch.Tensor:
    """Self-similarity of the whole, un-augmented structure image (1, N, N): constant over training."""
    with torch.no_grad(), autocast(structure.device, precision):
        return self_similarity(backbone.last_block(backbone.prepare(structure, antialias)).keys)


def splice_losses(generator: torch.nn.Module, backbone: DinoBackbone, batch: StepBatch, weights: LossWeights,
                  full_target: torch.Tensor | None, precision: torch.dtype | None = None,
                  antialias: bool = True) -> dict[str, torch.Tensor]:
    """Loss terms of one step (unweighted) and their weighted sum under 'total'. Terms weighted 0 are not computed."""
    device = batch.structure_crop.device
    # 1. targets: one no-grad backbone pass over both crops
    with torch.no_grad(), autocast(device, precision):
        crops = torch.cat([backbone.prepare(batch.structure_crop, antialias), backbone.prepare(batch.appearance_crop, antialias)])
        target = backbone.last_block(crops)
        target_cls = target.cls_token[1:].float()  # (1, D) appearance crop
        target_keys = target.keys[1:].float()  # (1, N, D) appearance crop
        target_selfsim = self_similarity(target.keys[:1])  # (1, N, N) structure crop

    # 2. generator: one call per crop, so BatchNorm sees each crop alone
    outputs = [generator(batch.structure_crop)]  # x
    if weights.identity > 0:
        outputs.append(generator(batch.appearance_crop))  # y

    # 3. predictions: one backbone pass over [x, y]
    with autocast(device, precision):
        predicted = backbone.last_block(torch.cat([backbone.prepare(o, antialias) for o in outputs]))
    terms = {"appearance": F.mse_loss(predicted.cls_token[:1].float(), target_cls)}
    if weights.structure > 0:
        terms["structure"] = F.mse_loss(self_similarity(predicted.keys[:1]), target_selfsim)
    if weights.identity > 0:
        terms["identity"] = F.mse_loss(predicted.keys[1:].float(), target_keys)

    # 4. the whole structure image through G, at its full resolution
    if weights.full_image:
        if batch.structure_full is None or full_target is None:
            raise ValueError("a full-image step needs batch.structure_full and full_target")
        whole = generator(batch.structure_full)
        with autocast(device, precision):
            features = backbone.last_block(backbone.prepare(whole, antialias))
        terms["full_structure"] = F.mse_loss(self_similarity(features.keys), full_target)
        terms["full_appearance"] = F.mse_loss(features.cls_token.float(), target_cls)

    terms["total"] = sum(getattr(weights, name) * value for name, value in terms.items())
    return terms


def autocast(device: torch.device, precision: torch.dtype | None):
    """bf16 autocast for the backbone when asked; a no-op context for fp32."""
    if precision is None or precision == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision)
