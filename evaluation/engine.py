"""Compute metrics for decoded pairs in batches on one device. Knows nothing of runs, storage or Ray.

Images in a set of pairs differ in size (except under the published protocol, where all are 224x224), so each model
pass groups the items whose working size is equal and
runs them `batch_size` pairs at a time. For the structure metrics, an output whose size differs from its structure
image's is first resized (bilinear, antialiased) to the structure image's size. A batch that fails is retried pair by pair, so that one bad
pair fails alone.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch

from evaluation import metrics as M
from evaluation.models import MetricModels


@dataclass
class PairImages:
    pair_id: str
    structure: torch.Tensor  # (3, H, W) uint8
    appearance: torch.Tensor  # (3, H', W') uint8
    output: torch.Tensor  # (3, H'', W'') uint8


@dataclass
class PairScores:
    values: dict[str, float] = field(default_factory=dict)  # metric -> value
    errors: dict[str, str] = field(default_factory=dict)  # metric -> why it could not be computed


@torch.no_grad()
def compute_metrics(pairs: list[PairImages], names: list[str], models: MetricModels, device: torch.device | str,
                    batch_size: int = 8) -> dict[str, PairScores]:
    """Compute the metrics `names` (all available in `models`) for every pair -> pair_id -> scores."""
    wanted = set(names)
    scores = {pair.pair_id: PairScores() for pair in pairs}
    run = _Runner(device, batch_size)

    # 1. working copies on the CPU. The published protocol (selfsim, dino_i) sees every image at 512x512 then 224x224
    #    (`M.protocol_image`). The other structure comparisons (selfsim_native, lpips_structure, layout_miou) see the
    #    output resized to the structure image's working size; the other appearance comparisons (cls_mse, dino_i_s16)
    #    see each image at its own backbone input size, as training prepares it, so an output equal to the appearance
    #    image matches it.
    protocol = wanted & {"selfsim", "dino_i"}
    proto_s, proto_o, proto_a = [], [], []
    vit_s, vit_o_s, vit_o, vit_a, small_s, small_o = [], [], [], [], [], []
    for pair in pairs:
        if protocol:
            proto_s.append(M.protocol_image(pair.structure))
            proto_o.append(M.protocol_image(pair.output))
            proto_a.append(M.protocol_image(pair.appearance))
        structure = pair.structure.float()[None] / 255  # (1, 3, H, W)
        output = pair.output.float()[None] / 255
        appearance = pair.appearance.float()[None] / 255
        output_s = M.resize(output, tuple(structure.shape[-2:]))  # the output at the structure image's size
        size = M.vit_size(*structure.shape[-2:])
        vit_s.append(M.resize(structure, size)[0])
        vit_o_s.append(M.resize(output_s, size)[0])
        vit_o.append(M.resize(output, M.vit_size(*output.shape[-2:]))[0])
        vit_a.append(M.resize(appearance, M.vit_size(*appearance.shape[-2:]))[0])
        size = M.small_size(*structure.shape[-2:])
        small_s.append(M.resize(structure, size)[0])
        small_o.append(M.resize(output_s, size)[0])

    # 2. the published protocol on ViT-B/8: one pass over [structure, output] (self-similarity of both, the output's
    #    [CLS]) and one over the appearance image ([CLS])
    if protocol:
        backbone = models.vitb8

        def protocol_pass(batch):  # (B, 2, 3, 224, 224)
            d = M.vit_descriptors(backbone, batch.flatten(0, 1), "selfsim" in wanted)
            selfsim = (M.mse_per_item(d.self_similarity[0::2], d.self_similarity[1::2]) if d.self_similarity is not None
                       else torch.full((batch.shape[0],), float("nan")))
            return selfsim, d.cls_token[1::2]

        structure_output = run([torch.stack(p) for p in zip(proto_s, proto_o)], protocol_pass)
        if "selfsim" in wanted:
            _record(scores, pairs, structure_output, "selfsim", lambda r: r[0])
        if "dino_i" in wanted:
            appearance_cls = run([a[None] for a in proto_a], _embed(backbone))
            _record_pairwise(scores, pairs, structure_output, appearance_cls, "dino_i",
                             lambda o, a: M.cosine_per_item(o[1][None], a[0][None])[0])

    # 3. selfsim_native on ViT-B/8: structure and output at the structure image's aspect, in one pass (which also
    #    gives the output's [CLS] for cls_mse). Every ViT result per item ends with (..., cls_token, final_cls).
    structure_out = None
    if "selfsim_native" in wanted:
        backbone = models.vitb8

        def structure_pass(batch):  # (B, 2, 3, h, w)
            d = M.vit_descriptors(backbone, batch.flatten(0, 1), True)
            similarity = d.self_similarity.unflatten(0, (-1, 2))  # (B, 2, N, N)
            return M.mse_per_item(similarity[:, 0], similarity[:, 1]), d.cls_token[1::2], d.final_cls[1::2]

        structure_out = run([torch.stack(p) for p in zip(vit_s, vit_o_s)], structure_pass)
        _record(scores, pairs, structure_out, "selfsim_native", lambda r: r[0])

    # 4. [CLS] of output and appearance at their own aspect on each backbone these metrics need (one pass each, shared)
    appearance_metrics = {
        "cls_mse": (models.vitb8, lambda o, a: M.mse_per_item(o[-2][None], a[-2][None])[0]),  # before the final norm
        "dino_i_s16": (models.vits16, lambda o, a: M.cosine_per_item(o[-1][None], a[-1][None])[0]),  # after it
    }
    embedded = {}  # id(backbone) -> (outputs, appearances)
    for name, (backbone, compare) in appearance_metrics.items():
        if name not in wanted:
            continue
        if id(backbone) not in embedded:
            reuse = structure_out if backbone is models.vitb8 else None
            embedded[id(backbone)] = (_embed_outputs(run, backbone, vit_o, vit_o_s, reuse),
                                      run([a[None] for a in vit_a], _embed(backbone)))
        _record_pairwise(scores, pairs, *embedded[id(backbone)], name, compare)

    # 5. LPIPS and semantic layout, at the small working size
    small_pairs = [torch.stack(p) for p in zip(small_s, small_o)] if wanted & {"lpips_structure", "layout_miou"} else []
    if "lpips_structure" in wanted:
        out = run(small_pairs, lambda b: (M.lpips_structure(models.lpips, b[:, 0], b[:, 1]),))
        _record(scores, pairs, out, "lpips_structure", lambda r: r[0])
    if "layout_miou" in wanted:
        out = run(small_pairs, lambda b: (M.layout_miou(models.segmenter, b[:, 0], b[:, 1]),))
        _record(scores, pairs, out, "layout_miou", lambda r: r[0])
    return scores


def _embed_outputs(run, backbone, vit_o, vit_o_s, reuse) -> list:
    """[CLS] of each output at its own size; taken from the structure pass where that saw the very same input."""
    reuse = reuse or [None] * len(vit_o)
    results = [r if r is not None and not isinstance(r, Exception) and o.shape == s.shape else None
               for r, o, s in zip(reuse, vit_o, vit_o_s)]
    todo = [i for i, r in enumerate(results) if r is None]
    for i, r in zip(todo, run([vit_o[i][None] for i in todo], _embed(backbone))):
        results[i] = r
    return results


def _embed(backbone):
    def embed(batch):  # (B, 1, 3, h, w) -> [CLS] before and after the final norm
        d = M.vit_descriptors(backbone, batch[:, 0], False)
        return d.cls_token, d.final_cls
    return embed


class _Runner:
    """Runs fn over items grouped by shape, batch_size items at a time; one result (tuple of tensors) or exception
    per item, on the CPU."""

    def __init__(self, device, batch_size: int):
        self.device = device
        self.batch_size = batch_size

    def __call__(self, items: list[torch.Tensor], fn: Callable) -> list:
        results: list = [None] * len(items)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            groups[tuple(item.shape)].append(index)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                self._batch(items, indices[start:start + self.batch_size], fn, results)
        return results

    def _batch(self, items, indices, fn, results):
        try:
            batch = torch.stack([items[i] for i in indices]).to(self.device)
            outputs = [t.detach().to("cpu") for t in fn(batch)]
        except Exception as exc:  # isolate the pair that fails
            if len(indices) == 1:
                results[indices[0]] = exc
                return
            for index in indices:
                self._batch(items, [index], fn, results)
            return
        for row, index in enumerate(indices):
            results[index] = tuple(t[row] for t in outputs)


def _record(scores, pairs, results, name, pick):
    for pair, result in zip(pairs, results):
        if isinstance(result, Exception):
            scores[pair.pair_id].errors[name] = _describe(result)
        else:
            scores[pair.pair_id].values[name] = float(pick(result))


def _record_pairwise(scores, pairs, first, second, name, combine):
    for pair, a, b in zip(pairs, first, second):
        failed = a if isinstance(a, Exception) else b if isinstance(b, Exception) else None
        if failed is not None:
            scores[pair.pair_id].errors[name] = _describe(failed)
        else:
            scores[pair.pair_id].values[name] = float(combine(a, b))


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
