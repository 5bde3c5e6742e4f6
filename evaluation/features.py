"""Features a metric's model gives for a batch of images: named, each computed by an extractor that can give
several from one model pass (the ViT's [CLS] tokens and key self-similarity come from one pass over the last
block). A metric's `Need` names one (evaluation.registry); the engine asks each extractor once per (model, image,
view) for every feature the asked-for metrics need of it.

  cls_token         (B, D) the ViT's last block's [CLS], before the final norm
  final_cls         (B, D) [CLS] after the final norm (the embedding DINO reports)
  self_similarity   (B, N, N) cosine self-similarity of the last block's keys (heads concatenated, [CLS] included)
  labels            (B, h, w) int64 label map of a segmenter (its `segment`)
  image             the view itself, (B, 3, h, w) in [0, 1]: for metrics that run their model themselves (LPIPS)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.method.backbone import self_similarity

IMAGE = "image"


@dataclass(frozen=True)
class Extractor:
    features: tuple[str, ...]
    run: (
        Callable  # (model, images (B, 3, h, w) float in [0, 1], wanted: tuple of feature names) -> tuple, in that order
    )


EXTRACTORS: dict[str, Extractor] = {}  # feature name -> its extractor


def register_features(*names: str):
    """Decorator: fn(model, images, wanted) gives the features `names` (those in `wanted`, in that order)."""

    def decorate(fn: Callable) -> Callable:
        extractor = Extractor(tuple(names), fn)
        for name in names:
            EXTRACTORS[name] = extractor
        return fn

    return decorate


@register_features("cls_token", "final_cls", "self_similarity")
@torch.no_grad()
def vit_features(backbone, images: torch.Tensor, wanted: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """One backbone pass over a batch of same-size images in [0, 1]."""
    features = backbone.last_block(backbone.prepare(images.float()))
    given = {}
    if "cls_token" in wanted:
        given["cls_token"] = features.cls_token.float()
    if "final_cls" in wanted:
        given["final_cls"] = backbone.final_cls(features).float()
    if "self_similarity" in wanted:
        given["self_similarity"] = self_similarity(features.keys)
    return tuple(given[name] for name in wanted)


@register_features("labels")
@torch.no_grad()
def segment(segmenter, images: torch.Tensor, wanted: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    return (segmenter.segment(images.float()),)
