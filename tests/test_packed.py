"""Packed training: K pairs trained together give each pair exactly what it gets alone.

Tiny random backbone, tiny images, a few steps; fp32 on the CPU, where the issue asks for 1e-5 relative agreement
of losses and outputs between a pair trained alone and the same pair in any pack.
"""

import dataclasses
import logging

import pytest
import torch

from pipeline.method import pair_stack
from pipeline.method.backbone import load_backbone
from pipeline.method.config import TrainConfig
from pipeline.method.trainer import PairInput, TrainingError, TrainOptions, train_pack, train_pair
from pipeline.runs.packs import auto_pack_size, plan_packs
from test_trainer import make_pair

SMALLEST = "random:test_vit"  # timm's 6-block, 64-dim test ViT: the cheapest backbone that is a real ViT
RTOL = 1e-5
# steps 0 and 2 are full-image steps; log every step so every loss is compared; checkpoint after step 2
CONFIG = TrainConfig(backbone=SMALLEST, steps=3, log_every=1, full_image_every=2, checkpoint_every=2)
# three pairs of different sizes and seeds (two share a structure size, so their full-image pass is shared)
SPECS = {"a": (0, (40, 52), (44, 40)), "b": (1, (40, 52), (38, 48)), "c": (2, (48, 40), (40, 40))}


def pair_input(pair_id, config=CONFIG, **kwargs):
    seed, structure_size, appearance_size = SPECS[pair_id]
    structure, appearance = make_pair(seed, structure_size, appearance_size)
    return PairInput(pair_id, structure, appearance, config.replace(seed=seed), **kwargs)


def assert_same_result(packed, alone, steps=None):
    """Losses within 1e-5 relative (on the steps both logged), outputs equal up to a uint8 rounding flip."""
    expected = [row for row in alone.losses if steps is None or row["step"] in steps]
    assert [row["step"] for row in packed.losses] == [row["step"] for row in expected]
    for row, reference in zip(packed.losses, expected):
        for name, value in reference.items():
            if value == value:
                assert abs(row[name] - value) <= RTOL * abs(value), (name, row["step"], row[name], value)
            else:  # NaN: the term was off in both
                assert row[name] != row[name]
    assert (packed.output.int() - alone.output.int()).abs().max() <= 1  # a float landing on .5 may round either way


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(SMALLEST, "cpu")


@pytest.fixture(scope="module")
def alone(backbone):
    """Each pair trained by itself through train_pair (a pack of one): its result and its checkpoints."""
    results = {}
    for pair_id in SPECS:
        saved = []
        pair = pair_input(pair_id)
        result = train_pair(
            pair.structure, pair.appearance, pair.config, backbone, torch.device("cpu"), save_checkpoint=saved.append
        )
        results[pair_id] = (result, saved)
    return results


@pytest.fixture(scope="module")
def packed(backbone):
    """The three pairs trained in one pack (in another order), with their checkpoints."""
    saved = {pair_id: [] for pair_id in SPECS}
    pairs = [pair_input(pair_id, save_checkpoint=saved[pair_id].append) for pair_id in ("c", "a", "b")]
    return train_pack(pairs, backbone, torch.device("cpu")), saved


def test_a_pair_gets_the_same_result_in_a_pack_as_alone(alone, packed):
    results, _ = packed
    assert set(results) == set(SPECS)
    for pair_id, (reference, _) in alone.items():
        assert results[pair_id].meta["pack_size"] == 3 and reference.meta["pack_size"] == 1
        assert_same_result(results[pair_id], reference)


def test_a_packed_run_resumes_per_pair_even_in_another_pack(backbone, alone, packed):
    _, saved = packed
    assert [state["step"] for state in saved["a"]] == [2]
    # a pair's checkpoint from a pack has the format of one trained alone: its own generator and Adam state
    in_pack, by_itself = saved["a"][0], alone["a"][1][0]
    assert in_pack.keys() == by_itself.keys() and in_pack["inputs"] == by_itself["inputs"]
    assert in_pack["optimizer"]["param_groups"][0]["params"] == by_itself["optimizer"]["param_groups"][0]["params"]
    for index, state in by_itself["optimizer"]["state"].items():
        torch.testing.assert_close(
            in_pack["optimizer"]["state"][index]["exp_avg_sq"], state["exp_avg_sq"], rtol=RTOL, atol=1e-12
        )
    # the run died after the checkpoints: 'b' and 'a' are retried together in a pack of two
    pairs = [pair_input(pair_id, checkpoint=saved[pair_id][0]) for pair_id in ("b", "a")]
    resumed = train_pack(pairs, backbone, torch.device("cpu"))
    for pair_id in ("a", "b"):
        assert resumed[pair_id].meta["resumed_from_step"] == 2
        assert_same_result(resumed[pair_id], alone[pair_id][0])


@pytest.mark.slow
def test_a_failing_pair_fails_alone_and_its_pack_mates_are_unchanged(backbone, alone, monkeypatch):
    """A pair that diverges mid-training inside a grouped generator call (its stack-mate 'a' has the same sizes)
    leaves the pack at once, by a slice; 'a' and 'c' get exactly what they get alone."""
    step_inputs = pair_stack.PairStack.step_inputs

    def diverging_from_step_2(stack):  # test seam: the pair 'diverging' outputs NaN from its third step on
        group = step_inputs(stack)
        ids = [run.pair_id for run in stack.runs]
        if "diverging" not in ids or stack.runs[0].step < 2:
            return group
        slot, generator = ids.index("diverging"), group.generator

        def poisoned(images):
            outputs = generator(images)
            mask = torch.ones_like(outputs)
            mask[slot] = float("nan")
            return outputs * mask

        return dataclasses.replace(group, generator=poisoned)

    monkeypatch.setattr(pair_stack.PairStack, "step_inputs", diverging_from_step_2)
    config = CONFIG.replace(log_every=2)  # losses are only read (a device sync) on log steps: 0, 2 and the last
    _, structure_size, appearance_size = SPECS["a"]
    diverging = PairInput("diverging", *make_pair(9, structure_size, appearance_size), config.replace(seed=7))
    small = PairInput("small", *make_pair(3, (30, 30), (40, 40)), config)  # below the generator's minimum
    finished = []
    results = train_pack(
        [pair_input("a", config), diverging, small, pair_input("c", config)],
        backbone,
        torch.device("cpu"),
        on_result=lambda pair_id, outcome: finished.append(pair_id),
    )
    assert isinstance(results["small"], TrainingError) and "below the 36 px" in str(results["small"])
    assert isinstance(results["diverging"], TrainingError) and "non-finite at step 2" in str(results["diverging"])
    assert finished[:2] == ["small", "diverging"]  # each left the pack at once; the others went on
    for pair_id in ("a", "c"):
        assert_same_result(results[pair_id], alone[pair_id][0], steps={0, 2})


@pytest.mark.slow
def test_compiled_backbone_falls_back_to_eager_where_compiling_fails(backbone, caplog):
    def no_compiler(graph, inputs):  # what a machine without a working compiler does
        raise RuntimeError("no C++ compiler found")

    pair = pair_input("a", CONFIG.replace(steps=1))

    def train(**options):
        return train_pair(
            pair.structure, pair.appearance, pair.config, backbone, torch.device("cpu"), options=TrainOptions(**options)
        )

    eager = train()  # the CPU default: compile off
    caplog.set_level(logging.WARNING)
    for backend in (no_compiler, "no_such_backend"):
        assert_same_result(train(compile="on", compile_backend=backend), eager)
    assert "compiled backbone failed" in caplog.text and "running it eagerly" in caplog.text
    assert "torch.compile is not available here" in caplog.text


def test_pairs_of_a_pack_must_share_the_backbone_and_optimiser(backbone):
    with pytest.raises(ValueError, match="differ in lr"):
        train_pack([pair_input("a"), pair_input("b", CONFIG.replace(lr=1e-3))], backbone, torch.device("cpu"))
    with pytest.raises(ValueError, match="differ in backbone"):
        train_pack(
            [pair_input("a"), pair_input("b", CONFIG.replace(backbone="random:vit_tiny_patch16_224"))],
            backbone,
            torch.device("cpu"),
        )


def test_plan_packs_groups_equal_sizes_and_keeps_backbones_apart():
    items = [
        ("p0", "vitb8", (512, 512)),
        ("p1", "vitb8", (600, 800)),
        ("p2", "vits16", (512, 512)),
        ("p3", "vitb8", (512, 512)),
        ("p4", "vitb8", (600, 800)),
        ("p5", "vitb8", None),
    ]
    packs = plan_packs(items, 2, key=lambda item: (item[1],), size=lambda item: item[2])
    assert [[item[0] for item in pack] for pack in packs] == [["p0", "p3"], ["p1", "p4"], ["p2"], ["p5"]]
    assert [len(pack) for pack in plan_packs(items, 16, key=lambda item: ())] == [6]


def test_auto_pack_size_follows_memory_and_image_size():
    gib = 2**30
    assert auto_pack_size(None, [((512, 512), (512, 512))]) == 1  # no GPU
    h100 = int(79.6 * gib)
    assert auto_pack_size(h100, [((512, 512), (512, 512))]) == 16
    hd = [((900, 1200), (982, 1280))]
    assert 8 <= auto_pack_size(h100, hd) < 16
    assert auto_pack_size(h100 // 4, hd) < auto_pack_size(h100, hd)  # a quarter of the GPU per task
    assert auto_pack_size(8 * gib, hd) == 1  # never 0
