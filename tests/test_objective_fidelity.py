"""Fidelity: the fused production objective equals the authors' objective on DINO's own ViT forward pass.

The reference below shares no size rule, position-embedding code or feature reader with production. It is written
from the references' definitions:
- the authors' `LossG` (util/losses.py of omerbt/Splice): every term gets its own backbone pass, inputs go through
  torchvision's `Resize(224, max_size=480)` and ImageNet normalisation, self-similarity is their `attn_cosine_sim`;
- DINO's `VisionTransformer.prepare_tokens` + `interpolate_pos_encoding` (vision_transformer.py of
  facebookresearch/dino): a strided patch-embedding convolution on the un-cropped image, [CLS] prepended, position
  embeddings kept only for the pretrained grid on a square image and otherwise resampled with plain bicubic by the
  scale factor ((h + 0.1) / sqrt(N), (w + 0.1) / sqrt(N)).
Only the transformer blocks themselves (timm's modules, holding the weights) are shared.
Structure images are non-square at sizes where rounding and truncating the long side differ (192x256 -> 224x298,
not 299; 427x640 and 683x1024 change the patch grid of a patch-8 ViT).
"""

import math
import random

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torchvision.transforms import Normalize, Resize

from pipeline.method.augment import sample_batch
from pipeline.method.backbone import DinoBackbone, load_backbone
from pipeline.method.config import TrainConfig
from pipeline.method.generator import SkipGenerator
from pipeline.method.objective import full_structure_target, loss_weights, splice_losses

LOSS_RTOL = 1e-6
GRAD_RTOL = 1e-5


# ---- the reference, from the authors' and DINO's definitions -------------------------------------------------------
def reference_interpolate_pos_encoding(vit, tokens, height, width):
    """DINO's interpolate_pos_encoding(x, w, h) with its (w, h) = the image's (rows, columns)."""
    npatch = tokens.shape[1] - 1
    N = vit.pos_embed.shape[1] - 1
    if npatch == N and height == width:
        return vit.pos_embed
    class_pos_embed = vit.pos_embed[:, 0]
    patch_pos_embed = vit.pos_embed[:, 1:]
    dim = tokens.shape[-1]
    patch = vit.patch_embed.proj.kernel_size[0]
    rows, columns = height // patch + 0.1, width // patch + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(rows / math.sqrt(N), columns / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(rows) == patch_pos_embed.shape[-2] and int(columns) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def reference_features(vit, image, antialias=True):
    """[CLS] of the last block (before the final norm) and its keys, for one (1, 3, H, W) image in [0, 1]."""
    transform = Resize(224, max_size=480, antialias=antialias)
    pixels = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(transform(image))
    height, width = pixels.shape[-2:]
    proj = vit.patch_embed.proj
    x = F.conv2d(pixels, proj.weight, proj.bias, stride=proj.stride).flatten(2).transpose(1, 2)  # remainder dropped
    x = torch.cat((vit.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    x = x + reference_interpolate_pos_encoding(vit, x, height, width)
    captured = {}
    handle = vit.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.__setitem__("qkv", o))
    try:
        for block in vit.blocks:
            x = block(x)
    finally:
        handle.remove()
    dim = x.shape[-1]
    keys = captured["qkv"][..., dim : 2 * dim]  # all heads concatenated, [CLS] included
    return x[:, 0], keys


def attn_cosine_sim(x, eps=1e-08):
    """The authors' cosine self-similarity of (1, T, D) tokens."""
    norm = x.norm(dim=2, keepdim=True)
    factor = torch.clamp(norm @ norm.permute(0, 2, 1), min=eps)
    return (x @ x.permute(0, 2, 1)) / factor


def reference_losses(generator, vit, batch, step):
    x = generator(batch.structure_crop)
    y = generator(batch.appearance_crop)
    with torch.no_grad():
        _, structure_crop_keys = reference_features(vit, batch.structure_crop)
        appearance_crop_cls, _ = reference_features(vit, batch.appearance_crop)
        _, appearance_crop_keys = reference_features(vit, batch.appearance_crop)
    x_cls, _ = reference_features(vit, x)
    _, x_keys = reference_features(vit, x)
    _, y_keys = reference_features(vit, y)
    terms = {"appearance": 10 * F.mse_loss(x_cls, appearance_crop_cls)}
    if step > 0:
        terms["structure"] = F.mse_loss(attn_cosine_sim(x_keys), attn_cosine_sim(structure_crop_keys))
        terms["identity"] = F.mse_loss(y_keys, appearance_crop_keys)
    if step % 75 == 0:
        whole = generator(batch.structure_full)
        with torch.no_grad():
            _, structure_keys = reference_features(vit, batch.structure_full)
        _, whole_keys = reference_features(vit, whole)
        whole_cls, _ = reference_features(vit, whole)
        terms["full_structure"] = F.mse_loss(attn_cosine_sim(whole_keys), attn_cosine_sim(structure_keys))
        terms["full_appearance"] = 10 * F.mse_loss(whole_cls, appearance_crop_cls)
    return terms


# ---- the comparison ---------------------------------------------------------------------------------------------
def tiny_patch8_backbone():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = VisionTransformer(
            img_size=224, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0, dynamic_img_size=True
        )
    return DinoBackbone(vit, "test:tiny_patch8", "random")


@pytest.fixture(scope="module")
def backbone(request):  # its name is a parameter of the test (indirect): one load per backbone and module
    if request.param == "tiny_patch8":
        return tiny_patch8_backbone()
    return load_backbone("random:vit_small_patch16_224.dino", "cpu")  # the .dino tag: DINO's input normalisation


# every step kind (0: the full-image terms, 1: crops only, 75: both) on the tiny patch-8 ViT at the smallest size stays
# in the inner loop (`-m "not slow"`); ViT-S/16 and the larger sizes (10-90 s each here) run with the whole suite
CASES = [
    pytest.param(
        name,
        size,
        step,
        id=f"{name}-{step}-{size[0]}x{size[1]}",
        marks=() if (name, size) == ("tiny_patch8", (192, 256)) else pytest.mark.slow,
    )
    for name in ("vit_small_patch16", "tiny_patch8")
    for step in (0, 1, 75)
    for size in ((192, 256), (427, 640), (683, 1024))
]


@pytest.mark.parametrize("backbone, structure_size, step", CASES, indirect=["backbone"])
def test_production_objective_matches_the_reference(backbone, structure_size, step):
    torch.manual_seed(0)
    structure = torch.rand(1, 3, *structure_size)  # non-square, landscape
    appearance = torch.rand(1, 3, 300, 211)  # portrait: the crop is capped at the width
    config = TrainConfig(backbone=backbone.spec)
    weights = loss_weights(step, config)
    batch = sample_batch(random.Random(step), structure, appearance, config, include_full=weights.full_image)
    generator = SkipGenerator().train()

    production = splice_losses(generator, backbone, batch, weights, full_structure_target(backbone, structure, None))
    production_grads = torch.autograd.grad(production["total"], list(generator.parameters()))
    reference = reference_losses(generator, backbone.vit, batch, step)
    reference_total = sum(reference.values())
    reference_grads = torch.autograd.grad(reference_total, list(generator.parameters()))

    expected_terms = (
        {"appearance"}
        | ({"structure", "identity"} if step > 0 else set())
        | ({"full_structure", "full_appearance"} if step % 75 == 0 else set())
    )
    assert set(reference) == expected_terms
    for name, value in reference.items():
        weighted = getattr(weights, name) * production[name]
        torch.testing.assert_close(weighted, value, rtol=LOSS_RTOL, atol=0, msg=f"term {name} at step {step}")
    torch.testing.assert_close(production["total"], reference_total, rtol=LOSS_RTOL, atol=0)
    # gradients too, as one vector: biases feeding a BatchNorm have a gradient of zero up to rounding noise,
    # so an elementwise relative check would compare noise with noise
    ours = torch.cat([g.flatten() for g in production_grads])
    theirs = torch.cat([g.flatten() for g in reference_grads])
    assert (ours - theirs).norm() <= GRAD_RTOL * theirs.norm()


def test_antialias_off_reproduces_the_authors_pinned_torchvision():
    """torchvision 0.10 (the authors' pin) resized tensors without antialiasing: `antialias=False` is that."""
    backbone = tiny_patch8_backbone()
    structure = torch.rand(1, 3, 427, 640)  # downscaled to 224x335: antialiasing matters
    with torch.no_grad():
        target = full_structure_target(backbone, structure, None, antialias=False)
        _, keys = reference_features(backbone.vit, structure, antialias=False)
        torch.testing.assert_close(target, attn_cosine_sim(keys), rtol=1e-5, atol=1e-6)
        _, antialiased = reference_features(backbone.vit, structure, antialias=True)
    assert not torch.allclose(keys, antialiased, atol=1e-3)


def test_loss_weights_follow_the_schedule():
    config = TrainConfig()
    first, second, full = loss_weights(0, config), loss_weights(1, config), loss_weights(150, config)
    assert (first.appearance, first.structure, first.identity) == (10, 0, 0) and first.full_image
    assert (second.appearance, second.structure, second.identity) == (10, 1, 1) and not second.full_image
    assert (full.full_structure, full.full_appearance) == (1, 10)
    assert not loss_weights(74, config).full_image and loss_weights(75, config).full_image
