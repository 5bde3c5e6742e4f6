"""One generator call per pack: grouped generators, the shared crop-side schedule, batched augmentation, stacks.

What a user relies on: a pair's result does not depend on its pack (grouped generators compute what separate ones
do; a pair leaving, resuming in another pack, or packed with other sizes gets what it gets alone), the crop sides
keep the authors' distribution, and a run made before the shared schedule resumes as it was made.
"""

import dataclasses
import random

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from pipeline.method.augment import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    augment_appearance,
    augment_structure,
    crop_side,
    draw_structure,
    sample_group,
)
from pipeline.method.backbone import load_backbone
from pipeline.method.config import TrainConfig
from pipeline.method.generator import SkipGenerator
from pipeline.method.grouped_generator import GroupedGenerator
from pipeline.method.pair_run import PairRun
from pipeline.method.pair_stack import form_stacks
from pipeline.method.registry import get_method
from pipeline.method.trainer import PairInput, TrainOptions, train_pack, train_pair
from pipeline.runs import rerun
from pipeline.runs.fanout import RunSettings
from pipeline.runs.run_folder import RunFolder
from pipeline.storage import Storage
from test_packed import SMALLEST, assert_same_result
from test_trainer import make_pair

CONFIG = TrainConfig(backbone=SMALLEST, steps=4, log_every=1, full_image_every=3, checkpoint_every=2)
SIZE = ((44, 52), (48, 44))  # the structure and appearance sizes of the same-size pairs


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(SMALLEST, "cpu")


def same_size_pair(pair_id, seed, config=CONFIG, **kwargs):
    structure, appearance = make_pair(seed, *SIZE)
    return PairInput(pair_id, structure, appearance, config.replace(seed=seed), **kwargs)


@pytest.fixture(scope="module")
def alone(backbone):
    """Pairs 0..3 (one size) and 'other' (another size), each trained by itself, with its checkpoints."""
    results = {}
    for pair in [same_size_pair(f"p{seed}", seed) for seed in range(4)] + [other_size_pair()]:
        saved = []
        result = train_pair(
            pair.structure, pair.appearance, pair.config, backbone, torch.device("cpu"), save_checkpoint=saved.append
        )
        results[pair.pair_id] = (result, saved)
    return results


def other_size_pair(**kwargs):
    structure, appearance = make_pair(11, (40, 60), (52, 40))
    return PairInput("other", structure, appearance, CONFIG.replace(seed=11), **kwargs)


# --- the grouped generator ---------------------------------------------------------------------------------------


def perturbed_generators(count, dtype=torch.float32):
    """Generators far from their (near-constant) initialisation, so every slot computes something different."""
    generators = []
    for seed in range(count):
        torch.manual_seed(seed)
        generator = SkipGenerator().to(dtype).train()
        with torch.no_grad():
            for parameter in generator.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
        generators.append(generator)
    return generators


@pytest.mark.parametrize("size", [(37, 45), (64, 64)])
def test_grouped_generator_computes_what_separate_generators_compute(size):
    separate = perturbed_generators(3, torch.float64)
    grouped = GroupedGenerator.from_generators(separate).train()
    images = torch.rand(3, 3, *size, dtype=torch.float64)
    expected = torch.cat([generator(images[k : k + 1]) for k, generator in enumerate(separate)])
    outputs = grouped(images)
    torch.testing.assert_close(outputs, expected, rtol=1e-12, atol=1e-12)
    # gradients: each slot's are its generator's
    target = torch.rand_like(outputs)
    ((outputs - target) ** 2).sum().backward()
    ((expected - target) ** 2).sum().backward()
    for index, (name, _) in enumerate(separate[0].named_parameters()):
        stacked = torch.cat([dict(g.named_parameters())[name].grad for g in separate])
        torch.testing.assert_close(grouped.slot_parameters()[index].grad, stacked, rtol=1e-9, atol=1e-15)
    # BatchNorm's running statistics and counters, per slot, in SkipGenerator's own state-dict format
    for slot, generator in enumerate(separate):
        state = grouped.state_dict_of(slot)
        assert list(state) == list(generator.state_dict())
        for name, value in generator.state_dict().items():
            torch.testing.assert_close(state[name], value, rtol=1e-12, atol=1e-12)


def test_per_slot_convolutions_compute_each_slot_bit_for_bit_as_alone():
    """The trainer's CPU setting: each slot's arithmetic is its own SkipGenerator's, whatever the number of slots
    (forward and gradients), so in fp32 a pair's result does not depend on its pack."""
    generators = perturbed_generators(4)
    images = torch.rand(4, 3, 39, 45)
    grouped = GroupedGenerator.from_generators(generators).train()
    grouped.per_slot_convolutions = True
    outputs = grouped(images)
    outputs.square().sum().backward()
    alone = [GroupedGenerator.from_generators([generator]).train() for generator in generators]  # stacks of one
    for slot, generator in enumerate(alone):
        output = generator(images[slot : slot + 1])
        assert torch.equal(output[0], outputs[slot])
        output.square().sum().backward()
        torch.testing.assert_close(output, generators[slot](images[slot : slot + 1]), rtol=0, atol=1e-6)
    for index, parameter in enumerate(grouped.slot_parameters()):
        assert torch.equal(parameter.grad, torch.cat([g.slot_parameters()[index].grad for g in alone]))


def test_a_slot_leaves_by_a_slice():
    generators = perturbed_generators(3, torch.float64)
    grouped = GroupedGenerator.from_generators(generators).train()
    before = torch.rand(3, 3, 40, 40, dtype=torch.float64)
    grouped(before)
    for k, generator in enumerate(generators):
        generator(before[k : k + 1])
    kept = grouped.keep([2, 0])
    assert kept.slots == 2
    images = torch.rand(2, 3, 40, 40, dtype=torch.float64)
    expected = torch.cat([generators[2](images[:1]), generators[0](images[1:])])
    torch.testing.assert_close(kept(images), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(kept.calls, torch.tensor([2, 2]))  # both BatchNorm counters carried: one call before, one now
    for slot, generator in enumerate([generators[2], generators[0]]):
        for name, value in generator.state_dict().items():  # running statistics sliced along
            torch.testing.assert_close(kept.state_dict_of(slot)[name], value, rtol=1e-12, atol=1e-12)


# --- crop sides and batched augmentation ------------------------------------------------------------------------


def test_shared_schedule_depends_on_step_and_size_alone_and_keeps_the_distribution():
    config = TrainConfig()
    sides = [crop_side(random.Random(seed), config, 7, 512, 512) for seed in range(5)]
    assert len(set(sides)) == 1  # every pair's RNG is ignored: same-size pairs share the side
    assert crop_side(random.Random(0), config.replace(crop_schedule_seed=1), 7, 512, 512) in range(486, 513)
    drawn = [crop_side(random.Random(0), config, step, 512, 512) for step in range(4000)]
    assert min(drawn) == 486 and max(drawn) == 512  # uniform in [0.95 h, h], rounded: 27 shapes
    counts = [drawn.count(side) for side in range(487, 512)]
    assert min(counts) > 0.6 * 4000 / 26 and max(counts) < 1.4 * 4000 / 26
    assert crop_side(random.Random(0), config, 3, 512, 300) <= 300  # capped at the width
    # schedule 1: the side is the pair's own first draw, as before
    legacy = config.replace(crop_schedule=1)
    assert crop_side(random.Random(5), legacy, 7, 512, 512) == min(
        int(round(random.Random(5).uniform(486.4, 512))), 512
    )


def test_schedule_1_draws_and_augments_as_the_per_pair_path_did():
    """A run made before the shared schedule gets the same crops, flips, jitter and blur as it always did."""
    config = TrainConfig(crop_schedule=1, jitter_p=0.7, blur_p=0.6)
    structure, appearance = (image.float().div(255)[None] for image in make_pair(3, (60, 72), (64, 56)))
    for step in range(12):
        old_rng, new_rng = random.Random(step), random.Random(step)
        expected_structure = augment_structure(old_rng, structure, config)
        expected_appearance = augment_appearance(old_rng, appearance, config)
        batch = sample_group([new_rng], structure, appearance, [config], step, include_full=False)
        torch.testing.assert_close(batch.structure_crop, expected_structure, rtol=0, atol=2e-6)
        assert torch.equal(batch.appearance_crop, expected_appearance)
        assert old_rng.getstate() == new_rng.getstate()  # the same draws, in the same order


def test_batched_augmentation_is_torchvisions_per_image():
    """Crops, flips, jitter (each image its own factors and order) and blur as one call per kind, against
    torchvision applied to each image with the same draws."""
    config = TrainConfig(jitter_p=0.8, blur_p=0.5)
    images = torch.stack([make_pair(seed, (50, 60), (50, 60))[0].float().div(255) for seed in range(6)])
    appearances = torch.stack([make_pair(seed, (50, 60), (52, 48))[1].float().div(255) for seed in range(6)])
    adjust = {
        BRIGHTNESS: TF.adjust_brightness,
        CONTRAST: TF.adjust_contrast,
        SATURATION: TF.adjust_saturation,
        HUE: TF.adjust_hue,
    }
    jittered = blurred = 0
    for step in range(8):
        rngs = [random.Random(100 * step + k) for k in range(6)]
        replay = [random.Random(100 * step + k) for k in range(6)]
        batch = sample_group(rngs, images, appearances, [config] * 6, step, include_full=False)
        for k, rng in enumerate(replay):
            draw = draw_structure(rng, config, step, (50, 60))
            crop = images[k : k + 1, :, draw.top : draw.top + draw.side, draw.left : draw.left + draw.side]
            crop = torch.flip(crop, dims=[-1]) if draw.flip else crop
            for kind, factor in draw.jitter or ():
                crop = adjust[kind](crop, factor)
            if draw.blur_sigma is not None:
                crop = TF.gaussian_blur(crop, kernel_size=[3, 3], sigma=[draw.blur_sigma] * 2)
            jittered += draw.jitter is not None
            blurred += draw.blur_sigma is not None
            torch.testing.assert_close(batch.structure_crop[k : k + 1], crop, rtol=0, atol=2e-6)
    assert jittered > 10 and blurred > 5  # the draws exercised every kind


# --- stacks in the trainer -------------------------------------------------------------------------------------


def test_same_size_pairs_share_one_stack_and_other_sizes_fall_back(backbone):
    runs = [
        PairRun(pair, backbone, torch.device("cpu"), torch.float32)
        for pair in [same_size_pair("p0", 0), other_size_pair(), same_size_pair("p1", 1), same_size_pair("p2", 2)]
    ]
    runs.append(PairRun(same_size_pair("old", 3, CONFIG.replace(crop_schedule=1)), backbone, "cpu", torch.float32))
    stacks = form_stacks(runs, torch.device("cpu"))
    assert [[run.pair_id for run in stack.runs] for stack in stacks] == [["p0", "p1", "p2"], ["other"], ["old"]]


def test_a_same_size_pack_with_another_size_gets_what_each_gets_alone(backbone, alone):
    pairs = [same_size_pair(f"p{seed}", seed) for seed in (2, 0, 3, 1)] + [other_size_pair()]
    results = train_pack(pairs, backbone, torch.device("cpu"))
    for pair_id, (reference, _) in alone.items():
        assert results[pair_id].meta["pack_size"] == 5
        assert_same_result(results[pair_id], reference)


@pytest.mark.slow
def test_pairs_leaving_mid_pack_and_resuming_in_another_pack(backbone, alone):
    """p0 stops after 2 steps (a slice of its stack while p1 and p2 go on); then p0, resumed from its checkpoint,
    trains in a pack with a fresh pair of its size (another stack: they are at other steps)."""
    short = same_size_pair("p0", 0, CONFIG.replace(steps=2))
    first = train_pack([short, same_size_pair("p1", 1), same_size_pair("p2", 2)], backbone, torch.device("cpu"))
    for pair_id in ("p1", "p2"):
        assert_same_result(first[pair_id], alone[pair_id][0])
    checkpoint = alone["p0"][1][0]
    assert checkpoint["step"] == 2
    resumed = train_pack(
        [same_size_pair("p0", 0, checkpoint=checkpoint), same_size_pair("p3", 3)], backbone, torch.device("cpu")
    )
    assert resumed["p0"].meta["resumed_from_step"] == 2
    assert_same_result(resumed["p0"], alone["p0"][0])
    assert_same_result(resumed["p3"], alone["p3"][0])


@pytest.mark.slow
def test_a_checkpoint_made_before_the_shared_schedule_resumes_on_schedule_1(backbone):
    legacy = CONFIG.replace(crop_schedule=1)
    saved = []
    reference = train_pack([same_size_pair("p0", 0, legacy, save_checkpoint=saved.append)], backbone, "cpu")["p0"]
    old_format = dict(saved[0], config={k: v for k, v in saved[0]["config"].items() if not k.startswith("crop_sch")})
    resumed = train_pack([same_size_pair("p0", 0, legacy, checkpoint=old_format)], backbone, "cpu")["p0"]
    assert resumed.meta["resumed_from_step"] == 2
    assert_same_result(resumed, reference)


def test_a_run_recorded_before_the_shared_schedule_goes_on_with_schedule_1(tmp_path):
    folder = RunFolder(Storage({}), str(tmp_path / "run"))
    method = get_method("splice")
    settings = RunSettings(out=folder.url, config=TrainConfig())
    old_settings = {k: v for k, v in TrainConfig().to_dict().items() if not k.startswith("crop_schedule")}
    folder.write_record({"method": "splice", "settings": old_settings})
    kept = rerun.keep_crop_schedule(folder, method, settings)
    assert kept.config.crop_schedule == 1
    assert rerun.settings_mismatch(folder.record(), folder.url, method, kept.config) is None
    assert "crop_schedule" in rerun.settings_mismatch(folder.record(), folder.url, method, settings.config)
    # a new run, and --force, use the shared schedule
    assert rerun.keep_crop_schedule(folder, method, dataclasses.replace(settings, force=True)).config.crop_schedule == 2
    fresh = RunFolder(Storage({}), str(tmp_path / "fresh"))
    assert rerun.keep_crop_schedule(fresh, method, settings).config.crop_schedule == 2


@pytest.mark.slow
def test_compiled_generators_give_the_eager_results(backbone, caplog):
    """--compile captures each crop shape's grouped call (here with dynamo's 'eager' backend: no C++ compiler on
    CI); a backend that cannot compile falls back to eager with one warning; both give the eager results."""
    pairs = [same_size_pair(f"p{seed}", seed, CONFIG.replace(steps=2)) for seed in (0, 1)]
    eager = train_pack(pairs, backbone, torch.device("cpu"))

    def no_compiler(graph, inputs):
        raise RuntimeError("no C++ compiler found")

    for backend in ("eager", no_compiler):
        options = TrainOptions(compile="on", compile_backend=backend)
        compiled = train_pack(pairs, backbone, torch.device("cpu"), options=options)
        for pair_id, reference in eager.items():
            assert_same_result(compiled[pair_id], reference)
    assert "compiled generator failed" in caplog.text


def test_with_one_thread_a_pair_in_a_stack_is_bit_for_bit_the_pair_alone(backbone):
    """Generator, Adam update and augmentation per slot are each pair's own arithmetic: with one CPU thread (more
    threads split some reductions by batch size) a stacked pair's checkpoint equals its checkpoint alone, bit for
    bit, at 128 px, where every kernel runs its vectorised paths and their scalar tails."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = CONFIG.replace(steps=4, checkpoint_every=3, full_image_every=2)
        saved = {"alone": [], "p0": [], "p1": []}

        def pair(pair_id, seed, sink):
            structure, appearance = make_pair(seed, (128, 128), (128, 128))
            return PairInput(pair_id, structure, appearance, config.replace(seed=seed), save_checkpoint=sink.append)

        train_pack([pair("p0", 0, saved["alone"])], backbone, torch.device("cpu"))
        train_pack([pair("p1", 1, saved["p1"]), pair("p0", 0, saved["p0"])], backbone, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    alone, stacked = saved["alone"][0], saved["p0"][0]
    assert alone["step"] == stacked["step"] == 3

    def logged(state):  # the terms that were on (the others are NaN, which equals nothing)
        return [{name: value for name, value in row.items() if value == value} for row in state["losses"]]

    assert logged(alone) == logged(stacked)
    for name, value in alone["generator"].items():
        assert torch.equal(stacked["generator"][name], value), name
    for index, state in alone["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(stacked["optimizer"]["state"][index][key], value), (index, key)
