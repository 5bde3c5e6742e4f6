"""Metrics are correct by construction: identities give their ideal values, batching changes nothing, unavailable
weights are skipped or refused clearly. Tiny random models only; nothing touches the network."""
from __future__ import annotations

import pytest
import torch

from conftest import ColourSegmenter
from evaluation import metrics as M
from evaluation.engine import PairImages, compute_metrics
from evaluation.models import EvalSettings, MetricModels, load_lpips, load_metric_models
from evaluation.segmenter import load_segmenter
from evaluation.weights import MetricUnavailable, hub_cache_path
from pipeline.backbone import load_backbone

TINY = "random:vit_tiny_patch16_224"


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
    return MetricModels(vitb8=backbone, vits16=backbone, lpips=lpips_model, segmenter=ColourSegmenter(), ids=ids)


def test_structure_metrics_are_zero_when_the_output_is_the_structure_image(backbone, lpips_model):
    structure, other = unit(smooth_image(0, 40, 56)), unit(smooth_image(1, 40, 56))
    assert M.selfsim_mse(backbone, structure, structure).item() == pytest.approx(0.0, abs=1e-10)
    assert M.lpips_structure(lpips_model, structure, structure).item() == pytest.approx(0.0, abs=1e-10)
    assert M.selfsim_mse(backbone, structure, other).item() > 1e-6
    assert M.lpips_structure(lpips_model, structure, other).item() > 1e-6


def test_appearance_metrics_are_ideal_when_the_output_is_the_appearance_image(backbone):
    appearance, other = unit(smooth_image(2, 36, 44)), unit(smooth_image(3, 50, 30))
    assert M.dino_i(backbone, appearance, appearance).item() == pytest.approx(1.0, abs=1e-5)
    assert M.cls_mse(backbone, appearance, appearance).item() == pytest.approx(0.0, abs=1e-10)
    assert M.dino_i(backbone, appearance, other).item() < 1 - 1e-5
    assert M.cls_mse(backbone, appearance, other).item() > 1e-8


def test_mean_iou_by_hand():
    a = torch.tensor([[[0, 0], [1, 1]], [[2, 2], [2, 2]]])
    b = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [2, 2]]])
    # item 0: class 0 IoU 1/2, class 1 IoU 2/3, class 2 absent from both (not counted); item 1: one class, identical
    assert M.mean_iou(a, b, 3).tolist() == pytest.approx([(1 / 2 + 2 / 3) / 2, 1.0])
    with pytest.raises(ValueError, match="labels"):
        M.mean_iou(a, b + 5, 3)


def test_layout_miou_is_one_for_identical_images_and_lower_otherwise():
    segmenter = ColourSegmenter()
    structure, other = unit(smooth_image(4, 40, 56)), unit(smooth_image(5, 40, 56))
    assert M.layout_miou(segmenter, structure, structure).item() == 1.0
    assert M.layout_miou(segmenter, structure, other).item() < 1.0


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
        assert values["selfsim_mse"] == pytest.approx(0, abs=1e-9)
        assert values["lpips_structure"] == pytest.approx(0, abs=1e-9)
        assert values["layout_miou"] == 1.0
    appearance = batched["same_as_appearance"].values
    assert appearance["dino_i"] == pytest.approx(1, abs=1e-5) and appearance["cls_mse"] == pytest.approx(0, abs=1e-9)
    assert batched["other"].values["selfsim_mse"] > 0 and not any(b.errors for b in batched.values())
    # one pair at a time gives the same values as batches
    single = compute_metrics(pairs[1:3], ["selfsim_mse", "dino_i"], models, "cpu", batch_size=1)
    for pair_id, scores in single.items():
        assert scores.values == pytest.approx({k: batched[pair_id].values[k] for k in scores.values}, rel=1e-4, abs=1e-7)
    # and so does the metric function called directly, the output resized to the structure image's size first
    structure, output = unit(s0), M.resize(unit(a0), (40, 56))
    expected = M.selfsim_mse(models.vitb8, structure, output).item()
    assert batched["same_as_appearance"].values["selfsim_mse"] == pytest.approx(expected, rel=1e-4)


def test_a_pair_that_fails_fails_alone(models):
    class Picky(ColourSegmenter):
        def segment(self, images):
            if images.shape[-1] == 32:
                raise RuntimeError("cannot segment this one")
            return super().segment(images)

    picky = MetricModels(vitb8=models.vitb8, vits16=models.vits16, segmenter=Picky(), ids=models.ids)
    s0, s1 = smooth_image(20, 40, 56), smooth_image(21, 64, 32)
    pairs = [PairImages("fine", s0, s0, s0), PairImages("bad", s1, s1, s1), PairImages("fine2", s0, s1, s0)]
    scores = compute_metrics(pairs, ["layout_miou", "dino_i"], picky, "cpu", batch_size=8)
    assert scores["fine"].values["layout_miou"] == 1.0 and scores["fine2"].values["layout_miou"] == 1.0
    assert "cannot segment" in scores["bad"].errors["layout_miou"]
    assert "dino_i" in scores["bad"].values  # the other metric of the same pair is unaffected


def test_unavailable_weights_are_skipped_with_how_to_provide_them_or_refused_when_asked_for(offline):
    models = load_metric_models(EvalSettings(metrics=("selfsim_mse", "lpips_structure", "layout_miou")), "cpu")
    assert models.metrics == []
    assert "file:PATH" in models.skipped["selfsim_mse"]
    lpips_reason = models.skipped["lpips_structure"]
    assert hub_cache_path("https://x/alexnet-owt-7be5be79.pth") in lpips_reason and "--lpips-weights file:PATH" in lpips_reason
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
