"""The frozen DINO ViT and the three descriptors Splice reads from its last block.

- appearance: the [CLS] token of the last block's output, before the final LayerNorm;
- keys: the last block's key projections, all heads concatenated per token ([CLS] included);
- structure: the cosine self-similarity matrix of those keys.

Features are read by an explicit walk over `vit.blocks` (no hooks). Patch size, head count and the input
normalisation come from the model and its pretrained config, never from its name.

Backbone specs (the name is the spec):
  dino_vitb8 | dino_vits8 | dino_vitb16 | dino_vits16   timm's DINO weights, downloaded and cached on first use
  file:PATH                                             local weights (timm or original DINO state dict)
  random:TIMM_ARCH                                      randomly initialised ViT, e.g. random:vit_tiny_patch16_224
                                                        (random:vit_base_patch8_224.dino: DINO's shape and input norm)
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchvision.transforms.v2.functional._geometry import _compute_resized_output_size as _torchvision_resized_size

from pipeline.errors import SpliceError
from pipeline.method.weights import DINO_BACKBONES, RANDOM_WEIGHTS_ID, dino_hub_id, local_hub_file
from pipeline.network import reachable

log = logging.getLogger(__name__)

SHORT_SIDE = 224  # backbone input: short side resized to this ...
LONG_SIDE_MAX = 480  # ... unless the long side would exceed this


class BackboneUnavailable(SpliceError, RuntimeError):
    """The backbone's weights cannot be had (offline and not cached, bad file, unknown spec)."""


@dataclass(frozen=True)
class LastBlockFeatures:
    cls_token: torch.Tensor  # (B, D) [CLS] of the last block's output, before the final norm
    keys: torch.Tensor  # (B, N, D) last block's keys, heads concatenated; N = 1 + patches
    tokens: torch.Tensor  # (B, N, D) last block's output


def backbone_input_size(height: int, width: int) -> tuple[int, int]:
    """Size an image is resized to before the backbone, by torchvision's own rule for `Resize(224, max_size=480)`:
    short side 224, long side `int(224 * long / short)` (truncated), both scaled down if the long side passes 480."""
    new_height, new_width = _torchvision_resized_size((height, width), size=[SHORT_SIDE], max_size=LONG_SIDE_MAX)
    return int(new_height), int(new_width)


def resize_for_backbone(images: torch.Tensor, antialias: bool = True) -> torch.Tensor:
    """(B, 3, H, W) floats -> resized as the authors' `Resize(224, max_size=480)` does. Differentiable.

    `antialias` False reproduces the authors' pinned torchvision 0.10, whose tensor resize did not antialias."""
    return TF.resize(images, [SHORT_SIDE], max_size=LONG_SIDE_MAX, antialias=antialias)


def dino_position_embedding(pos_embed: torch.Tensor, grid: tuple[int, int], pixels: tuple[int, int]) -> torch.Tensor:
    """Position embedding for a `grid` of patches, exactly as DINO's `VisionTransformer.interpolate_pos_encoding`.

    pos_embed: (1, 1 + N, D), [CLS] first, N patches on a square pretrained grid. `pixels` is the (H, W) of the
    image given to the ViT (before the remainder past a patch multiple is dropped): DINO keeps the pretrained
    embedding only when the grid has N patches AND the image is square. Otherwise plain bicubic (no antialias) with
    the scale factor ((h + 0.1) / sqrt(N), (w + 0.1) / sqrt(N)) rather than a target size: the +0.1 is DINO's guard
    against rounding, and a scale factor (not a size) also sets where the bicubic samples fall.
    """
    patches = pos_embed.shape[1] - 1
    if grid[0] * grid[1] == patches and pixels[0] == pixels[1]:
        return pos_embed
    dim = pos_embed.shape[-1]
    side = int(math.sqrt(patches))
    patch_pos = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, side, side)
    scale = ((grid[0] + 0.1) / math.sqrt(patches), (grid[1] + 0.1) / math.sqrt(patches))
    patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic")  # (1, D, h, w)
    if tuple(patch_pos.shape[-2:]) != tuple(grid):
        raise AssertionError(f"position embedding resampled to {tuple(patch_pos.shape[-2:])}, expected {grid}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)  # (1, h * w, D), row-major
    return torch.cat([pos_embed[:, :1], patch_pos], dim=1)


def self_similarity(keys: torch.Tensor) -> torch.Tensor:
    """Cosine self-similarity of tokens: (B, N, D) -> (B, N, N)."""
    unit = F.normalize(keys.float(), dim=-1)
    return unit @ unit.transpose(1, 2)


class DinoBackbone(nn.Module):
    """A frozen timm VisionTransformer with Splice's feature readers. Always in eval mode, no weight gradients."""

    def __init__(self, vit: nn.Module, spec: str, weights_id: str):
        super().__init__()
        _check_dino_layout(vit, spec)
        self.vit = vit.eval().requires_grad_(False)
        self.spec = spec
        self.weights_id = weights_id
        self.patch_size = int(_pair(vit.patch_embed.patch_size)[0])
        self.num_heads = int(vit.blocks[-1].attn.num_heads)
        config = getattr(vit, "pretrained_cfg", None) or {}
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        mean = config.get("mean", IMAGENET_DEFAULT_MEAN)
        std = config.get("std", IMAGENET_DEFAULT_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def is_random(self) -> bool:
        return self.weights_id == RANDOM_WEIGHTS_ID

    def train(self, mode: bool = True) -> DinoBackbone:
        # the backbone is frozen: it stays in eval mode whatever its parent does
        return super().train(False)

    def prepare(self, images: torch.Tensor, antialias: bool = True) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> normalised backbone input, resized as the authors' `Resize(224, max_size=480)`
        (see `resize_for_backbone`). Differentiable. A square image of any side comes out 224x224."""
        return (resize_for_backbone(images, antialias) - self.mean) / self.std

    def last_block(self, pixels: torch.Tensor) -> LastBlockFeatures:
        """Run the ViT on prepared pixels (B, 3, H, W) and read the last block's [CLS], keys and tokens.

        The remainder pixels past a multiple of the patch size are dropped, as DINO's strided patch embedding does;
        position embeddings follow DINO's own interpolation rule (`dino_position_embedding`)."""
        vit, patch = self.vit, self.patch_size
        height, width = pixels.shape[-2:]
        grid = (height // patch, width // patch)
        if grid[0] == 0 or grid[1] == 0:
            raise ValueError(f"backbone input {height}x{width} is smaller than one {patch}px patch")
        x = vit.patch_embed(pixels[..., : grid[0] * patch, : grid[1] * patch])  # (B, h, w, D) or (B, h * w, D)
        x = x.reshape(x.shape[0], grid[0] * grid[1], x.shape[-1])  # (B, h * w, D), row-major
        x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N, D): [CLS] first
        x = vit.pos_drop(x + dino_position_embedding(vit.pos_embed, grid, (height, width)))
        x = vit.norm_pre(vit.patch_drop(x))
        *body, last = vit.blocks
        for block in body:
            x = block(x)
        keys = self._keys(last, x)  # (B, N, D)
        tokens = last(x)  # (B, N, D)
        return LastBlockFeatures(cls_token=tokens[:, 0], keys=keys, tokens=tokens)

    def final_cls(self, features: LastBlockFeatures) -> torch.Tensor:
        """[CLS] after the final LayerNorm: the embedding DINO reports (used by the DINO-I metric)."""
        return self.vit.norm(features.tokens)[:, 0]

    def _keys(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        attn = block.attn
        batch, tokens, _ = x.shape
        qkv = attn.qkv(block.norm1(x))  # (B, N, 3 * heads * head_dim)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, hd)
        keys = attn.k_norm(qkv[1]) if hasattr(attn, "k_norm") else qkv[1]
        return keys.transpose(1, 2).reshape(batch, tokens, -1)  # (B, N, heads * hd)


def _check_dino_layout(vit: nn.Module, spec: str) -> None:
    """The feature reader follows DINO's token layout: one [CLS] token, no register tokens, a position embedding
    that covers [CLS] and a square grid of patches."""
    pos_embed = getattr(vit, "pos_embed", None)
    patches = pos_embed.shape[1] - 1 if pos_embed is not None and pos_embed.dim() == 3 else -1
    if (
        getattr(vit, "cls_token", None) is None
        or getattr(vit, "num_reg_tokens", 0)
        or getattr(vit, "no_embed_class", False)
        or patches < 1
        or int(math.sqrt(patches)) ** 2 != patches
    ):
        raise BackboneUnavailable(
            f"backbone {spec}: not a DINO-style ViT (needs one [CLS] token, no register tokens and "
            f"a position embedding over [CLS] and a square patch grid)"
        )


def load_backbone(spec: str, device: torch.device | str = "cpu") -> DinoBackbone:
    """Build the frozen backbone named by `spec` on `device` (see module docstring for specs)."""
    import timm

    if spec.startswith("random:"):
        arch = spec.split(":", 1)[1]
        if not timm.is_model(arch):  # a tag (e.g. vit_small_patch16_224.dino) brings that tag's mean/std
            raise BackboneUnavailable(
                f"backbone {spec}: '{arch}' is not a timm architecture (see timm.list_models('vit_*'))"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random network in every process: runs resume and workers agree
            vit = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True)
        log.warning("backbone %s has RANDOM weights: outputs are for testing only and are labelled 'random'", spec)
        weights_id = RANDOM_WEIGHTS_ID
    elif spec.startswith("file:"):
        vit = _vit_from_file(spec.split(":", 1)[1])
        weights_id = None
    elif spec in DINO_BACKBONES:
        vit = _vit_from_timm_cache(spec, DINO_BACKBONES[spec])
        weights_id = None
    else:
        raise BackboneUnavailable(
            f"unknown backbone '{spec}': use one of {', '.join(DINO_BACKBONES)}, file:PATH or random:TIMM_ARCH"
        )
    backbone = DinoBackbone(vit, spec, weights_id or weights_hash(vit))
    return backbone.to(device)


def weights_hash(module: nn.Module) -> str:
    """A short content hash of a module's weights, recorded beside every output they produce."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def _vit_from_timm_cache(spec: str, timm_name: str) -> nn.Module:
    import timm

    hub_id = dino_hub_id(timm_name)
    cached = local_hub_file(hub_id)  # SPLICE_WEIGHTS_DIR first
    if cached:
        # load the cached file directly: no network round-trip, no retries when offline
        return timm.create_model(
            timm_name, pretrained=True, num_classes=0, dynamic_img_size=True, pretrained_cfg_overlay={"file": cached}
        )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if not reachable(endpoint, offline_variables=("HF_HUB_OFFLINE",)):
        raise BackboneUnavailable(
            f"backbone {spec} (timm {timm_name}): pretrained weights are not in the Hugging Face cache and {endpoint} "
            f"cannot be reached. Either run once with network access to cache them, or download model.safetensors from "
            f"{endpoint}/{hub_id} and pass --backbone file:PATH"
        )
    try:
        return timm.create_model(timm_name, pretrained=True, num_classes=0, dynamic_img_size=True)
    except Exception as exc:  # network or hub errors: say what to do
        raise BackboneUnavailable(
            f"backbone {spec} (timm {timm_name}): downloading weights failed ({exc}); "
            f"pass --backbone file:PATH with a local copy"
        ) from exc


def _vit_from_file(path: str) -> nn.Module:
    """Build a ViT from a local state dict (timm or original DINO naming); architecture read from tensor shapes."""
    from timm.models.vision_transformer import VisionTransformer

    if not os.path.isfile(path):
        raise BackboneUnavailable(
            f"backbone file:{path}: no such file; give the path to a .pth or .safetensors state dict"
        )
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneUnavailable(f"backbone file:{path}: cannot be loaded as a state dict ({exc})") from exc
    for wrapper in ("teacher", "state_dict", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    state = {_strip_prefix(k): v for k, v in state.items() if torch.is_tensor(v)}
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise BackboneUnavailable(
            f"backbone file:{path}: not a ViT state dict (no patch_embed.proj.weight / pos_embed)"
        )
    embed_dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    vit = VisionTransformer(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // 64,  # every DINO ViT uses 64-dim heads
        num_classes=0,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        dynamic_img_size=True,
    )
    missing, unexpected = vit.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.startswith("head")]
    if missing or unexpected:
        raise BackboneUnavailable(
            f"backbone file:{path}: weights do not fit a ViT (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return vit


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "backbone."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)
