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
terms are what it would get alone. Pairs of one image size at one step form a group (`GroupStep`) whose generators
run as one call (`pipeline.method.grouped_generator`); the terms come back as one (G, T) tensor per group.

Conditioned training (`conditioned_losses`, SpliceNet): B pairs, ONE generator G(image, appearance [CLS]) called
once on the B structure crops and once on the B appearance crops; the same two backbone passes (`crop_targets`,
`crop_predictions`) and the same crop terms, averaged over the pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.method.augment import StepBatch
from pipeline.method.backbone import DinoBackbone, self_similarity
from pipeline.method.config import TrainConfig

OBJECTIVE_TERMS = ("appearance", "structure", "identity", "full_appearance", "full_structure")


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


@dataclass(frozen=True)
class GroupStep:
    """One step of G pairs whose generators run as one call (a `GroupedGenerator`, or one `SkipGenerator` for G=1).

    The pairs share their crop shapes and whether the identity and full-image terms are on at this step; their
    term weights may differ."""

    generator: Callable[[torch.Tensor], torch.Tensor]  # (G, 3, h, w) -> (G, 3, h, w), image k through generator k
    batch: StepBatch  # G pairs' crops (and whole structure images on full-image steps)
    weights: list[LossWeights]  # per pair
    full_target: torch.Tensor | None = None  # (G, N, N) whole-structure self-similarities, on full-image steps


@dataclass(frozen=True)
class GroupTerms:
    """A group's loss terms: `values[k, j]` is pair k's term `names[j]` (unweighted), `total[k]` its weighted sum."""

    names: tuple[str, ...]
    values: torch.Tensor  # (G, T)
    total: torch.Tensor  # (G,)

    def pair(self, k: int, weights: LossWeights) -> dict[str, torch.Tensor]:
        """Pair k's terms as a dict (terms it weighs 0 left out) with 'total': what `splice_losses` returns."""
        terms = {name: self.values[k, j] for j, name in enumerate(self.names) if getattr(weights, name) > 0}
        terms["total"] = self.total[k]
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
    """Loss terms of one step of one pair (unweighted) and their weighted sum under 'total': a group of one."""
    group = GroupStep(generator, batch, [weights], full_target)
    return pack_losses([group], backbone, precision, antialias=antialias)[0].pair(0, weights)


def pack_losses(
    groups: list[GroupStep],
    backbone: DinoBackbone,
    precision: torch.dtype | None = None,
    crop_features: Features | None = None,
    antialias: bool = True,
) -> list[GroupTerms]:
    """Loss terms of one step for every pair of a pack, one `GroupTerms` per group.

    The pack shares the backbone passes, in which every image is its own batch row; each group's generators run as
    one call per kind of input (structure crops, appearance crops, whole images), in which each pair's image goes
    through its own generator only, BatchNorm statistics per image. So a pair's terms do not depend on its group or
    pack. `crop_features` reads the 224x224 crop passes (e.g. a compiled reader); default: the eager backbone.
    """
    crop_features = crop_features or last_block_reader(backbone)
    for group in groups:
        _check_group(group)
    sizes = [len(group.weights) for group in groups]
    offsets = [sum(sizes[:n]) for n in range(len(groups))]
    count = sum(sizes)
    weights = [w for group in groups for w in group.weights]  # per pair, in pack order
    # 1. targets: one no-grad backbone pass over every group's [structure crops, appearance crops]: (2P, 3, 224, 224)
    targets = crop_targets(
        backbone,
        [group.batch.structure_crop for group in groups],
        [group.batch.appearance_crop for group in groups],
        crop_features,
        precision,
        antialias,
    )

    # 2. generators: one call per group for its structure crops (x), one for its appearance crops (y) where the
    # identity term is on
    outputs = [group.generator(group.batch.structure_crop) for group in groups]  # x: (G, 3, s, s) each
    with_identity = [n for n, group in enumerate(groups) if group.weights[0].identity > 0]
    outputs += [groups[n].generator(groups[n].batch.appearance_crop) for n in with_identity]  # y

    # 3. predictions: one backbone pass over [x of every group, y of the groups with identity]; terms as (P,) vectors
    cls_token, keys = crop_predictions(backbone, outputs, crop_features, precision, antialias)
    columns = {"appearance": _mse_per_row(cls_token[:count].float(), targets.cls_token)}  # (P,)
    if any(w.structure > 0 for w in weights):
        columns["structure"] = _mse_per_row(self_similarity(keys[:count]), targets.self_similarity)
    if with_identity:
        rows = [offsets[n] + k for n in with_identity for k in range(sizes[n])]
        target_keys = targets.keys if len(rows) == count else targets.keys[rows]
        columns["identity"] = _in_rows(_mse_per_row(keys[count:].float(), target_keys), rows, count)

    # 4. the whole structure images through their groups' generators; one backbone pass per image size
    full = [n for n, group in enumerate(groups) if group.weights[0].full_image]
    wholes = {n: groups[n].generator(groups[n].batch.structure_full) for n in full}  # (G, 3, H, W) each
    if full:
        structure_parts, appearance_parts, full_rows = [], [], []
        for members in _by_size(wholes).values():
            rows = [offsets[n] + k for n in members for k in range(sizes[n])]
            with autocast(cls_token.device, precision):
                features = backbone.last_block(torch.cat([backbone.prepare(wholes[n], antialias) for n in members]))
            target = torch.cat([groups[n].full_target for n in members])
            structure_parts.append(_mse_per_row(self_similarity(features.keys), target))
            appearance_parts.append(_mse_per_row(features.cls_token.float(), targets.cls_token[rows]))
            full_rows += rows
        columns["full_structure"] = _in_rows(torch.cat(structure_parts), full_rows, count)
        columns["full_appearance"] = _in_rows(torch.cat(appearance_parts), full_rows, count)

    # 5. per group: its rows of every term, and the weighted total
    names = tuple(name for name in OBJECTIVE_TERMS if name in columns)
    values = torch.stack([columns[name] for name in names], dim=1)  # (P, T)
    weight_table = torch.tensor([[getattr(w, name) for name in names] for w in weights], dtype=values.dtype)
    totals = (values.nan_to_num() * weight_table.to(values.device, non_blocking=True)).sum(dim=1)  # (P,)
    return [
        GroupTerms(names, values[offset : offset + size], totals[offset : offset + size])
        for offset, size in zip(offsets, sizes)
    ]


def _check_group(group: GroupStep) -> None:
    if len(group.weights) != len(group.batch.structure_crop):
        raise ValueError(f"a group of {len(group.weights)} weights got {len(group.batch.structure_crop)} crops")
    first = group.weights[0]
    if any((w.identity > 0) != (first.identity > 0) or w.full_image != first.full_image for w in group.weights):
        raise ValueError("pairs of one group must agree on whether the identity and full-image terms are on")
    if first.full_image and (group.batch.structure_full is None or group.full_target is None):
        raise ValueError("a full-image step needs batch.structure_full and full_target")


def _in_rows(values: torch.Tensor, rows: list[int], count: int) -> torch.Tensor:
    """A (count,) column holding `values` at `rows` and NaN elsewhere (a term off for those pairs); `values` itself
    where the rows are all of them, in order (the usual case: no fill, no scatter)."""
    if rows == list(range(count)):
        return values
    index = torch.tensor(rows, dtype=torch.long).to(values.device, non_blocking=True)
    return torch.full((count,), float("nan"), device=values.device).index_put((index,), values)


def _mse_per_row(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each batch row: (B, ...) x (B, ...) -> (B,)."""
    return (predicted - target).pow(2).flatten(1).mean(dim=1)


def _by_size(images: dict[int, torch.Tensor]) -> dict[tuple, list[int]]:
    """Keys of `images` grouped by the images' (height, width)."""
    groups: dict[tuple, list[int]] = {}
    for i, image in images.items():
        groups.setdefault(tuple(image.shape[-2:]), []).append(i)
    return groups


def autocast(device: torch.device, precision: torch.dtype | None):
    """bf16 autocast for the backbone when asked; a no-op context for fp32."""
    if precision is None or precision == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision)
