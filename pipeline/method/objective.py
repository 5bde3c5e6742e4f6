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

Packed training (`pack_losses`): K pairs share those two passes (2K crops, then K x's and the y's) and the
full-image pass of pairs whose structure images have one size; every image is its own batch row, so each pair's
terms are what it would get alone.

Conditioned training (`conditioned_losses`, SpliceNet): B pairs, ONE generator G(image, appearance [CLS]) called
once on the B structure crops and once on the B appearance crops; the same two backbone passes (`crop_targets`,
`crop_predictions`) and the same crop terms, averaged over the pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.method.augment import StepBatch
from pipeline.method.backbone import DinoBackbone, self_similarity
from pipeline.method.config import TrainConfig

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


def full_structure_target(
    backbone: DinoBackbone, structure: torch.Tensor, precision: torch.dtype | None, antialias: bool = True
) -> torch.Tensor:
    """Self-similarity of the whole, un-augmented structure image (1, N, N): constant over training."""
    with torch.no_grad(), autocast(structure.device, precision):
        return self_similarity(backbone.last_block(backbone.prepare(structure, antialias)).keys)


Features = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # pixels -> ([CLS] (B, D), keys (B, N, D))


def last_block_reader(backbone: DinoBackbone) -> Features:
    """Prepared pixels (B, 3, h, w) -> the last block's [CLS] (B, D) and keys (B, N, D): what the objective reads."""

    def read(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = backbone.last_block(pixels)
        return features.cls_token, features.keys

    return read


@dataclass(frozen=True)
class CropTargets:
    """What the crops' no-grad backbone pass gives the objective."""

    cls_token: torch.Tensor  # (K, D) [CLS] of the appearance crops (float32)
    keys: torch.Tensor  # (K, N, D) keys of the appearance crops (float32)
    self_similarity: torch.Tensor  # (K, N, N) key self-similarity of the structure crops


def crop_targets(
    backbone: DinoBackbone,
    structure_crops: list[torch.Tensor],
    appearance_crops: list[torch.Tensor],
    crop_features: Features | None = None,
    precision: torch.dtype | None = None,
    antialias: bool = True,
) -> CropTargets:
    """Targets of K crop pairs from ONE no-grad backbone pass. Each list item is a (n, 3, s, s) batch of square crops
    (a pack gives one crop per item, each its own size; SpliceNet one item of n crops at the training resolution)."""
    crop_features = crop_features or last_block_reader(backbone)
    pieces, structure_rows, appearance_rows = [], [], []
    for structure, appearance in zip(structure_crops, appearance_crops):
        for crop, rows in ((structure, structure_rows), (appearance, appearance_rows)):
            start = sum(len(piece) for piece in pieces)
            rows.extend(range(start, start + len(crop)))
            pieces.append(backbone.prepare(crop, antialias))
    with torch.no_grad(), autocast(pieces[0].device, precision):
        cls_token, keys = crop_features(torch.cat(pieces))  # (2K, D), (2K, N, D)
        return CropTargets(
            cls_token=cls_token[appearance_rows].float(),
            keys=keys[appearance_rows].float(),
            self_similarity=self_similarity(keys[structure_rows]),
        )


def crop_predictions(
    backbone: DinoBackbone,
    outputs: list[torch.Tensor],
    crop_features: Features | None = None,
    precision: torch.dtype | None = None,
    antialias: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] (R, D) and keys (R, N, D) of generator outputs (square, any sizes), in ONE backbone pass with grad."""
    crop_features = crop_features or last_block_reader(backbone)
    with autocast(outputs[0].device, precision):
        return crop_features(torch.cat([backbone.prepare(output, antialias) for output in outputs]))


def conditioned_losses(
    generator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    backbone: DinoBackbone,
    structure: torch.Tensor,
    appearance: torch.Tensor,
    weights: LossWeights,
    precision: torch.dtype | None = None,
    crop_features: Features | None = None,
    antialias: bool = True,
) -> dict[str, torch.Tensor]:
    """The crop terms for B pairs through ONE generator conditioned on the appearance [CLS] (SpliceNet).

    structure, appearance: (B, 3, s, s) augmented square crops. x = G(structure, [CLS](appearance)) and
    y = G(appearance, [CLS](appearance)), together one batched call; the [CLS] codes are the targets' pass's, so the
    code costs no extra backbone pass. Returns each term averaged over the B pairs and their weighted sum 'total'
    (the full-image terms of per-pair Splice do not apply)."""
    count = len(structure)
    # 1. targets, and the appearance codes: one no-grad pass over [structure crops, appearance crops]
    targets = crop_targets(backbone, [structure], [appearance], crop_features, precision, antialias)
    # 2. the generator: ONE call over [structure crops, appearance crops] gives [x, y] (a DDP-wrapped generator
    # must be called once per backward); its samples do not interact, so this equals two calls
    if weights.identity > 0:
        outputs = generator(torch.cat([structure, appearance]), targets.cls_token.repeat(2, 1))  # (2B, 3, s, s)
    else:
        outputs = generator(structure, targets.cls_token)  # (B, 3, s, s)
    # 3. predictions: one backbone pass over [x, y]
    cls_token, keys = crop_predictions(backbone, [outputs], crop_features, precision, antialias)
    terms = {"appearance": _mse_per_row(cls_token[:count].float(), targets.cls_token).mean()}
    if weights.structure > 0:
        terms["structure"] = _mse_per_row(self_similarity(keys[:count]), targets.self_similarity).mean()
    if weights.identity > 0:
        terms["identity"] = _mse_per_row(keys[count:].float(), targets.keys).mean()
    terms["total"] = sum(getattr(weights, name) * value for name, value in terms.items())
    return terms


def splice_losses(
    generator: torch.nn.Module,
    backbone: DinoBackbone,
    batch: StepBatch,
    weights: LossWeights,
    full_target: torch.Tensor | None,
    precision: torch.dtype | None = None,
    antialias: bool = True,
) -> dict[str, torch.Tensor]:
    """Loss terms of one step of one pair (unweighted) and their weighted sum under 'total': a pack of one."""
    return pack_losses([generator], backbone, [batch], [weights], [full_target], precision, antialias=antialias)[0]


def pack_losses(
    generators: list[torch.nn.Module],
    backbone: DinoBackbone,
    batches: list[StepBatch],
    weights: list[LossWeights],
    full_targets: list[torch.Tensor | None],
    precision: torch.dtype | None = None,
    crop_features: Features | None = None,
    antialias: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Loss terms of one step for K pairs trained together, one dict per pair (as `splice_losses` returns).

    Pairs share only the backbone passes, in which every image is its own batch row, so a pair's terms do not
    depend on its pack-mates; each generator sees each of its crops in its own call (BatchNorm statistics per
    crop). `crop_features` reads the 224x224 crop passes (e.g. a compiled reader); default: the eager backbone.
    Terms weighted 0 are left out of a pair's dict.
    """
    device = batches[0].structure_crop.device
    crop_features = crop_features or last_block_reader(backbone)
    count = len(generators)
    # 1. targets: one no-grad backbone pass over every pair's [structure crop, appearance crop]: (2K, 3, 224, 224)
    targets = crop_targets(
        backbone,
        [b.structure_crop for b in batches],
        [b.appearance_crop for b in batches],
        crop_features,
        precision,
        antialias,
    )
    target_cls, target_keys, target_selfsim = targets.cls_token, targets.keys, targets.self_similarity

    # 2. generators: one call per crop, so BatchNorm sees each crop alone; x for every pair, then y where needed
    outputs = [generator(batch.structure_crop) for generator, batch in zip(generators, batches)]  # x
    with_identity = [i for i, w in enumerate(weights) if w.identity > 0]
    outputs += [generators[i](batches[i].appearance_crop) for i in with_identity]  # y

    # 3. predictions: one backbone pass over [x_1 .. x_K, y_i ...]; per-pair terms as (K,) vectors
    cls_token, keys = crop_predictions(backbone, outputs, crop_features, precision, antialias)
    appearance = _mse_per_row(cls_token[:count].float(), target_cls)  # (K,)
    structure = identity = None
    if any(w.structure > 0 for w in weights):
        structure = _mse_per_row(self_similarity(keys[:count]), target_selfsim)  # (K,)
    if with_identity:
        targets = target_keys if len(with_identity) == count else torch.stack([target_keys[i] for i in with_identity])
        identity = dict(zip(with_identity, _mse_per_row(keys[count:].float(), targets)))
    terms = []
    for i, w in enumerate(weights):
        pair = {"appearance": appearance[i]}
        if w.structure > 0:
            pair["structure"] = structure[i]
        if w.identity > 0:
            pair["identity"] = identity[i]
        terms.append(pair)

    # 4. the whole structure image through G at its full resolution; one backbone pass per image size
    full = [i for i, w in enumerate(weights) if w.full_image]
    for i in full:
        if batches[i].structure_full is None or full_targets[i] is None:
            raise ValueError("a full-image step needs batch.structure_full and full_target")
    wholes = {i: generators[i](batches[i].structure_full) for i in full}
    for members in _by_size(wholes).values():
        with autocast(device, precision):
            features = backbone.last_block(torch.cat([backbone.prepare(wholes[i], antialias) for i in members]))
        for row, i in enumerate(members):
            terms[i]["full_structure"] = F.mse_loss(self_similarity(features.keys[row : row + 1]), full_targets[i])
            terms[i]["full_appearance"] = F.mse_loss(features.cls_token[row : row + 1].float(), target_cls[i : i + 1])

    for pair, w in zip(terms, weights):
        pair["total"] = sum(getattr(w, name) * value for name, value in pair.items())
    return terms


def _mse_per_row(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each batch row: (B, ...) x (B, ...) -> (B,)."""
    return (predicted - target).pow(2).flatten(1).mean(dim=1)


def _by_size(images: dict[int, torch.Tensor]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, image in images.items():
        groups.setdefault(tuple(image.shape[-2:]), []).append(i)
    return groups


def autocast(device: torch.device, precision: torch.dtype | None):
    """bf16 autocast for the backbone when asked; a no-op context for fp32."""
    if precision is None or precision == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision)
