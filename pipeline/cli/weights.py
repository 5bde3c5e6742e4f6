"""`splice weights fetch|status|export DIR`: every pretrained weight file the tool can use, for air-gapped clusters.

On a machine with network access `splice weights fetch` downloads them into the usual caches (Hugging Face, torch
hub), `splice weights export DIR` copies what is cached into DIR (layout in pipeline/method/weights.py, with a
weights.json listing each file's source and sha256); copy DIR to the cluster and set SPLICE_WEIGHTS_DIR=DIR there
(or bake it into the image). `splice weights status` says, per file, where it is found or that it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from dataclasses import dataclass

from pipeline.errors import SpliceError
from pipeline.method.weights import (
    DINO_BACKBONES,
    WEIGHTS_DIR_ENV,
    cached_hub_file,
    dino_hub_id,
    export_path,
    file_sha256,
    weights_dir_file,
)


@dataclass(frozen=True)
class WeightsFile:
    name: str  # what `splice weights fetch NAME` calls it
    used_by: str
    kind: str  # 'hf' (a Hugging Face repo's model.safetensors) or 'torch' (a torchvision download)
    source: str  # Hugging Face repo id, or URL

    @property
    def export_path(self) -> str:
        return export_path(self.kind, self.source if self.kind == "hf" else _file_name(self.source))

    def location(self) -> tuple[str | None, str]:
        """(path of the file here or None, where it was found: 'SPLICE_WEIGHTS_DIR', 'Hugging Face cache', ...)."""
        if self.kind == "hf":
            exported = weights_dir_file("hf", self.source)
            if exported:
                return exported, WEIGHTS_DIR_ENV
            cached = cached_hub_file(self.source)
            return (cached, "Hugging Face cache") if cached else (None, "missing")
        from evaluation.weights import hub_cache_path

        exported = weights_dir_file("torch", _file_name(self.source))
        if exported:
            return exported, WEIGHTS_DIR_ENV
        cached = hub_cache_path(self.source)
        return (cached, "torch hub cache") if os.path.isfile(cached) else (None, "missing")

    def host(self) -> str:
        if self.kind == "hf":
            return os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        parsed = urllib.parse.urlparse(self.source)
        return f"{parsed.scheme}://{parsed.netloc}"


def catalogue() -> list[WeightsFile]:
    """Every weight file a command of this tool can load."""
    from torchvision.models import AlexNet_Weights, get_model_weights

    from evaluation.segmenter import DEFAULT_SEGMENTER

    dino_roles = {
        "dino_vitb8": "training (paper preset); metrics selfsim, dino_i, cls_mse",
        "dino_vits16": "training (preview preset, demo); metric dino_i_s16 (on request)",
    }
    files = [
        WeightsFile(spec, dino_roles.get(spec, "training (--backbone)"), "hf", dino_hub_id(timm_name))
        for spec, timm_name in DINO_BACKBONES.items()
    ]
    files.append(
        WeightsFile(
            "lpips-alexnet",
            "metric lpips_structure (LPIPS's AlexNet trunk)",
            "torch",
            AlexNet_Weights.IMAGENET1K_V1.url,
        )
    )
    files.append(
        WeightsFile(
            f"segmenter-{DEFAULT_SEGMENTER}",
            "metric layout_miou (default segmenter)",
            "torch",
            get_model_weights(DEFAULT_SEGMENTER).DEFAULT.url,
        )
    )
    return files


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="fetch, list or export every pretrained weight file (air-gapped clusters)",
        description="fetch: download the weights into the Hugging Face / torch caches (needs network); status: where "
        "each file is found; export DIR: copy every cached file into DIR, then copy DIR to the "
        f"cluster and set {WEIGHTS_DIR_ENV}=DIR there.",
    )
    commands = parser.add_subparsers(dest="weights_command", metavar="fetch|status|export", required=True)
    fetch = commands.add_parser("fetch", help="download weights into the caches (default: all)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="some of them only (see `splice weights status`)")
    fetch.set_defaults(handler=run_fetch)
    status = commands.add_parser("status", help="where each weight file is found, or that it is missing")
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.set_defaults(handler=run_status)
    export = commands.add_parser("export", help="copy every cached weight file into DIR, for SPLICE_WEIGHTS_DIR")
    export.add_argument("dir", metavar="DIR")
    export.set_defaults(handler=run_export)


def run_status(args) -> int:
    rows = []
    for entry in catalogue():
        path, where = entry.location()
        rows.append(
            {
                "name": entry.name,
                "used_by": entry.used_by,
                "found": where,
                "path": path,
                "megabytes": round(os.path.getsize(path) / 2**20, 1) if path else None,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for row in rows:
        size = f"{row['megabytes']:.0f} MB" if row["megabytes"] is not None else ""
        print(f"{row['name']:<{width}}  {row['found']:<19} {size:>7}  {row['used_by']}")
    missing = sum(1 for r in rows if r["path"] is None)
    print(
        f"{len(rows) - missing} of {len(rows)} found"
        + (f"; {WEIGHTS_DIR_ENV}={os.environ[WEIGHTS_DIR_ENV]}" if os.environ.get(WEIGHTS_DIR_ENV) else "")
        + (
            "; get the missing ones with `splice weights fetch` (network) or from a folder made by "
            "`splice weights export`"
            if missing
            else ""
        )
    )
    return 0


def run_fetch(args) -> int:
    from pipeline.network import reachable

    entries = catalogue()
    known = {e.name for e in entries}
    unknown = sorted(set(args.names) - known)
    if unknown:
        raise SpliceError(f"unknown weights {', '.join(unknown)}: use any of {', '.join(sorted(known))}")
    chosen = [e for e in entries if not args.names or e.name in args.names]
    hosts: dict[str, bool] = {}  # one reachability probe per host, so offline fails in seconds
    failed = []
    for entry in chosen:
        path, where = entry.location()
        if path:
            print(f"{entry.name}: already in the {where} ({path})")
            continue
        host = entry.host()
        if host not in hosts:
            hosts[host] = reachable(host, offline_variables=("HF_HUB_OFFLINE", "TORCH_HUB_OFFLINE"))
        if not hosts[host]:
            failed.append(f"{entry.name} ({host} cannot be reached)")
            continue
        try:
            print(f"{entry.name}: downloading from {entry.source} ...", flush=True)
            _download(entry)
        except Exception as exc:  # network or hub trouble: name the file and go on with the others
            failed.append(f"{entry.name} ({type(exc).__name__}: {str(exc)[:200]})")
            continue
        print(f"{entry.name}: {entry.location()[0]}")
    if failed:
        raise SpliceError(
            f"could not fetch {len(failed)} weight file(s): {'; '.join(failed)}. On an offline machine: "
            f"run `splice weights fetch` and `splice weights export DIR` on one with network access, "
            f"copy DIR here and set {WEIGHTS_DIR_ENV}=DIR (or copy the files into the HF / torch caches)"
        )
    return 0


def run_export(args) -> int:
    target = os.path.abspath(os.path.expanduser(args.dir))
    exported, missing = [], []
    for entry in catalogue():
        path, _ = entry.location()
        if not path:
            missing.append(entry.name)
            continue
        destination = os.path.join(target, *entry.export_path.split("/"))
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        if os.path.abspath(path) != destination:
            shutil.copyfile(path, destination)
        exported.append(
            {
                "name": entry.name,
                "file": entry.export_path,
                "source": entry.source,
                "used_by": entry.used_by,
                "sha256": file_sha256(destination),
            }
        )
    if not exported:
        raise SpliceError(
            f"no weight file is cached here to export (missing: {', '.join(missing)}); run `splice "
            f"weights fetch` first, on a machine with network access"
        )
    with open(os.path.join(target, "weights.json"), "w") as handle:
        json.dump({"files": exported, "missing": missing}, handle, indent=2)
    print(
        f"exported {len(exported)} weight file(s) to {target}"
        + (f" (not cached here, so not exported: {', '.join(missing)})" if missing else "")
    )
    print(f"copy {target} to the cluster and set {WEIGHTS_DIR_ENV}={target} there (or bake it into the image)")
    return 0


def _download(entry: WeightsFile) -> None:
    if entry.kind == "hf":
        from huggingface_hub import hf_hub_download

        hf_hub_download(entry.source, "model.safetensors")
        return
    import torch

    from evaluation.weights import hub_cache_path

    destination = hub_cache_path(entry.source)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    torch.hub.download_url_to_file(entry.source, destination, progress=False)


def _file_name(url: str) -> str:
    return os.path.basename(urllib.parse.urlparse(url).path)
