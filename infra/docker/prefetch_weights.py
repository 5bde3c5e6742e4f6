"""Fetch pretrained weights into the caches (HF_HOME, TORCH_HOME) at image build time.

    python infra/docker/prefetch_weights.py dino_vitb8 eval

Names: a training backbone (dino_vitb8, dino_vits8, dino_vitb16, dino_vits16) or `eval`, every model the default
metrics of `splice evaluate` load (DINO ViT-B/8, LPIPS's AlexNet, the layout segmenter; add dino_vits16 for the
optional dino_i_s16). The project's
own loaders do the fetching, so the files land exactly where training and evaluation look for them; any weights
that cannot be had fail the build, so an image never ships that would download at run time.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.method.backbone import load_backbone
from pipeline.method.weights import DINO_BACKBONES

EVAL = "eval"


def prefetch(name: str) -> str:
    """Load `name` once so its weights are cached; returns what was loaded, for the build log."""
    if name in DINO_BACKBONES or name.startswith("random:"):
        backbone = load_backbone(name)
        return f"{name}: {backbone.weights_id}"
    if name == EVAL:
        from evaluation.models import EvalSettings, load_metric_models

        models = load_metric_models(EvalSettings(explicit=True), "cpu")  # explicit: a missing model is an error
        return f"{name}: " + ", ".join(f"{metric}={model_id}" for metric, model_id in models.ids.items())
    raise SystemExit(f"unknown weights {name!r}: use any of {', '.join([*DINO_BACKBONES, EVAL])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help=f"any of {', '.join([*DINO_BACKBONES, EVAL])}")
    args = parser.parse_args(argv)
    for name in args.names:
        print(prefetch(name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
