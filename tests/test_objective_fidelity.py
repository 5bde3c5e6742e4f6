"""Fidelity: the fused production objective equals a plain reading of the specification.

The reference below is written straight from DESIGN.md ("The method, as specified"): every term gets its own
backbone pass, features are read through timm's own `forward_features` (a hook captures the last block's qkv
and output), and the resizing rule is re-derived here. Production fuses the passes; the numbers must agree.
"""
import random

import pytest
import torch
import torch.nn.functional as F

from pipeline.augment import sample_batch
from pipeline.backbone import load_backbone
from pipeline.config import TrainConfig
from pipeline.generator import SkipGenerator
from pipeline.objective import full_structure_target, loss_weights, splice_losses

RTOL = 1e-5


# ---- the reference, from the specification -------------------------------------------------------------------
def reference_features(vit, image):
    """[CLS] before the final norm and keys of the last block, for one (1, 3, H, W) image in [0, 1]."""
    height, width = image.shape[-2:]
    scale = 224 / min(height, width)
    if max(height, width) * scale > 480:
        scale = 480 / max(height, width)
    size = (round(height * scale), round(width * scale))
    resized = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)
    patch = vit.patch_embed.patch_size[0]
    resized = resized[..., : size[0] // patch * patch, : size[1] // patch * patch]
    mean = torch.tensor(vit.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(vit.pretrained_cfg["std"]).view(1, 3, 1, 1)
    captured = {}
    last = vit.blocks[-1]
    hooks = [last.attn.qkv.register_forward_hook(lambda m, i, o: captured.__setitem__("qkv", o)),
             last.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))]
    try:
        vit.forward_features((resized - mean) / std)
    finally:
        for hook in hooks:
            hook.remove()
    dim = captured["out"].shape[-1]
    keys = captured["qkv"][..., dim:2 * dim]  # all heads concatenated, [CLS] included
    return captured["out"][:, 0], keys


def reference_self_similarity(keys):
    return F.cosine_similarity(keys[0][:, None, :], keys[0][None, :, :], dim=-1)[None]


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
        terms["structure"] = F.mse_loss(reference_self_similarity(x_keys), reference_self_similarity(structure_crop_keys))
        terms["identity"] = F.mse_loss(y_keys, appearance_crop_keys)
    if step % 75 == 0:
        whole = generator(batch.structure_full)
        with torch.no_grad():
            _, structure_keys = reference_features(vit, batch.structure_full)
        _, whole_keys = reference_features(vit, whole)
        whole_cls, _ = reference_features(vit, whole)
        terms["full_structure"] = F.mse_loss(reference_self_similarity(whole_keys), reference_self_similarity(structure_keys))
        terms["full_appearance"] = 10 * F.mse_loss(whole_cls, appearance_crop_cls)
    return terms


# ---- the comparison ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backbone():
    return load_backbone("random:vit_tiny_patch16_224", "cpu")


@pytest.mark.parametrize("step", [0, 1, 75])
def test_production_objective_matches_the_reference(backbone, step):
    torch.manual_seed(0)
    structure = torch.rand(1, 3, 72, 96)  # non-square, landscape
    appearance = torch.rand(1, 3, 100, 64)  # portrait: the crop is capped at the width
    config = TrainConfig(backbone=backbone.spec)
    weights = loss_weights(step, config)
    batch = sample_batch(random.Random(step), structure, appearance, config, include_full=weights.full_image)
    generator = SkipGenerator().train()

    production = splice_losses(generator, backbone, batch, weights, full_structure_target(backbone, structure, None))
    production_grads = torch.autograd.grad(production["total"], list(generator.parameters()))
    reference = reference_losses(generator, backbone.vit, batch, step)
    reference_total = sum(reference.values())
    reference_grads = torch.autograd.grad(reference_total, list(generator.parameters()))

    expected_terms = {"appearance"} | ({"structure", "identity"} if step > 0 else set()) \
        | ({"full_structure", "full_appearance"} if step % 75 == 0 else set())
    assert set(reference) == expected_terms
    for name, value in reference.items():
        weighted = getattr(weights, name) * production[name]
        torch.testing.assert_close(weighted, value, rtol=RTOL, atol=0, msg=f"term {name} at step {step}")
    torch.testing.assert_close(production["total"], reference_total, rtol=RTOL, atol=0)
    # gradients too, as one vector: biases feeding a BatchNorm have a gradient of zero up to rounding noise,
    # so an elementwise relative check would compare noise with noise
    ours = torch.cat([g.flatten() for g in production_grads])
    theirs = torch.cat([g.flatten() for g in reference_grads])
    assert (ours - theirs).norm() <= 1e-4 * theirs.norm()


def test_loss_weights_follow_the_schedule():
    config = TrainConfig()
    first, second, full = loss_weights(0, config), loss_weights(1, config), loss_weights(150, config)
    assert (first.appearance, first.structure, first.identity) == (10, 0, 0) and first.full_image
    assert (second.appearance, second.structure, second.identity) == (10, 1, 1) and not second.full_image
    assert (full.full_structure, full.full_appearance) == (1, 10)
    assert not loss_weights(74, config).full_image and loss_weights(75, config).full_image
