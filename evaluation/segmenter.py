"""Semantic segmenters for `layout_miou`: pluggable.

A segmenter is any object with
  name: str                 shown in reports
  weights_id: str           provenance ('random' for random weights)
  num_classes: int
  class_names: list[str]    index -> class name (index 0 is background for the torchvision models)
  segment(images) -> labels (B, 3, H, W) floats in [0, 1] -> (B, h, w) int64 labels in [0, num_classes)

Specs (`--segmenter`):
  deeplabv3_mobilenet_v3_large (default) | lraspp_mobilenet_v3_large | fcn_resnet50 | deeplabv3_resnet50 | ...
        a torchvision segmentation model with its default pretrained weights (COCO subset with the 20 Pascal VOC
        classes + background: 21 classes, all of them counted by layout_miou)
  random:NAME        the same architecture with random weights (smoke tests; results labelled 'random')
  py:MODULE:FACTORY  FACTORY(device) returns a segmenter (plug in your own)
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.weights import MetricUnavailable, load_state_dict
from pipeline.method.weights import RANDOM_WEIGHTS_ID

DEFAULT_SEGMENTER = "deeplabv3_mobilenet_v3_large"


class TorchvisionSegmenter(nn.Module):
    """A torchvision segmentation model; input resized and normalised as its weights' preset says."""

    def __init__(
        self,
        model: nn.Module,
        name: str,
        weights_id: str,
        class_names: list[str],
        resize_size: int,
        mean: list[float],
        std: list[float],
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.weights_id = weights_id
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.resize_size = resize_size  # short side, as the weights' own transforms resize
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        scale = self.resize_size / min(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        pixels = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        logits = self.model((pixels - self.mean) / self.std)["out"]  # (B, C, h, w)
        return logits.argmax(1)


def load_segmenter(spec, device: torch.device | str = "cpu", weights_file: str | None = None):
    """Build the segmenter named by `spec` (see module docstring), or return `spec` if it already is one."""
    if not isinstance(spec, str):
        return spec
    if spec.startswith("py:"):
        return _from_factory(spec, device)
    from torchvision import models

    random = spec.startswith("random:")
    name = spec.split(":", 1)[1] if random else spec
    known = models.list_models(module=models.segmentation)
    if name not in known:
        raise MetricUnavailable(
            f"segmenter '{spec}': not a torchvision segmentation model; use one of {', '.join(known)}, "
            f"random:NAME or py:MODULE:FACTORY"
        )
    weights = models.get_model_weights(name).DEFAULT
    categories = weights.meta["categories"]
    builder = models.get_model_builder(name)
    model = builder(weights=None, weights_backbone=None, num_classes=len(categories))
    if random:
        weights_id = RANDOM_WEIGHTS_ID
    else:
        state, weights_id = load_state_dict(
            weights.url, f"segmenter {name} (metric layout_miou)", weights_file, option="--segmenter-weights PATH"
        )
        # the published files carry the auxiliary training head too; inference does not use it
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("aux_classifier.")})
        weights_id = f"{weights.name}:{weights_id}"
    preset = weights.transforms()
    segmenter = TorchvisionSegmenter(
        model, name, weights_id, categories, int(preset.resize_size[0]), list(preset.mean), list(preset.std)
    )
    return segmenter.to(device)


def _from_factory(spec: str, device):
    try:
        _, module_name, factory_name = spec.split(":", 2)
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ValueError, ImportError, AttributeError) as exc:
        raise MetricUnavailable(
            f"segmenter '{spec}': cannot import the factory ({exc}); use py:MODULE:FACTORY"
        ) from exc
    segmenter = factory(device)
    for attribute in ("name", "weights_id", "num_classes", "segment"):
        if not hasattr(segmenter, attribute):
            raise MetricUnavailable(
                f"segmenter '{spec}': the object it returns has no '{attribute}' (see evaluation.segmenter)"
            )
    return segmenter
