"""The frozen DINO backbone: shapes from the model, non-square inputs, local weights, fast offline failure."""

import pytest
import torch
from torchvision.transforms import Resize

from conftest import TINY_BACKBONE as TINY
from faults import finishes_within
from pipeline.method.backbone import (
    BackboneUnavailable,
    DinoBackbone,
    backbone_input_size,
    dino_position_embedding,
    load_backbone,
    self_similarity,
)


@pytest.fixture(scope="module")
def tiny():
    return load_backbone(TINY, "cpu")


def test_architecture_facts_come_from_the_model(tiny):
    assert tiny.patch_size == 16
    assert tiny.num_heads == 3
    assert tiny.weights_id == "random" and tiny.is_random
    assert not any(p.requires_grad for p in tiny.parameters())


@pytest.mark.parametrize(
    "size", [(900, 1200), (192, 256), (427, 640), (683, 1024), (224, 224), (100, 1000), (1000, 100)]
)
def test_backbone_input_size_is_torchvisions_resize_rule(size):
    # the authors call torchvision's Resize(224, max_size=480): the long side is truncated, not rounded
    expected = tuple(Resize(224, max_size=480)(torch.zeros(3, *size)).shape[-2:])
    assert backbone_input_size(*size) == expected
    assert backbone_input_size(192, 256) == (224, 298)  # round() would give 299


def test_non_square_image_features_and_dropped_remainder(tiny):
    image = torch.rand(1, 3, 90, 120, requires_grad=True)
    pixels = tiny.prepare(image)  # resized to (224, 298); the ViT drops the remainder: 14 x 18 patches
    assert pixels.shape == (1, 3, 224, 298)
    features = tiny.last_block(pixels)
    tokens = 1 + (224 // 16) * (298 // 16)
    assert features.keys.shape == (1, tokens, 192)
    assert features.cls_token.shape == (1, 192)
    assert torch.isfinite(features.keys).all() and torch.isfinite(features.cls_token).all()
    # gradients reach the input (the generator's output) through the frozen backbone
    features.cls_token.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_position_embedding_follows_dinos_rule(tiny):
    pos_embed = tiny.vit.pos_embed  # (1, 1 + 14 * 14, D)
    # the pretrained grid on a square image: kept as it is
    assert dino_position_embedding(pos_embed, (14, 14), (224, 224)) is pos_embed
    # same grid, non-square pixels (DINO compares the image's sides): resampled with a scale factor of 14.1 / 14
    stretched = dino_position_embedding(pos_embed, (14, 14), (224, 230))
    assert stretched.shape == pos_embed.shape and not torch.equal(stretched, pos_embed)
    # another grid: plain bicubic by scale factor, [CLS] untouched
    grid = dino_position_embedding(pos_embed, (14, 18), (224, 298))
    assert grid.shape == (1, 1 + 14 * 18, pos_embed.shape[-1])
    torch.testing.assert_close(grid[:, 0], pos_embed[:, 0])
    patches = pos_embed[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(patches, scale_factor=(14.1 / 14, 18.1 / 14), mode="bicubic")
    torch.testing.assert_close(grid[:, 1:], expected.flatten(2).transpose(1, 2))


def test_a_vit_without_dinos_token_layout_is_refused():
    import timm

    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, reg_tokens=4, dynamic_img_size=True
    )
    with pytest.raises(BackboneUnavailable, match="not a DINO-style ViT"):
        DinoBackbone(vit, "random:vit_tiny_reg4", "random")


def test_keys_are_the_last_blocks_key_projection(tiny):
    pixels = tiny.prepare(torch.rand(1, 3, 64, 64))  # square: 224x224, the pretrained grid
    captured = {}
    handle = tiny.vit.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.setdefault("qkv", o))
    try:
        with torch.no_grad():
            tiny.vit.forward_features(pixels)
            features = tiny.last_block(pixels)
    finally:
        handle.remove()
    dim = features.keys.shape[-1]
    torch.testing.assert_close(features.keys, captured["qkv"][..., dim : 2 * dim])


def test_self_similarity_is_cosine(tiny):
    keys = torch.randn(2, 5, 8)
    similarity = self_similarity(keys)
    assert similarity.shape == (2, 5, 5)
    torch.testing.assert_close(torch.diagonal(similarity, dim1=1, dim2=2), torch.ones(2, 5))
    torch.testing.assert_close(
        similarity[0, 1, 2], torch.nn.functional.cosine_similarity(keys[0, 1], keys[0, 2], dim=0)
    )


def test_local_weights_file_loads_the_same_network(tmp_path, tiny):
    path = tmp_path / "dino_tiny.pth"
    torch.save(tiny.vit.state_dict(), path)
    loaded = load_backbone(f"file:{path}", "cpu")
    assert loaded.patch_size == 16 and loaded.num_heads == 3
    assert loaded.weights_id.startswith("sha256:") and not loaded.is_random
    pixels = tiny.prepare(torch.rand(1, 3, 48, 64))
    with torch.no_grad():
        torch.testing.assert_close(loaded.last_block(pixels).keys, tiny.last_block(pixels).keys)


def test_bad_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneUnavailable, match="bad.pth.*cannot be loaded"):
        load_backbone(f"file:{path}")
    with pytest.raises(BackboneUnavailable, match="no such file"):
        load_backbone(f"file:{tmp_path / 'missing.pth'}")


def test_unknown_spec_lists_the_choices():
    with pytest.raises(BackboneUnavailable, match="unknown backbone 'dino_vitz9'.*dino_vitb8"):
        load_backbone("dino_vitz9")


def test_offline_without_cache_fails_fast_and_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # loopback port with nothing listening
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(BackboneUnavailable, match=r"dino_vits16.*not in the Hugging Face cache.*file:PATH"):
        finishes_within(10, lambda: load_backbone("dino_vits16"), what="loading a backbone offline")
