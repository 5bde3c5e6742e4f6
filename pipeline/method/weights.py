"""Pretrained weights: where each file is found, whether it can be had, and the fallback to random weights.

Every weight file is looked up in this order:
1. $SPLICE_WEIGHTS_DIR, a folder made by `splice weights export DIR` (for air-gapped clusters: fetch on a connected
   machine, copy the folder, point SPLICE_WEIGHTS_DIR at it). Its layout:
     hf/<Hugging Face repo id>/model.safetensors    e.g. hf/timm/vit_base_patch8_224.dino/model.safetensors
     torch/<file name>                              e.g. torch/alexnet-owt-7be5be79.pth
2. the library's own cache: Hugging Face (HF_HOME / HF_HUB_CACHE) for DINO, torch hub (TORCH_HOME) for torchvision;
3. a download, when the host answers (never when SPLICE_OFFLINE / HF_HUB_OFFLINE / TORCH_HUB_OFFLINE is set).

Where the user did not name a backbone (the preset's default) and its weights cannot be had, commands fall back to
a randomly initialised network of the same architecture, say so once in large letters, and record it (run.json,
the report); a backbone the user named is never replaced: it fails fast and says how to provide it.
"""

from __future__ import annotations

import hashlib
import os
import sys

WEIGHTS_DIR_ENV = "SPLICE_WEIGHTS_DIR"
DINO_BACKBONES = {  # backbone spec -> timm model name (pipeline/method/backbone.py loads them)
    "dino_vitb8": "vit_base_patch8_224.dino",
    "dino_vits8": "vit_small_patch8_224.dino",
    "dino_vitb16": "vit_base_patch16_224.dino",
    "dino_vits16": "vit_small_patch16_224.dino",
}
RANDOM_WEIGHTS_ID = "random"  # the weights id of every randomly initialised network (backbones, metric models)
_announced: set[str] = set()  # fallback banners already printed by this process


def file_sha256(path: str) -> str:
    """The SHA-256 of a (weights) file, in hex, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_dir_file(kind: str, name: str, filename: str | None = None) -> str | None:
    """The file for `name` in $SPLICE_WEIGHTS_DIR, if that is set and holds it. kind: 'hf' (name: a Hugging Face
    repo id, file model.safetensors) or 'torch' (name: the file name)."""
    root = os.environ.get(WEIGHTS_DIR_ENV)
    if not root:
        return None
    path = export_path(kind, name, filename)
    path = os.path.join(os.path.expanduser(root), *path.split("/"))
    return path if os.path.isfile(path) else None


def export_path(kind: str, name: str, filename: str | None = None) -> str:
    """Where a file lives inside a weights folder, relative to it."""
    if kind == "hf":
        return f"hf/{name}/{filename or 'model.safetensors'}"
    if kind == "torch":
        return f"torch/{name}"
    raise ValueError(f"unknown weights kind {kind!r}")


def cached_hub_file(hub_id: str) -> str | None:
    """The weights file of Hugging Face repo `hub_id` in the Hugging Face cache, if it is there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hub_id, filename)
        if isinstance(path, str) and os.path.exists(path):
            return path
    return None


def local_hub_file(hub_id: str) -> str | None:
    """The weights file of Hugging Face repo `hub_id` on this machine: $SPLICE_WEIGHTS_DIR first, then the cache."""
    return weights_dir_file("hf", hub_id) or cached_hub_file(hub_id)


def dino_location(spec: str) -> tuple[str | None, str]:
    """(where the weights of DINO backbone `spec` are, or None; a description for messages)."""
    from pipeline.network import reachable

    hub_id = dino_hub_id(DINO_BACKBONES[spec])
    local = local_hub_file(hub_id)
    if local:
        return local, local
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if reachable(endpoint, offline_variables=("HF_HUB_OFFLINE",)):
        return "download", f"{endpoint}/{hub_id} (downloaded on first use)"
    return None, (f"{spec} is not in ${WEIGHTS_DIR_ENV} nor the Hugging Face cache, and {endpoint} cannot be reached")


def dino_hub_id(timm_name: str) -> str:
    import timm

    config = timm.models.get_pretrained_cfg(timm_name)
    return getattr(config, "hf_hub_id", None) or timm_name


def random_twin(spec: str) -> str:
    """The randomly initialised network of the same architecture: dino_vits16 -> random:vit_small_patch16_224."""
    return "random:" + DINO_BACKBONES[spec].split(".")[0]


def resolve_backbone(spec: str, *, explicit: bool) -> tuple[str, str | None]:
    """(spec to use, why it fell back to random weights or None). Only a default (not `explicit`) DINO backbone whose
    weights cannot be had falls back; anything else is returned as it is (and fails later if it must)."""
    if explicit or spec not in DINO_BACKBONES:
        return spec, None
    where, why = dino_location(spec)
    if where:
        return spec, None
    twin = random_twin(spec)
    return twin, (
        f"{why}: using {twin} (RANDOM weights) instead. Outputs and metrics mean nothing. To use real "
        f"weights: `splice weights fetch` with network access, or copy a folder made by `splice weights "
        f"export` and set {WEIGHTS_DIR_ENV}"
    )


def announce_fallback(reason: str, stream=None) -> None:
    """Print a fallback to random weights once per process, in large letters (it changes what every number means)."""
    if reason in _announced:
        return
    _announced.add(reason)
    stream = stream or sys.stderr
    bar = "#" * 78
    lines = ["", bar, "#  R A N D O M   W E I G H T S", "#"]
    words, line = reason.split(), "#  "
    for word in words:
        if len(line) + len(word) > 76:
            lines.append(line.rstrip())
            line = "#  "
        line += word + " "
    lines += [line.rstrip(), bar, ""]
    print("\n".join(lines), file=stream, flush=True)
