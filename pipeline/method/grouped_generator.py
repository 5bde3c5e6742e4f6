"""K Splice generators run as ONE module: grouped convolutions on channel-stacked inputs.

Slot k of a `GroupedGenerator` is one pair's `SkipGenerator`, exactly: every convolution holds the K pairs' weights
concatenated along its output channels and runs with `groups=K`, so group k sees only slot k's input channels and
weights; BatchNorm runs over K x C channels, and its statistics are per channel, hence per slot (each slot's input
is a batch of one image, as each pair's crop is in its own call when trained alone); the concatenation of a scale's
skip and deeper branches is done per group; upsampling, LeakyReLU and the sigmoid are channel-wise anyway. So one
call on K same-size images costs the launches of one generator call, whatever K is, and gives what K separate
`SkipGenerator` calls give (up to the float rounding of a different convolution algorithm).

The parameters are K-stacked tensors (one per `SkipGenerator` parameter), so one optimiser step over a pack is a
few multi-tensor launches too. A slot's state dict is the `SkipGenerator` one (`state_dict(slot)`), so a pair's
checkpoint does not depend on its pack; a pair leaves the pack by a slice of every tensor (`keep`).

Calling convention: images (K, 3, H, W) in [0, 1], image k for slot k -> (K, 3, H, W), like a `SkipGenerator` called
on a batch, but without mixing the batch's images in BatchNorm.

Convolutions run grouped (one call per layer: what a GPU wants) or, with `per_slot_convolutions`, each slot's as its
own call (what a CPU wants: oneDNN's plain kernels are faster than its grouped ones there, and give each slot exactly
what its SkipGenerator computes; every other op of the module is the same arithmetic per slot in either form).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.method.generator import DOWN_CHANNELS, SkipGenerator

BN_EPS = 1e-5  # nn.BatchNorm2d's defaults, as SkipGenerator uses them
BN_MOMENTUM = 0.1
LEAKY_SLOPE = 0.2


def _blank_generator() -> SkipGenerator:
    """A SkipGenerator to fill from a state dict, made without touching the global RNG (its initialisation draws)."""
    with torch.random.fork_rng(devices=[]):
        return SkipGenerator()


@cache
def _layout() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """SkipGenerator's parameter names (in `parameters()` order), running-statistics buffer names, and the names of
    its BatchNorm layers' `num_batches_tracked` counters."""
    reference = _blank_generator()
    parameters = tuple(name for name, _ in reference.named_parameters())
    buffers = tuple(name for name, _ in reference.named_buffers() if not name.endswith("num_batches_tracked"))
    counters = tuple(name for name, _ in reference.named_buffers() if name.endswith("num_batches_tracked"))
    return parameters, buffers, counters


def parameter_names() -> tuple[str, ...]:
    return _layout()[0]


def _attr(name: str) -> str:
    return name.replace(".", "__")


class GroupedGenerator(nn.Module):
    """K pairs' generators as one module; built from their `SkipGenerator` state dicts."""

    def __init__(self, state_dicts: Sequence[dict]):
        super().__init__()
        if not state_dicts:
            raise ValueError("a grouped generator needs at least one slot")
        parameters, buffers, counters = _layout()
        self.slots = len(state_dicts)
        # False: one convolution with groups=K per layer (one launch for the stack: GPUs). True: each slot's
        # convolution as its own call, which on a CPU is faster (oneDNN's plain kernels) and computes each slot bit
        # for bit as a SkipGenerator would (a grouped kernel rounds differently from a plain one)
        self.per_slot_convolutions = False
        for name in parameters:
            stacked = torch.cat([state[name].detach() for state in state_dicts])
            self.register_parameter(_attr(name), nn.Parameter(stacked.clone()))
        for name in buffers:
            self.register_buffer(_attr(name), torch.cat([state[name] for state in state_dicts]).clone())
        # every BatchNorm of a SkipGenerator runs once per call, so one counter per slot stands for all of them
        calls = [int(state[counters[0]]) if counters[0] in state else 0 for state in state_dicts]
        self.register_buffer("calls", torch.tensor(calls, dtype=torch.long, device=self._any_tensor().device))

    @classmethod
    def from_generators(cls, generators: Sequence[SkipGenerator]) -> GroupedGenerator:
        return cls([generator.state_dict() for generator in generators])

    def _any_tensor(self) -> torch.Tensor:
        return getattr(self, _attr(parameter_names()[0]))

    def _p(self, name: str) -> torch.Tensor:
        return getattr(self, _attr(name))

    # --- the forward pass, mirroring SkipGenerator / _Scale module for module -----------------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        count, channels, height, width = images.shape
        if count != self.slots:
            raise ValueError(f"a grouped generator of {self.slots} slots got {count} images")
        # (1, 3K, H, W): slot k's image in channels 3k..3k+2 (one slot: already so, and no view op to dispatch)
        x = images if count == 1 else images.reshape(1, count * channels, height, width)
        if self.training:
            self.calls.add_(1)
        x = self._scale(x, "body", 0)
        x = _sigmoid(self._conv(x, "head"))  # (1, 3K, H, W)
        return x if count == 1 else x.reshape(count, channels, height, width)

    def _scale(self, x: torch.Tensor, prefix: str, level: int) -> torch.Tensor:
        skip = self._conv_bn_act(x, f"{prefix}.skip")  # (1, 4K, H, W)
        deep = self._conv_bn_act(x, f"{prefix}.down.0", stride=2)
        deep = self._conv_bn_act(deep, f"{prefix}.down.1")  # (1, down K, ceil(H/2), ceil(W/2))
        if level + 1 < len(DOWN_CHANNELS):
            deep = self._scale(deep, f"{prefix}.deeper", level + 1)
        deep = F.interpolate(deep, scale_factor=2, mode="bilinear", align_corners=False)
        top = (deep.shape[-2] - skip.shape[-2]) // 2
        left = (deep.shape[-1] - skip.shape[-1]) // 2
        deep = deep[..., top : top + skip.shape[-2], left : left + skip.shape[-1]]  # centre crop, as SkipGenerator
        # per slot [skip, deep]: (1, K, 4, H, W) + (1, K, C, H, W) -> (1, K (4 + C), H, W)
        if self.slots == 1:
            merged = torch.cat([skip, deep], dim=1)
        else:
            merged = torch.cat([skip.unflatten(1, (self.slots, -1)), deep.unflatten(1, (self.slots, -1))], dim=2)
            merged = merged.flatten(1, 2)
        merged = self._batch_norm(merged, f"{prefix}.merge_norm")
        up = self._conv_bn_act(merged, f"{prefix}.up.0")
        return self._conv_bn_act(up, f"{prefix}.up.1")

    def _conv(self, x: torch.Tensor, prefix: str, stride: int = 1) -> torch.Tensor:
        weight, bias = self._p(f"{prefix}.weight"), self._p(f"{prefix}.bias")
        padding = (weight.shape[-1] - 1) // 2
        if self.per_slot_convolutions and self.slots > 1:
            pieces = zip(x.chunk(self.slots, dim=1), weight.chunk(self.slots), bias.chunk(self.slots))
            return torch.cat([F.conv2d(xs, ws, bs, stride=stride, padding=padding) for xs, ws, bs in pieces], dim=1)
        return F.conv2d(x, weight, bias, stride=stride, padding=padding, groups=self.slots)

    def _batch_norm(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.batch_norm(
            x,
            self._p(f"{prefix}.running_mean"),
            self._p(f"{prefix}.running_var"),
            self._p(f"{prefix}.weight"),
            self._p(f"{prefix}.bias"),
            training=self.training,
            momentum=BN_MOMENTUM,
            eps=BN_EPS,
        )

    def _conv_bn_act(self, x: torch.Tensor, prefix: str, stride: int = 1) -> torch.Tensor:
        x = self._conv(x, f"{prefix}.0", stride)
        return F.leaky_relu(self._batch_norm(x, f"{prefix}.1"), LEAKY_SLOPE)

    # --- slots in and out --------------------------------------------------------------------------------------

    def slot_parameters(self) -> list[nn.Parameter]:
        """The stacked parameters, in SkipGenerator's `parameters()` order."""
        return [self._p(name) for name in parameter_names()]

    def state_dict_of(self, slot: int) -> dict[str, torch.Tensor]:
        """Slot `slot` as a `SkipGenerator.state_dict()` (detached slices: copy them before the next step)."""
        parameters, buffers, counters = _layout()
        state = {name: slot_rows(self._p(name), self.slots, slot).detach() for name in (*parameters, *buffers)}
        count = self.calls[slot].detach().clone()
        state.update({name: count for name in counters})
        return {name: state[name] for name in _state_order()}

    def generator(self, slot: int) -> SkipGenerator:
        """Slot `slot` as a standalone SkipGenerator on this module's device (a copy)."""
        generator = _blank_generator().to(self._any_tensor().device)
        generator.load_state_dict(self.state_dict_of(slot))
        return generator.train(self.training)

    def keep(self, slots: Sequence[int]) -> GroupedGenerator:
        """A new module holding only `slots` (in that order): every tensor sliced, nothing rebuilt from pairs."""
        index = torch.tensor(list(slots), dtype=torch.long, device=self._any_tensor().device)
        kept = GroupedGenerator.__new__(GroupedGenerator)
        nn.Module.__init__(kept)
        kept.slots = len(slots)
        kept.per_slot_convolutions = self.per_slot_convolutions
        parameters, buffers, _ = _layout()
        for name in parameters:
            kept.register_parameter(_attr(name), nn.Parameter(self.slice_rows(self._p(name).detach(), index)))
        for name in buffers:
            kept.register_buffer(_attr(name), self.slice_rows(self._p(name), index))
        kept.register_buffer("calls", self.calls.index_select(0, index))
        return kept.train(self.training)

    def slice_rows(self, stacked: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The rows of `stacked` (a K-stacked tensor, e.g. a parameter or its Adam moment) for the slots in `index`."""
        return stacked.unflatten(0, (self.slots, -1)).index_select(0, index).flatten(0, 1).clone()


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    """The output's sigmoid, the same for a slot whatever its place in the stack. A CPU computes `exp` in vector
    lanes for most elements and with scalar code for the last few of a tensor, which round differently, so a slot's
    last pixels would change with the number of slots after it; computed in float64 and rounded back, the two agree
    (every other op here is exact arithmetic or runs per channel). CUDA computes every element alike. (This differs
    from SkipGenerator's float32 sigmoid by at most a rounding step; the output image is rounded to uint8 anyway.)"""
    if x.device.type != "cpu":
        return torch.sigmoid(x)
    return torch.sigmoid(x.double()).to(x.dtype)


@cache
def _state_order() -> tuple[str, ...]:
    """The key order of `SkipGenerator().state_dict()`."""
    return tuple(_blank_generator().state_dict().keys())


def stack_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-slot tensors (e.g. one parameter's Adam moment per pair) -> the K-stacked tensor."""
    return torch.cat([tensor.detach() for tensor in tensors])


def slot_rows(stacked: torch.Tensor, slots: int, slot: int) -> torch.Tensor:
    """Slot `slot`'s rows of a K-stacked tensor (a view)."""
    rows = stacked.shape[0] // slots
    return stacked[slot * rows : (slot + 1) * rows]
