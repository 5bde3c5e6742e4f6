"""Pairs of a pack whose generators run as one grouped call: a stack.

A pack's pairs fall into stacks by `stack_key`: pairs at the same step, with the same structure and appearance image
sizes and the same crop-shape settings, draw the same crop sides (the shared schedule, `pipeline.method.augment`),
so their crops stack into one batch and their generators into one `GroupedGenerator`; and they have taken the same
number of Adam steps, so one Adam step count serves each stacked parameter. Pairs of a mixed-size pack, pairs
resumed at different steps, and pairs on the per-pair schedule of older runs each form stacks of their own (of one,
at worst, which is a pair trained as before).

A stack holds the live generator parameters of its pairs (slot k = `runs[k]`), its images stacked once, and moves
each pair's Adam state in (from its checkpoint) and out (into its checkpoint) in the per-pair format, so a pair's
checkpoint does not depend on its stack or pack. A pair leaves by slicing (`without`).
"""

from __future__ import annotations

import torch

from pipeline.method.augment import SHARED_SCHEDULE, sample_group
from pipeline.method.grouped_generator import GroupedGenerator, parameter_names, slot_rows, stack_rows
from pipeline.method.objective import GroupStep, loss_weights
from pipeline.method.pair_run import PairRun


def stack_key(run: PairRun) -> tuple:
    """Pairs with equal keys train as one stack (see the module's docstring)."""
    config = run.config
    return (
        run.step,
        run.optimizer_steps,
        tuple(run.structure.shape[-2:]),
        tuple(run.appearance.shape[-2:]),
        config.crop_min_fraction,
        config.full_image_every,
        config.identity_weight > 0,
        config.appearance_weight > 0 or config.structure_weight > 0,  # whether full-image steps happen at all
        (config.crop_schedule, config.crop_schedule_seed) if config.crop_schedule == SHARED_SCHEDULE else run.pair_id,
    )


def form_stacks(runs: list[PairRun], device: torch.device, per_slot: bool = False) -> list[PairStack]:
    """The runs' stacks (in the runs' order); `per_slot`: their generators convolve per slot (see
    `GroupedGenerator.per_slot_convolutions`)."""
    groups: dict[tuple, list[PairRun]] = {}
    for run in runs:
        groups.setdefault(stack_key(run), []).append(run)
    return [PairStack(members, device, per_slot=per_slot) for members in groups.values()]


class PairStack:
    """G pairs trained as one grouped generator; slot k is `runs[k]`."""

    def __init__(
        self,
        runs: list[PairRun],
        device: torch.device,
        generator: GroupedGenerator | None = None,
        per_slot: bool = False,
    ):
        self.runs = runs
        if generator is None:
            generator = GroupedGenerator([run.initial_generator_state() for run in runs]).to(device).train()
            generator.per_slot_convolutions = per_slot
        self.generator = generator
        self.call = generator  # what the step calls: the module, or a compiled form of it (see trainer)
        self.structures = torch.cat([run.structure for run in runs])  # (G, 3, H, W)
        self.appearances = torch.cat([run.appearance for run in runs])  # (G, 3, H', W')
        self.full_targets = torch.cat([run.full_target for run in runs])  # (G, N, N)

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return self.generator.slot_parameters()

    def step_inputs(self) -> GroupStep:
        """This step's weights and augmented batch for every pair of the stack (all at one step)."""
        step = self.runs[0].step
        weights = [loss_weights(step, run.config) for run in self.runs]
        full = weights[0].full_image
        batch = sample_group(
            [run.rng for run in self.runs],
            self.structures,
            self.appearances,
            [run.config for run in self.runs],
            step,
            full,
        )
        return GroupStep(self.call, batch, weights, self.full_targets if full else None)

    # --- Adam state, per pair in, per pair out ---------------------------------------------------------------

    def restore_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Move the pairs' checkpointed Adam states (all pairs of a stack have one, or none) into `optimizer`."""
        states = [run.take_optimizer_state() for run in self.runs]
        if all(state is None for state in states):
            return
        if any(state is None for state in states):
            raise ValueError("pairs of one stack must all resume from an optimiser state, or none")
        group = optimizer.param_groups[0]
        on_device = bool(group.get("fused") or group.get("capturable"))
        for index, parameter in enumerate(self.parameters):
            per_pair = [state["state"][index] for state in states]
            step = per_pair[0]["step"]
            step = torch.as_tensor(step, dtype=torch.float32)
            optimizer.state[parameter] = {
                "step": step.to(parameter.device) if on_device else step.to("cpu"),
                "exp_avg": stack_rows([entry["exp_avg"] for entry in per_pair]).to(parameter.device),
                "exp_avg_sq": stack_rows([entry["exp_avg_sq"] for entry in per_pair]).to(parameter.device),
            }

    def optimizer_state(self, optimizer: torch.optim.Optimizer, slot: int) -> dict:
        """Slot `slot`'s Adam state as `torch.optim.Adam(SkipGenerator().parameters())` would save it alone."""
        config = self.runs[slot].config
        placeholders = [torch.nn.Parameter(torch.empty(0)) for _ in parameter_names()]
        alone = torch.optim.Adam(placeholders, lr=config.lr, betas=config.betas).state_dict()
        for index, parameter in enumerate(self.parameters):
            if parameter in optimizer.state:
                entry = optimizer.state[parameter]
                alone["state"][index] = {
                    "step": entry["step"].detach().to("cpu", torch.float32).clone(),
                    "exp_avg": slot_rows(entry["exp_avg"], self.generator.slots, slot),
                    "exp_avg_sq": slot_rows(entry["exp_avg_sq"], self.generator.slots, slot),
                }
        return alone

    # --- slots out --------------------------------------------------------------------------------------------

    def generator_state(self, slot: int) -> dict:
        return self.generator.state_dict_of(slot)

    def without(self, leaving: set[PairRun], optimizer: torch.optim.Optimizer | None) -> PairStack | None:
        """This stack less the `leaving` pairs (sliced; their Adam state carried into the new parameters, which
        replace the old ones in `optimizer`'s state), or None if none is left."""
        kept = [slot for slot, run in enumerate(self.runs) if run not in leaving]
        if len(kept) == len(self.runs):
            return self
        if not kept:
            return None
        generator = self.generator.keep(kept)
        if optimizer is not None:
            index = torch.tensor(kept, dtype=torch.long, device=self.structures.device)
            for old, new in zip(self.parameters, generator.slot_parameters()):
                entry = optimizer.state.pop(old, None)
                if entry is not None:
                    optimizer.state[new] = {
                        "step": entry["step"],
                        "exp_avg": self.generator.slice_rows(entry["exp_avg"], index),
                        "exp_avg_sq": self.generator.slice_rows(entry["exp_avg_sq"], index),
                    }
        return PairStack([self.runs[slot] for slot in kept], self.structures.device, generator)
