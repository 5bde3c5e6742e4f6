"""The evaluation metrics: definitions, and pure functions of images (no storage, no Ray).

Every function takes batches of images as (B, 3, H, W) float tensors in [0, 1] and returns one value per item,
(B,). Structure and output share a size (an output of another size is resized to the structure image's size
first, see `evaluation.engine`); appearance and output may differ.

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

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.method.backbone import DinoBackbone, backbone_input_size, resize_for_backbone, self_similarity

SMALL_SIDE = 512  # LPIPS and segmentation compare at the structure size, long side capped at this
PROTOCOL_SIDE = 512  # the published protocol first resizes every image to this square with PIL bilinear
PROTOCOL = ("published protocol (Ctrl-X evaluation, genforce/ctrl-x data/evaluation; Splice's losses): "
            f"{PROTOCOL_SIDE}x{PROTOCOL_SIDE} PIL bilinear, Resize(224, max_size=480), ImageNet norm")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    version: str  # bump when the definition changes: stored values of another version are recomputed
    better: str  # "lower" | "higher"
    model: str  # which model it needs: "vitb8" | "vits16" | "lpips" | "segmenter"
    aspect: str  # "structure" | "appearance" | "layout"
    summary: str  # one line, shown in reports: what it measures and which protocol it follows


METRICS: dict[str, MetricInfo] = {m.name: m for m in [
    MetricInfo("selfsim", "1", "lower", "vitb8", "structure",
               "MSE between last-block key self-similarity matrices (DINO ViT-B/8) of structure image and output; "
               + PROTOCOL),
    MetricInfo("dino_i", "2", "higher", "vitb8", "appearance",
               "cosine similarity of last-block [CLS] tokens (before the final norm, DINO ViT-B/8) of output and "
               "appearance image; " + PROTOCOL),
    MetricInfo("cls_mse", "2", "lower", "vitb8", "appearance",
               "MSE between last-block [CLS] tokens (before the final norm, DINO ViT-B/8) of appearance image and "
               "output, each resized as for training (aspect kept): the training objective's appearance distance"),
    MetricInfo("lpips_structure", "1", "lower", "lpips", "structure",
               f"LPIPS v0.1 (AlexNet) between structure image and output, long side at most {SMALL_SIDE} px"),
    MetricInfo("layout_miou", "1", "higher", "segmenter", "layout",
               "mean IoU of semantic segmentations of structure image and output over the classes present in either "
               "(background included)"),
    MetricInfo("selfsim_native", "2", "lower", "vitb8", "structure",
               "selfsim with aspect ratio kept (resized as for training, no 512x512 step); not the published protocol"),
    MetricInfo("dino_i_s16", "2", "higher", "vits16", "appearance",
               "cosine similarity of DINO ViT-S/16 [CLS] embeddings after the final norm of appearance image and "
               "output, aspect kept; not the published protocol"),
]}
# the published protocol's two metrics, the objective's appearance distance, LPIPS and layout; the others on request
DEFAULT_METRICS = ("selfsim", "dino_i", "cls_mse", "lpips_structure", "layout_miou")


# --- sizes -------------------------------------------------------------------------------------------------

def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of (B, 3, H, W) floats, the same operation `DinoBackbone.prepare` uses."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)


def small_size(height: int, width: int, max_side: int = SMALL_SIDE) -> tuple[int, int]:
    """Working size of LPIPS and segmentation: the image's size, downscaled so the long side is <= max_side."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def vit_size(height: int, width: int) -> tuple[int, int]:
    """Backbone input size (as for training): torchvision's Resize(224, max_size=480) rule."""
    return backbone_input_size(height, width)


def protocol_image(image: torch.Tensor) -> torch.Tensor:
    """The published protocol's input: (3, H, W) uint8 -> (3, 224, 224) float in [0, 1], before normalisation.

    PIL bilinear to 512x512 (on the 8-bit image, as the protocol reads files with PIL), ToTensor, then torchvision's
    Resize(224, max_size=480), antialiased. `DinoBackbone.prepare` then only normalises it (a 224x224 square is
    already at its backbone size, the pretrained grid: no position-embedding interpolation)."""
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).resize((PROTOCOL_SIDE, PROTOCOL_SIDE), Image.BILINEAR)
    tensor = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)  # ToTensor
    return resize_for_backbone(tensor[None], antialias=True)[0]


# --- DINO descriptors ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VitDescriptors:
    cls_token: torch.Tensor  # (B, D) last block's [CLS], before the final norm
    final_cls: torch.Tensor  # (B, D) [CLS] after the final norm
    self_similarity: torch.Tensor | None  # (B, N, N) cosine self-similarity of the last block's keys


@torch.no_grad()
def vit_descriptors(backbone: DinoBackbone, images: torch.Tensor, with_self_similarity: bool) -> VitDescriptors:
    """One backbone pass over a batch of same-size images in [0, 1]."""
    features = backbone.last_block(backbone.prepare(images.float()))
    similarity = self_similarity(features.keys) if with_self_similarity else None
    return VitDescriptors(features.cls_token.float(), backbone.final_cls(features).float(), similarity)


def mse_per_item(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over all but the first dimension: (B, ...) x (B, ...) -> (B,)."""
    return (a.float() - b.float()).pow(2).flatten(1).mean(1)


def cosine_per_item(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


@torch.no_grad()
def selfsim_mse(backbone: DinoBackbone, structure: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) structure images and outputs of the same size -> (B,). `selfsim` on protocol images
    (`protocol_image`), `selfsim_native` on the images as they are."""
    batch = structure.shape[0]
    similarity = vit_descriptors(backbone, torch.cat([structure, output]), True).self_similarity  # (2B, N, N)
    return mse_per_item(similarity[:batch], similarity[batch:])


@torch.no_grad()
def cls_mse(backbone: DinoBackbone, appearance: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) appearance images and (B, 3, H', W') outputs -> (B,)."""
    return mse_per_item(vit_descriptors(backbone, appearance, False).cls_token,
                        vit_descriptors(backbone, output, False).cls_token)


@torch.no_grad()
def cls_cosine(backbone: DinoBackbone, appearance: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) appearance images and (B, 3, H', W') outputs -> (B,) cosine similarity in [-1, 1] of the
    last block's [CLS] before the final norm: `dino_i` on protocol images (`protocol_image`)."""
    return cosine_per_item(vit_descriptors(backbone, appearance, False).cls_token,
                           vit_descriptors(backbone, output, False).cls_token)


@torch.no_grad()
def final_cls_cosine(backbone: DinoBackbone, appearance: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """As `cls_cosine`, after the final norm (the embedding DINO reports): `dino_i_s16` with ViT-S/16."""
    return cosine_per_item(vit_descriptors(backbone, appearance, False).final_cls,
                           vit_descriptors(backbone, output, False).final_cls)


# --- LPIPS -------------------------------------------------------------------------------------------------

@torch.no_grad()
def lpips_structure(model: torch.nn.Module, structure: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """LPIPS between same-size structure images and outputs in [0, 1], at `small_size` -> (B,)."""
    size = small_size(*structure.shape[-2:])
    distance = model(resize(structure.float(), size), resize(output.float(), size), normalize=True)  # (B, 1, 1, 1)
    return distance.flatten()


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
    confusion = torch.bincount((offsets + a * num_classes + b).flatten(), minlength=batch * num_classes ** 2)
    confusion = confusion.reshape(batch, num_classes, num_classes).double()  # (B, C, C): rows a, columns b
    intersection = confusion.diagonal(dim1=1, dim2=2)  # (B, C)
    union = confusion.sum(2) + confusion.sum(1) - intersection  # (B, C)
    present = union > 0
    iou = torch.where(present, intersection / union.clamp(min=1), torch.zeros_like(union))
    return (iou.sum(1) / present.sum(1).clamp(min=1)).float()


@torch.no_grad()
def layout_miou(segmenter, structure: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Mean IoU of the segmenter's label maps of same-size structure images and outputs, at `small_size` -> (B,)."""
    batch = structure.shape[0]
    size = small_size(*structure.shape[-2:])
    labels = segmenter.segment(torch.cat([resize(structure.float(), size), resize(output.float(), size)]))  # (2B, h, w)
    return mean_iou(labels[:batch], labels[batch:], segmenter.num_classes)
