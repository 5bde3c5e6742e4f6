"""What a method returns for one pair (Splice's trainer and the reference methods alike), so that one writer
(pipeline/runs/pair_folder.py) stores every method's outputs in the same layout."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MethodResult:
    output: torch.Tensor  # (3, H, W) uint8 on the CPU: the output at the structure image's (possibly capped) size
    losses: list[dict]  # one row per logged step: step, total and every term (NaN where a term was off); [] untrained
    meta: dict  # JSON-able facts: method, config, backbone, device, precision, seconds, peak memory, final losses
