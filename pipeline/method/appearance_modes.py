"""Appearance modes: k-means over the [CLS] codes of a domain's images (the journal's "appearance modes").

Each centre is an appearance code the net can be fed in place of an appearance image's [CLS]. Plain torch, on the
CPU in float64, so the same codes and seed give the same centres on every machine:
- k-means++ seeding (Arthur and Vassilvitskii, 2007) from a seeded torch.Generator;
- Lloyd iterations until no assignment changes (or `iterations`);
- an empty cluster is re-seeded with the point farthest from its centre;
- `restarts` seedings, the one of lowest inertia (sum of squared distances) kept; ties go to the earliest.
Distances are Euclidean in the raw [CLS] space: the space the net's codes (and their interpolation) live in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Modes:
    centres: torch.Tensor  # (k, D) float32: the appearance codes
    labels: torch.Tensor  # (N,) int64: the mode of each point
    counts: torch.Tensor  # (k,) int64: points per mode
    nearest: torch.Tensor  # (k,) int64: the index of the point closest to each centre
    inertia: float  # sum of squared distances of the points to their centres
    iterations: int  # Lloyd iterations of the kept restart


def kmeans(points: torch.Tensor, k: int, *, seed: int = 0, iterations: int = 300, restarts: int = 4) -> Modes:
    """k-means of (N, D) points into k modes; deterministic for given points, k and seed."""
    if points.dim() != 2 or len(points) == 0:
        raise ValueError(f"k-means needs an (N, D) tensor of N >= 1 points, got shape {tuple(points.shape)}")
    if not 1 <= k <= len(points):
        raise ValueError(f"k must be between 1 and the number of points ({len(points)}), got {k}")
    x = points.detach().to("cpu", torch.float64)  # (N, D)
    generator = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(max(1, restarts)):
        centres = _plus_plus(x, k, generator)
        centres, labels, distances, steps = _lloyd(x, centres, iterations)
        inertia = float(distances.sum())
        if best is None or inertia < best[3]:
            best = (centres, labels, distances, inertia, steps)
    centres, labels, _, inertia, steps = best
    nearest = _squared_distances(x, centres).argmin(dim=0)  # (k,)
    counts = torch.bincount(labels, minlength=k)
    return Modes(
        centres=centres.float(), labels=labels, counts=counts, nearest=nearest, inertia=inertia, iterations=steps
    )


def _plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++: the first centre uniformly, each next one with probability proportional to squared distance."""
    first = int(torch.randint(len(x), (1,), generator=generator))
    centres = [x[first]]
    closest = ((x - x[first]) ** 2).sum(dim=1)  # (N,)
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # every point sits on a centre already (duplicates): any point will do
            index = int(torch.randint(len(x), (1,), generator=generator))
        else:
            index = int(torch.multinomial(closest / total, 1, generator=generator))
        centres.append(x[index])
        closest = torch.minimum(closest, ((x - x[index]) ** 2).sum(dim=1))
    return torch.stack(centres)  # (k, D)


def _lloyd(x: torch.Tensor, centres: torch.Tensor, iterations: int):
    """Lloyd iterations until no assignment changes; returns centres, labels, squared distances, iterations run."""
    labels, runs = None, 0
    while runs < iterations:
        runs += 1
        distances = _squared_distances(x, centres)  # (N, k)
        new_labels = distances.argmin(dim=1)  # (N,), ties to the lowest index
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        centres = _update(x, labels, distances, len(centres))
    distances = _squared_distances(x, centres)  # the final assignment, to the final centres
    labels = distances.argmin(dim=1)
    return centres, labels, distances.gather(1, labels[:, None])[:, 0], runs


def _update(x: torch.Tensor, labels: torch.Tensor, distances: torch.Tensor, k: int) -> torch.Tensor:
    """Each centre the mean of its points; an empty one takes the point farthest from its own centre."""
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, labels, x)  # (k, D)
    counts = torch.bincount(labels, minlength=k)  # (k,)
    centres = sums / counts.clamp(min=1)[:, None].to(x.dtype)
    own = distances.gather(1, labels[:, None])[:, 0].clone()  # (N,) squared distance to own centre
    for empty in torch.nonzero(counts == 0).flatten().tolist():
        far = int(own.argmax())
        centres[empty] = x[far]
        own[far] = -1.0  # not taken twice
    return centres


def _squared_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N, D), (k, D) -> (N, k) squared Euclidean distances, exact enough in float64."""
    return ((x * x).sum(1, keepdim=True) - 2 * x @ centres.T + (centres * centres).sum(1)[None]).clamp(min=0)
