"""The built-in evaluation metrics, each defined once: the registry entry is the function that computes it
(evaluation.registry), with the model, views and features it needs declared beside it. No storage, no Ray.

Every function takes the batched features its `needs` name (after the model) and returns one value per pair, (B,).
For the structure comparisons other than the published protocol, an output whose size differs from its structure
image's is first resized to the structure image's size (views structure_native, structure_small: evaluation.views);
the appearance comparisons see each image at its own aspect ratio (view native).

The published protocol (the default structure and appearance metrics) is that of Ctrl-X's evaluation code
(github genforce/ctrl-x, data/evaluation/evaluate.py + score.py; its comparison table reports Splice on natural
pairs at self-sim 0.030 and DINO-I 0.907), itself built from Splice's losses: every image (output, structure,
appearance) is resized to 512x512 with PIL bilinear, then ToTensor, torchvision `Resize(224, max_size=480)`
(antialiased), ImageNet normalisation, DINO ViT-B/8 (`protocol_image`).
- selfsim (structure, lower is better): MSE between the cosine self-similarity matrices of the last block's keys
  (heads concatenated, [CLS] included) of the structure image and of the output. Published protocol.
- dino_i (appearance, higher is better): cosine similarity of the last block's [CLS] tokens (before the final
  norm) of the output and of the appearance image. Published protocol.
- cls_mse (appearance, lower is better): MSE between the last block's [CLS] tokens before the final norm
  (DINO ViT-B/8) of the appearance image and of the output, each at its own aspect ratio resized as for training:
  the training objective's appearance distance.
- selfsim_native (structure, lower is better): selfsim without the 512x512 step: structure image and output keep
  their aspect ratio and are resized as for training (`DinoBackbone.prepare`). Not the published protocol.
- dino_i_s16 (appearance, higher is better): cosine similarity of DINO ViT-S/16 [CLS] embeddings AFTER the final
  norm, each image at its own aspect ratio. Not the published protocol (this project's `dino_i` before 2026-11).
- lpips_structure (structure, lower is better): LPIPS v0.1 (AlexNet) between the structure image and the output,
  both at the structure image's size downscaled so that the long side is at most `SMALL_SIDE` px.
- layout_miou (semantic layout, higher is better): mean IoU between the semantic label maps that a segmenter
  gives for the structure image and for the output (same working size as LPIPS). The classes that count are those
  present in either map, the segmenter's background class included; a pair where both maps are all background
  scores 1. See `mean_iou`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evaluation.registry import METRICS, Need, register_metric  # noqa: F401  (METRICS: re-exported)
from evaluation.views import PROTOCOL_SIDE, SMALL_SIDE

PROTOCOL = (
    "published protocol (Ctrl-X evaluation, genforce/ctrl-x data/evaluation; Splice's losses): "
    f"{PROTOCOL_SIDE}x{PROTOCOL_SIDE} PIL bilinear, Resize(224, max_size=480), ImageNet norm"
)
# the published protocol's two metrics, the objective's appearance distance, LPIPS and layout; the others on request
DEFAULT_METRICS = ("selfsim", "dino_i", "cls_mse", "lpips_structure", "layout_miou")


def mse_per_item(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over all but the first dimension: (B, ...) x (B, ...) -> (B,)."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def cosine_per_item(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


# --- DINO: the published protocol ---------------------------------------------------------------------------


@register_metric(
    "selfsim",
    version="1",
    better="lower",
    model="vitb8",
    aspect="structure",
    needs=(Need("structure", "protocol", "self_similarity"), Need("output", "protocol", "self_similarity")),
    summary="MSE between last-block key self-similarity matrices (DINO ViT-B/8) of structure image and "
    "output; " + PROTOCOL,
)
def selfsim(backbone, structure_similarity: torch.Tensor, output_similarity: torch.Tensor) -> torch.Tensor:
    return mse_per_item(structure_similarity, output_similarity)  # (B, N, N) x 2 -> (B,)


@register_metric(
    "dino_i",
    version="2",
    better="higher",
    model="vitb8",
    aspect="appearance",
    needs=(Need("output", "protocol", "cls_token"), Need("appearance", "protocol", "cls_token")),
    summary="cosine similarity of last-block [CLS] tokens (before the final norm, DINO ViT-B/8) of output "
    "and appearance image; " + PROTOCOL,
)
def dino_i(backbone, output_cls: torch.Tensor, appearance_cls: torch.Tensor) -> torch.Tensor:
    return cosine_per_item(output_cls, appearance_cls)  # (B, D) x 2 -> (B,)


# --- DINO: the training objective's view (aspect kept) ----------------------------------------------------------


@register_metric(
    "cls_mse",
    version="2",
    better="lower",
    model="vitb8",
    aspect="appearance",
    needs=(Need("output", "native", "cls_token"), Need("appearance", "native", "cls_token")),
    summary="MSE between last-block [CLS] tokens (before the final norm, DINO ViT-B/8) of appearance image "
    "and output, each resized as for training (aspect kept): the training objective's appearance "
    "distance",
)
def cls_mse(backbone, output_cls: torch.Tensor, appearance_cls: torch.Tensor) -> torch.Tensor:
    return mse_per_item(output_cls, appearance_cls)


@register_metric(
    "lpips_structure",
    version="1",
    better="lower",
    model="lpips",
    aspect="structure",
    needs=(Need("structure", "structure_small"), Need("output", "structure_small")),
    summary=f"LPIPS v0.1 (AlexNet) between structure image and output, long side at most {SMALL_SIDE} px",
)
def lpips_structure(model, structure: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    return model(structure.float(), output.float(), normalize=True).flatten()  # (B, 1, 1, 1) -> (B,)


@register_metric(
    "layout_miou",
    version="1",
    better="higher",
    model="segmenter",
    aspect="layout",
    needs=(Need("structure", "structure_small", "labels"), Need("output", "structure_small", "labels")),
    summary="mean IoU of semantic segmentations of structure image and output over the classes present in "
    "either (background included)",
)
def layout_miou(segmenter, structure_labels: torch.Tensor, output_labels: torch.Tensor) -> torch.Tensor:
    return mean_iou(structure_labels, output_labels, segmenter.num_classes)


@register_metric(
    "selfsim_native",
    version="2",
    better="lower",
    model="vitb8",
    aspect="structure",
    needs=(
        Need("structure", "structure_native", "self_similarity"),
        Need("output", "structure_native", "self_similarity"),
    ),
    summary="selfsim with aspect ratio kept (resized as for training, no 512x512 step); not the published protocol",
)
def selfsim_native(backbone, structure_similarity: torch.Tensor, output_similarity: torch.Tensor) -> torch.Tensor:
    return mse_per_item(structure_similarity, output_similarity)


@register_metric(
    "dino_i_s16",
    version="2",
    better="higher",
    model="vits16",
    aspect="appearance",
    needs=(Need("output", "native", "final_cls"), Need("appearance", "native", "final_cls")),
    summary="cosine similarity of DINO ViT-S/16 [CLS] embeddings after the final norm of appearance image "
    "and output, aspect kept; not the published protocol",
)
def dino_i_s16(backbone, output_cls: torch.Tensor, appearance_cls: torch.Tensor) -> torch.Tensor:
    return cosine_per_item(output_cls, appearance_cls)


# --- semantic layout -------------------------------------------------------------------------------------------


def mean_iou(labels_a: torch.Tensor, labels_b: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean IoU per item of two (B, H, W) integer label maps -> (B,).

    IoU_c = |a == c and b == c| / |a == c or b == c|, averaged over the classes c present in a or b (a class absent
    from both is not counted; labels outside [0, num_classes) are an error).
    """
    batch = labels_a.shape[0]
    a = labels_a.reshape(batch, -1).long()
    b = labels_b.reshape(batch, -1).long()
    if a.numel() and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= num_classes):
        raise ValueError(f"segmentation labels must lie in [0, {num_classes})")
    offsets = torch.arange(batch, device=a.device)[:, None] * num_classes * num_classes
    confusion = torch.bincount((offsets + a * num_classes + b).flatten(), minlength=batch * num_classes**2)
    confusion = confusion.reshape(batch, num_classes, num_classes).double()  # (B, C, C): rows a, columns b
    intersection = confusion.diagonal(dim1=1, dim2=2)  # (B, C)
    union = confusion.sum(2) + confusion.sum(1) - intersection  # (B, C)
    present = union > 0
    iou = torch.where(present, intersection / union.clamp(min=1), torch.zeros_like(union))
    return (iou.sum(1) / present.sum(1).clamp(min=1)).float()
