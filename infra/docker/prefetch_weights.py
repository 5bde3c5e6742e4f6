"""Fetch pretrained weights into the caches (HF_HOME, TORCH_HOME) at image build time.

    python infra/docker/prefetch_weights.py dino_vitb8 dino_vits16 lpips

Uses the same loaders as training and evaluation, so the files land exactly where they look for them; fails
(non-zero exit) if any weights cannot be had, so a broken build never ships an image that downloads at run time.
"""
from __future__ import annotations

import argparse
import sys

from pipeline.backbone import DINO_BACKBONES, load_backbone

LPIPS = "lpips"  # the AlexNet trunk LPIPS uses (torchvision weights) plus LPIPS's own linear layers


def prefetch(name: str) -> str:
    """Load `name` once so its weights are cached; returns what was loaded, for the build log."""
    if name in DINO_BACKBONES or name.startswith("random:"):
        backbone = load_backbone(name)
        return f"{name}: {backbone.weights_id}"
    if name == LPIPS:
        import lpips

        lpips.LPIPS(net="alex", verbose=False)
        return f"{name}: alex"
    raise SystemExit(f"unknown weights {name!r}: use any of {', '.join([*DINO_BACKBONES, LPIPS])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help=f"any of {', '.join([*DINO_BACKBONES, LPIPS])}")
    args = parser.parse_args(argv)
    for name in args.names:
        print(prefetch(name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
