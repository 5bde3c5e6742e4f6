"""Devices: which one computes (chosen once, at the entry point), what it is called, and the peak memory a
computation took there. The trainer, the reference methods, the fan-out and the evaluation all use these, so that
every pair's meta.json describes its device the same way."""

from __future__ import annotations

import platform
import resource

import torch

from pipeline.errors import SpliceError


def best_device(*, mps: bool = False) -> torch.device:
    """CUDA if available; else, with `mps`, Apple's MPS if available; else the CPU. Training stays on CUDA or the
    CPU (the devices its ops are checked on); the evaluation's forward passes also use MPS."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if mps and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(name: str = "auto") -> torch.device:
    """A --device value: 'auto' (best_device()), 'cpu', 'cuda', 'cuda:N'; a CUDA device without CUDA is an error."""
    if name == "auto":
        return best_device()
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpliceError(f"device {name!r} asked for, but no CUDA device is available: use --device cpu or auto")
    return device


def device_name(device: torch.device) -> str:
    """What the device is, for meta.json and the report: the GPU's model, else the CPU's."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring the peak memory of `device` afresh (CUDA only: a process's peak RSS cannot be reset)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """{peak_memory_bytes, peak_memory_kind}: CUDA's peak allocation since reset_peak_memory, else the process's
    peak resident set (an upper bound that includes everything in the process)."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)), "peak_memory_kind": "cuda_allocated"}
    # Linux reports ru_maxrss in KiB
    return {
        "peak_memory_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "peak_memory_kind": "process_rss",
    }
