"""Metrics are correct by construction: identities give their ideal values, batching changes nothing, unavailable
weights are skipped or refused clearly. Tiny random models only; nothing touches the network."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_BACKBONE as TINY
from conftest import ColourSegmenter
from evaluation import metrics as M
from evaluation.engine import PairImages, compute_metrics
from evaluation.models import EvalSettings, MetricModels, load_lpips, load_metric_models
from evaluation.segmenter import load_segmenter
from evaluation.views import resize, vit_size
from evaluation.weights import MetricUnavailable, hub_cache_path
from pipeline.method.backbone import load_backbone, self_similarity


def smooth_image(seed: int, height: int, width: int) -> torch.Tensor:
    """(3, H, W) uint8 with some structure: upsampled low-resolution noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 5, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    return (image * 255).round().to(torch.uint8)


def unit(image: torch.Tensor) -> torch.Tensor:
    return image.float()[None] / 255


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(TINY, "cpu")


@pytest.fixture(scope="module")
def lpips_model():
    return load_lpips("random", "cpu")[0]


@pytest.fixture(scope="module")
def models(backbone, lpips_model):
    ids = {m: "test@random" for m in M.METRICS}
    return MetricModels(
        {"vitb8": backbone, "vits16": backbone, "lpips": lpips_model, "segmenter": ColourSegmenter()}, ids=ids
    )


def scores_of(models, metrics, structure, appearance, output) -> dict[str, float]:
    """One pair through the registry and the engine: the path `splice evaluate` takes."""
    scores = compute_metrics([PairImages("p", structure, appearance, output)], metrics, models, "cpu")["p"]
    assert not scores.errors
    return scores.values


def test_structure_metrics_are_zero_when_the_output_is_the_structure_image(models):
    structure, other = smooth_image(0, 40, 56), smooth_image(1, 40, 56)
    names = ["selfsim", "selfsim_native", "lpips_structure"]
    same = scores_of(models, names, structure, other, structure.clone())
    differs = scores_of(models, names, structure, other, other)
    for name in names:
        assert same[name] == pytest.approx(0.0, abs=1e-10), name
        assert differs[name] > 1e-6, name


def test_appearance_metrics_are_ideal_when_the_output_is_the_appearance_image(models):
    appearance, other = smooth_image(2, 36, 44), smooth_image(3, 50, 30)
    names = ["dino_i", "dino_i_s16", "cls_mse"]
    same = scores_of(models, names, other, appearance, appearance.clone())
    differs = scores_of(models, names, other, appearance, other)
    for cosine in ("dino_i", "dino_i_s16"):
        assert same[cosine] == pytest.approx(1.0, abs=1e-5) and differs[cosine] < 1 - 1e-5, cosine
    assert same["cls_mse"] == pytest.approx(0.0, abs=1e-10) and differs["cls_mse"] > 1e-8


# --- the published protocol, built by hand from PIL and torchvision calls -----------------------------------------


def protocol_reference(
    vit, structure: torch.Tensor, appearance: torch.Tensor, output: torch.Tensor
) -> tuple[float, float]:
    """(selfsim, dino_i) as Ctrl-X's evaluate.py + score.py compute them, for (3, H, W) uint8 images."""
    from PIL import Image
    from torchvision import transforms

    def load(image):  # Image.open(...).resize((512, 512), resample=Image.BILINEAR)
        return Image.fromarray(image.permute(1, 2, 0).numpy()).resize((512, 512), resample=Image.BILINEAR)

    global_transform = transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Resize(224, max_size=480),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )

    def features(image):  # last block's output and its qkv, through timm's own forward
        captured = {}
        hooks = [
            vit.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.__setitem__("qkv", o)),
            vit.blocks[-1].register_forward_hook(lambda m, i, o: captured.__setitem__("out", o)),
        ]
        try:
            vit.forward_features(global_transform(load(image)).unsqueeze(0))
        finally:
            for hook in hooks:
                hook.remove()
        dim = captured["out"].shape[-1]
        keys = captured["qkv"][0, :, dim : 2 * dim]  # (T, heads * head_dim)
        norm = keys.norm(dim=1, keepdim=True)
        self_sim = (keys @ keys.T) / torch.clamp(norm @ norm.T, min=1e-08)  # their attn_cosine_sim
        return self_sim, captured["out"][0, 0]

    with torch.no_grad():
        structure_sim, _ = features(structure)
        output_sim, output_cls = features(output)
        _, appearance_cls = features(appearance)
    selfsim = torch.nn.functional.mse_loss(output_sim, structure_sim).item()
    dino_i = torch.nn.functional.cosine_similarity(output_cls, appearance_cls, dim=0).item()
    return selfsim, dino_i


@pytest.mark.slow
def test_published_protocol_matches_a_reference_built_from_pil_and_torchvision():
    # ViT-S/8 shape with DINO's input normalisation: patch 8 as in the protocol's ViT-B/8, small enough for a test
    backbone = load_backbone("random:vit_small_patch8_224.dino", "cpu")
    models = MetricModels({"vitb8": backbone, "vits16": backbone}, ids={m: "test@random" for m in M.METRICS})
    pairs = [
        PairImages("landscape", smooth_image(30, 120, 200), smooth_image(31, 90, 70), smooth_image(32, 120, 200)),
        PairImages("portrait", smooth_image(33, 300, 180), smooth_image(34, 64, 64), smooth_image(35, 150, 90)),
        PairImages("square", smooth_image(36, 96, 96), smooth_image(37, 700, 500), smooth_image(38, 96, 96)),
    ]
    scores = compute_metrics(pairs, ["selfsim", "dino_i"], models, "cpu", batch_size=2)
    for pair in pairs:
        selfsim, dino_i = protocol_reference(backbone.vit, pair.structure, pair.appearance, pair.output)
        assert scores[pair.pair_id].values["selfsim"] == pytest.approx(selfsim, rel=1e-6, abs=1e-9), pair.pair_id
        assert scores[pair.pair_id].values["dino_i"] == pytest.approx(dino_i, rel=1e-6), pair.pair_id


def test_mean_iou_by_hand():
    a = torch.tensor([[[0, 0], [1, 1]], [[2, 2], [2, 2]]])
    b = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [2, 2]]])
    # item 0: class 0 IoU 1/2, class 1 IoU 2/3, class 2 absent from both (not counted); item 1: one class, identical
    assert M.mean_iou(a, b, 3).tolist() == pytest.approx([(1 / 2 + 2 / 3) / 2, 1.0])
    with pytest.raises(ValueError, match="labels"):
        M.mean_iou(a, b + 5, 3)


def test_layout_miou_is_one_for_identical_images_and_lower_otherwise(models):
    structure, other = smooth_image(4, 40, 56), smooth_image(5, 40, 56)
    assert scores_of(models, ["layout_miou"], structure, other, structure.clone())["layout_miou"] == 1.0
    assert scores_of(models, ["layout_miou"], structure, other, other)["layout_miou"] < 1.0


@pytest.mark.slow
def test_engine_batches_mixed_sizes_and_keeps_the_identities(models):
    s0, s1, a0 = smooth_image(10, 40, 56), smooth_image(11, 48, 48), smooth_image(12, 36, 44)
    pairs = [
        PairImages("same_as_structure", s0, a0, s0.clone()),
        PairImages("same_as_appearance", s0, a0, a0.clone()),  # a different size from its structure image
        PairImages("other", s1, a0, smooth_image(14, 48, 48)),
        PairImages("same_as_structure_too", s1, a0, s1.clone()),
    ]
    batched = compute_metrics(pairs, list(M.METRICS), models, "cpu", batch_size=4)
    for pair_id in ("same_as_structure", "same_as_structure_too"):
        values = batched[pair_id].values
        assert values["selfsim"] == pytest.approx(0, abs=1e-9) and values["selfsim_native"] == pytest.approx(
            0, abs=1e-9
        )
        assert values["lpips_structure"] == pytest.approx(0, abs=1e-9)
        assert values["layout_miou"] == 1.0
    appearance = batched["same_as_appearance"].values
    assert appearance["dino_i"] == pytest.approx(1, abs=1e-5) and appearance["cls_mse"] == pytest.approx(0, abs=1e-9)
    assert appearance["dino_i_s16"] == pytest.approx(1, abs=1e-5)
    assert batched["other"].values["selfsim"] > 0 and batched["other"].values["selfsim_native"] > 0
    assert not any(b.errors for b in batched.values())
    # one pair at a time gives the same values as batches
    single = compute_metrics(pairs[1:3], ["selfsim", "dino_i", "selfsim_native"], models, "cpu", batch_size=1)
    for pair_id, scores in single.items():
        assert scores.values == pytest.approx(
            {k: batched[pair_id].values[k] for k in scores.values}, rel=1e-4, abs=1e-7
        )
    # and so does the definition written out by hand: the output resized to the structure image's size, then both
    # to the backbone's input size, the MSE of their key self-similarities
    structure = unit(s0)
    size = vit_size(40, 56)
    inputs = torch.cat([resize(structure, size), resize(resize(unit(a0), (40, 56)), size)])
    backbone = models.get("vitb8")
    similarity = self_similarity(backbone.last_block(backbone.prepare(inputs)).keys)
    expected = (similarity[0] - similarity[1]).pow(2).mean().item()
    assert batched["same_as_appearance"].values["selfsim_native"] == pytest.approx(expected, rel=1e-4)


def test_a_pair_that_fails_fails_alone(models):
    class Picky(ColourSegmenter):
        def segment(self, images):
            if images.shape[-1] == 32:
                raise RuntimeError("cannot segment this one")
            return super().segment(images)

    picky = MetricModels({**models.models, "segmenter": Picky()}, ids=models.ids)
    s0, s1 = smooth_image(20, 40, 56), smooth_image(21, 64, 32)
    pairs = [PairImages("fine", s0, s0, s0), PairImages("bad", s1, s1, s1), PairImages("fine2", s0, s1, s0)]
    scores = compute_metrics(pairs, ["layout_miou", "dino_i"], picky, "cpu", batch_size=8)
    assert scores["fine"].values["layout_miou"] == 1.0 and scores["fine2"].values["layout_miou"] == 1.0
    assert "cannot segment" in scores["bad"].errors["layout_miou"]
    assert "dino_i" in scores["bad"].values  # the other metric of the same pair is unaffected


def test_unavailable_weights_are_skipped_with_how_to_provide_them_or_refused_when_asked_for(offline):
    models = load_metric_models(EvalSettings(metrics=("selfsim", "lpips_structure", "layout_miou")), "cpu")
    assert models.metrics == []
    assert "file:PATH" in models.skipped["selfsim"]
    lpips_reason = models.skipped["lpips_structure"]
    assert (
        hub_cache_path("https://x/alexnet-owt-7be5be79.pth") in lpips_reason
        and "--lpips-weights file:PATH" in lpips_reason
    )
    assert "--segmenter-weights PATH" in models.skipped["layout_miou"]
    with pytest.raises(MetricUnavailable, match="lpips_structure was asked for"):
        load_metric_models(EvalSettings(metrics=("lpips_structure",), explicit=True), "cpu")


def test_weights_from_the_torch_cache_or_a_local_file(offline):
    import torchvision

    state = torchvision.models.alexnet().state_dict()
    cached = hub_cache_path(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url)
    (offline / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, cached)
    model, model_id = load_lpips("pretrained", "cpu")
    assert model_id == "lpips-v0.1-alex@alexnet-owt-7be5be79.pth"
    assert torch.equal(model.net.slice1[0].weight, state["features.0.weight"])
    local = offline / "alexnet.pth"
    torch.save(state, local)
    assert load_lpips(f"file:{local}", "cpu")[1].startswith("lpips-v0.1-alex@sha256:")

    random_segmenter = load_segmenter("random:lraspp_mobilenet_v3_large")
    torch.save(random_segmenter.model.state_dict(), offline / "seg.pth")
    segmenter = load_segmenter("lraspp_mobilenet_v3_large", weights_file=str(offline / "seg.pth"))
    assert segmenter.weights_id.startswith("COCO_WITH_VOC_LABELS_V1:sha256:") and segmenter.num_classes == 21
    labels = segmenter.segment(unit(smooth_image(30, 40, 56)))
    assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() < 21


def test_metric_backbone_override_per_role_and_bad_settings():
    assert EvalSettings(metric_backbone=TINY).backbone_specs() == {"vitb8": TINY, "vits16": TINY}
    specs = EvalSettings(metric_backbone=f"dino_vits16={TINY}").backbone_specs()
    assert specs == {"vitb8": "dino_vitb8", "vits16": TINY}
    with pytest.raises(MetricUnavailable, match="unknown metric"):
        EvalSettings(metrics=("fid",))


def test_each_feature_is_computed_once_per_model_and_image(models, monkeypatch):
    backbone = models.get("vitb8")
    seen = []
    real = backbone.last_block

    def counting(images):
        seen.append(images.shape[0])
        return real(images)

    monkeypatch.setattr(backbone, "last_block", counting)
    s, a = smooth_image(40, 40, 56), smooth_image(41, 36, 44)
    pairs = [PairImages("p0", s, a, smooth_image(42, 40, 56)), PairImages("p1", s, a, smooth_image(43, 40, 56))]
    vit_metrics = ["selfsim", "dino_i", "cls_mse", "selfsim_native"]
    scores = compute_metrics(pairs, vit_metrics, MetricModels({"vitb8": backbone}, ids=models.ids), "cpu", 8)
    assert all(set(s.values) == set(vit_metrics) for s in scores.values())
    # per pair: the protocol's structure, output and appearance; the structure and the output at the structure's
    # backbone size (the output's native view is the same image: shared with cls_mse); the appearance natively
    assert sum(seen) == 2 * 6 and len(seen) == 6


def test_a_value_does_not_depend_on_the_other_metrics_asked_for(models):
    # output 30x30 and structure 48x48 have the same backbone input size (224x224) but are not the same image there:
    # cls_mse must see the output itself, not the output resized to the structure's size that selfsim_native sees
    pair = PairImages("p", smooth_image(50, 48, 48), smooth_image(51, 70, 30), smooth_image(52, 30, 30))
    alone = compute_metrics([pair], ["cls_mse", "dino_i_s16"], models, "cpu")["p"].values
    together = compute_metrics([pair], ["selfsim_native", "cls_mse", "dino_i_s16"], models, "cpu")["p"].values
    assert together["cls_mse"] == alone["cls_mse"] and together["dino_i_s16"] == alone["dino_i_s16"]
