"""The image pool of a SpliceNet training and its curation (`splice train-net`, pipeline/runs/train_net.py).

Data: every image that a selected domain's rows name (structure or appearance column) joins that domain's pool;
pairs are drawn within a domain. A first pass (shared among the workers) decodes every image once, shrinks it to
the training resolution's short side, drops unreadable ones (listed in OUT/images.parquet, the run goes on) and,
with curation, reads its [CLS]. Workers keep pool images in memory up to `cache_mb`, read the rest on demand, and
fetch the next step's images while the current step computes.

Curation (`curate=centre`, the paper keeps "inlier" pairs without saying how): per domain, the cosine distance of
each image's [CLS] to the domain's mean [CLS]; the `curate_keep` nearest fraction is kept.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import Future, ThreadPoolExecutor

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F

from manifests.schema import Manifest
from pipeline.errors import SpliceError
from pipeline.method.images import decode_image, max_input_bytes
from pipeline.method.splicenet_train import NetTrainConfig, pool_image
from pipeline.runs import net_folder
from pipeline.runs.layout import join
from pipeline.storage import Storage, redact_text, redact_url

log = logging.getLogger(__name__)

NO_DOMAIN = "all"  # the one pool of a manifest without a domain column


def plan_images(manifest: Manifest, domains: tuple[str, ...]) -> list[dict]:
    """The image pool: one {uri, domain} per distinct image of each selected domain, in manifest order."""
    frame = manifest.frame
    has_domain = "domain" in frame.columns
    labels = frame["domain"].fillna("").astype(str) if has_domain else pd.Series([NO_DOMAIN] * len(frame))
    name = redact_url(manifest.url)
    if has_domain and (labels == "").any():
        rows = list(frame.loc[labels == "", "pair_id"][:5])
        raise SpliceError(
            f"manifest {name}: {int((labels == '').sum())} row(s) without a domain (e.g. {rows}): give "
            f"every row a domain, or drop the domain column to train one net on all images"
        )
    available = sorted(set(labels))
    if domains:
        if not has_domain:
            raise SpliceError(
                f"manifest {name} has no 'domain' column, so --domain {','.join(domains)} cannot select "
                f"images: drop --domain (one net for all images) or build the manifest with domains"
            )
        unknown = [d for d in domains if d not in available]
        if unknown:
            raise SpliceError(
                f"manifest {name} has no domain {', '.join(map(repr, unknown))}; its domains: {', '.join(available)}"
            )
    selected = list(domains) or available
    images, seen = [], set()
    for row, domain in zip(frame.to_dict("records"), labels):
        if domain not in selected:
            continue
        for uri in (row["structure_uri"], row["appearance_uri"]):
            if (uri, domain) not in seen:
                seen.add((uri, domain))
                images.append({"uri": uri, "domain": domain})
    counts = {d: sum(1 for image in images if image["domain"] == d) for d in selected}
    small = {d: n for d, n in counts.items() if n < 2}
    if small:
        raise SpliceError(
            f"manifest {name}: domain(s) {small} have fewer than 2 distinct images; SpliceNet pairs "
            f"images within a domain: add images or leave those domains out with --domain"
        )
    return images


class ImagePool:
    """Pool images by index: decoded, shrunk to the training resolution, cached up to a byte budget, prefetched."""

    def __init__(self, uris: list[str], storage: Storage, config: NetTrainConfig, cache_mb: int, threads: int = 8):
        self.uris, self.storage, self.config = uris, storage, config
        self.budget = cache_mb * 2**20
        self.cache: dict[int, torch.Tensor] = {}
        self.cached_bytes = 0
        self.pending: dict[int, Future] = {}
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="splicenet-images")

    def load(self, index: int) -> torch.Tensor:
        uri = self.uris[index]
        limit = max_input_bytes(self.config.max_pixels)
        image = decode_image(self.storage.read_input(uri, max_bytes=limit), redact_url(uri), self.config.max_pixels)
        return pool_image(image, self.config.resolution)

    def keep(self, index: int, image: torch.Tensor) -> None:
        if index not in self.cache and self.cached_bytes + image.numel() <= self.budget:
            self.cache[index] = image
            self.cached_bytes += image.numel()

    def prefetch(self, indices: set[int]) -> None:
        for index in indices:
            if index not in self.cache and index not in self.pending:
                self.pending[index] = self.executor.submit(self.load, index)

    def get(self, indices: set[int]) -> dict[int, torch.Tensor]:
        self.prefetch(indices)
        found = {}
        for index in sorted(indices):
            if index in self.cache:
                found[index] = self.cache[index]
                continue
            try:
                found[index] = self.pending.pop(index).result()
            except SpliceError:
                raise
            except Exception as exc:
                raise SpliceError(
                    f"image {redact_url(self.uris[index])} cannot be read ({type(exc).__name__}: "
                    f"{redact_text(exc)}): check the store; the run resumes from its last checkpoint"
                ) from exc
            self.keep(index, found[index])
        return found

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def pool_table(
    out: str, images: list[dict], pool: ImagePool, backbone, rank: int, world: int, device: torch.device
) -> pd.DataFrame:
    """OUT/images.parquet, reused when it lists these images; else made: each worker decodes (and, when curating,
    embeds) every world-th image, the results are gathered, rank 0 writes the table."""
    table = net_folder.read_images(pool.storage, out, images)
    if table is not None:
        return table
    config = pool.config
    mine = {}
    indices = range(rank, len(images), world)
    for index, future in zip(indices, [pool.executor.submit(pool.load, i) for i in indices]):  # reads in parallel
        try:
            image = future.result()
        except Exception as exc:  # noqa: BLE001 (any failure to read or decode: this image leaves the pool, the training goes on)
            reason = (
                redact_text(str(exc)) if isinstance(exc, SpliceError) else f"{type(exc).__name__}: {redact_text(exc)}"
            )
            mine[index] = {"error": reason, "cls": None}
            continue
        pool.keep(index, image)
        cls = _cls_token(backbone, image, device) if config.curate == "centre" else None
        mine[index] = {"error": None, "cls": cls}
    gathered = _all_gather(mine, world)
    results = {index: value for part in gathered for index, value in part.items()}
    table = pd.DataFrame(images)
    table["error"] = [results[i]["error"] for i in range(len(images))]
    table["ok"] = table["error"].isna()
    table["distance"] = float("nan")
    table["kept"] = table["ok"]
    if config.curate == "centre":
        _curate(table, results, config.curate_keep)
    for row in table[~table["ok"]].itertuples():
        log.warning("image %s left out of the pool: %s", redact_url(row.uri), row.error)
    if rank == 0:
        net_folder.write_images(pool.storage, out, table)
    return table


def domain_pools(table: pd.DataFrame, out: str) -> list[list[int]]:
    """The kept images' indices, one list per domain (sorted by name): what pairs are drawn from."""
    pools = [list(group.index) for _, group in table[table["kept"]].groupby("domain", sort=True)]
    small = [d for d, group in table[table["kept"]].groupby("domain") if len(group) < 2]
    if small:
        raise SpliceError(
            f"domain(s) {small} have fewer than 2 readable images left (see "
            f"{redact_url(join(out, net_folder.IMAGES_FILE))}): fix or add images"
        )
    return pools


def _cls_token(backbone, image: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The last block's [CLS] (D,) of a whole pool image, on the CPU."""
    with torch.no_grad():
        pixels = backbone.prepare(image.to(device=device, dtype=torch.float32).div(255)[None])
        return backbone.last_block(pixels).cls_token[0].float().cpu()


def _curate(table: pd.DataFrame, results: dict, keep: float) -> None:
    """Per domain: cosine distance of each image's [CLS] to the domain's mean; keep the `keep` nearest fraction."""
    for _, group in table[table["ok"]].groupby("domain"):
        codes = F.normalize(torch.stack([results[i]["cls"] for i in group.index]), dim=1)  # (n, D)
        centre = F.normalize(codes.mean(dim=0, keepdim=True), dim=1)  # (1, D)
        distance = 1 - (codes @ centre.t())[:, 0]  # (n,)
        table.loc[group.index, "distance"] = distance.tolist()
        count = max(2, math.ceil(keep * len(group)))
        dropped = group.index[distance.argsort(stable=True)[count:].tolist()]
        table.loc[dropped, "kept"] = False


def _all_gather(value, world: int) -> list:
    if world == 1:
        return [value]
    gathered = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered
