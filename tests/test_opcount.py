"""Launches per pair-step: a pack's same-size pairs share their generator calls, so adding pairs adds few ops.

Counted, not timed (benchmarks/opcount.py's in-process counter: every aten op dispatched in crop-only steps of
`train_pack`, random ViT-Ti/16, fp32 CPU), so the result is the same on every machine. The count depends on the
code only; issue 18 asks that a pack of 4 same-size pairs dispatch less than 1.3x the ops of a pack of one.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from pipeline.method.backbone import load_backbone

OPCOUNT = Path(__file__).resolve().parents[1] / "benchmarks" / "opcount.py"
STEPS = (2, 4)  # per step = (count of a 4-step run - count of a 2-step run) / 2: crop-only steps


def _load_opcount():
    spec = importlib.util.spec_from_file_location("benchmarks_opcount", OPCOUNT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


opcount = _load_opcount()


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(opcount.BACKBONE, "cpu")


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the count does not depend on it; the run time on a shared machine does
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_pack_of_four_same_size_pairs_dispatches_less_than_1_3x_the_ops_of_a_pack_of_one(backbone, one_thread):
    alone = opcount.count_ops_per_step(1, same_size=True, steps=STEPS, backbone=backbone)
    pack = opcount.count_ops_per_step(4, same_size=True, steps=STEPS, backbone=backbone)
    ratio = pack["ops_per_step"] / alone["ops_per_step"]
    phases = ", ".join(f"{name} {alone['phases'][name]:.0f} -> {pack['phases'][name]:.0f}" for name in opcount.PHASES)
    assert ratio < 1.3, (
        f"a pack of 4 same-size pairs dispatches {pack['ops_per_step']:,.0f} aten ops per step, "
        f"{ratio:.2f}x the {alone['ops_per_step']:,.0f} of a pack of one (limit 1.3x); per phase, K=1 -> K=4: {phases}"
    )


@pytest.mark.slow
def test_a_mixed_size_pack_still_trains_and_is_counted(backbone, one_thread):
    counted = opcount.count_ops_per_step(3, same_size=False, steps=STEPS, backbone=backbone)
    sizes = {tuple(map(tuple, pair)) for pair in counted["sizes"]}
    assert len(sizes) == 3, "the pack should hold three pairs of different sizes"
    assert counted["ops_per_step"] > 0 and counted["gpu_launches_per_pair_step"] > 0
    for phase in ("augmentation", "generator", "backbone", "losses", "backward", "optimiser"):
        assert counted["phases"][phase] > 0, f"no {phase} ops counted in a mixed-size pack: {counted['phases']}"
    assert counted["optimizer_parameter_tensors"] > 0
