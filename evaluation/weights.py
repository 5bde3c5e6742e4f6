"""Pretrained weights the metrics need from torchvision's download server: from a local file, the torch hub cache,
or a download when the server can be reached. Never a download attempt when offline: that fails fast instead.

Set SPLICE_OFFLINE=1 (or TORCH_HUB_OFFLINE=1) to forbid downloads altogether.
"""

from __future__ import annotations

import logging
import os
import urllib.parse

import torch

from pipeline.errors import SpliceError
from pipeline.method.weights import file_sha256, weights_dir_file
from pipeline.network import reachable

log = logging.getLogger(__name__)


class MetricUnavailable(SpliceError, RuntimeError):
    """A metric whose model or weights cannot be had; the message says how to provide them."""


def hub_cache_path(url: str) -> str:
    """Where torch.hub keeps the file downloaded from `url` (honours TORCH_HOME)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urllib.parse.urlparse(url).path))


def load_state_dict(url: str, what: str, local_file: str | None = None, option: str = "") -> tuple[dict, str]:
    """The state dict published at `url`, and an id for provenance ('<file name>' or 'sha256:...' for a local file).

    Order: `local_file` if given; $SPLICE_WEIGHTS_DIR/torch/; the torch hub cache; a download if the server answers.
    Otherwise
    `MetricUnavailable` naming the file and the two ways to provide it.
    """
    if local_file:
        if not os.path.isfile(local_file):
            raise MetricUnavailable(
                f"{what}: weights file {local_file} does not exist; give the path to {os.path.basename(url)}"
            )
        return _load(local_file, what), "sha256:" + file_sha256(local_file)[:16]
    exported = weights_dir_file("torch", os.path.basename(urllib.parse.urlparse(url).path))  # SPLICE_WEIGHTS_DIR
    if exported:
        return _load(exported, what), os.path.basename(exported)
    cached = hub_cache_path(url)
    if os.path.isfile(cached):
        return _load(cached, what), os.path.basename(cached)
    if not reachable(url, offline_variables=("TORCH_HUB_OFFLINE",)):
        how = f"pass {option}, or " if option else ""
        raise MetricUnavailable(
            f"{what}: pretrained weights {os.path.basename(url)} are not in the torch hub cache and {_host(url)} cannot be "
            f"reached (offline). To provide them: {how}download {url} elsewhere and copy it to {cached} "
            f"(the cache folder follows TORCH_HOME)"
        )
    log.info("%s: downloading %s to %s", what, url, cached)
    try:
        torch.hub.load_state_dict_from_url(url, progress=False, map_location="cpu")
    except Exception as exc:  # network trouble: say what to do
        raise MetricUnavailable(f"{what}: downloading {url} failed ({exc}); copy the file to {cached} instead") from exc
    return _load(cached, what), os.path.basename(cached)


def _load(path: str, what: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MetricUnavailable(f"{what}: weights file {path} cannot be loaded ({exc}); replace it") from exc


def _host(url: str) -> str:
    return urllib.parse.urlparse(url).hostname or url


def torch_file_location(url: str) -> str | None:
    """Where the torchvision file published at `url` is found ($SPLICE_WEIGHTS_DIR, then the torch hub cache), or None."""
    exported = weights_dir_file("torch", os.path.basename(urllib.parse.urlparse(url).path))
    if exported:
        return exported
    cached = hub_cache_path(url)
    return cached if os.path.isfile(cached) else None


def can_have(url: str) -> bool:
    """Whether the file at `url` is here or can be downloaded now."""
    return torch_file_location(url) is not None or reachable(url, offline_variables=("TORCH_HUB_OFFLINE",))
