"""The report's words: warnings collected once (each distinct cause once, with the runs it affects) and metric
descriptions that name the models the values were actually computed with."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from evaluation.registry import describe, metric_columns
from pipeline.method.weights import RANDOM_WEIGHTS_ID
from pipeline.runs.run_folder import PairStatus

DINO_NAME = re.compile(r"DINO ViT-[A-Za-z]+/\d+")
DINO_ROLES = ("vitb8", "vits16")


@dataclass
class Notice:
    cause: str  # one line
    runs: list[str] = field(default_factory=list)  # labels of the runs it affects (empty: the comparison as a whole)
    detail: str = ""  # what to do, the full reason


class Warnings:
    """Collects warnings; the same cause from several runs becomes one warning listing them."""

    def __init__(self):
        self.items: dict[str, Notice] = {}

    def add(self, cause: str, run: str | None = None, detail: str = "") -> None:
        item = self.items.setdefault(cause, Notice(cause, detail=detail))
        if run is not None and run not in item.runs:
            item.runs.append(run)

    def __iter__(self):
        return iter(self.items.values())

    def __len__(self) -> int:
        return len(self.items)


def collect_warnings(runs, table, records, store) -> Warnings:
    found = Warnings()
    for text in table.warnings():  # mixed models, different pairs: about the comparison as a whole
        found.add(text)
    for run in runs:
        info = run.run.info
        if str(info.get("backbone") or "").startswith("random:") or RANDOM_WEIGHTS_ID in (
            info.get("backbone_weights_ids") or []
        ):
            found.add("outputs made with a RANDOM backbone: they are meaningless (a smoke test)", run.label)
        randoms = [
            m
            for m in metric_columns(run.metrics.columns)
            if any(i.endswith(f"@{RANDOM_WEIGHTS_ID}") for i in _model_ids(run.metrics, m))
        ]
        if randoms:
            found.add(
                "metrics computed with RANDOM weights: their values are for smoke tests only, not results",
                f"{run.label} ({', '.join(randoms)})",
            )
        for metric, reason in (run.evaluation.get("skipped") or {}).items():
            found.add(f"{metric} not computed: {first_clause(reason)}", run.label, detail=reason)
        counts = Counter(str(s) for s in run.metrics["status"] if s != PairStatus.DONE)
        if counts:
            states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            found.add(
                "pairs without a value (pending, failed, missing, damaged or unreadable): they are in no mean; "
                "filter the per-pair table by status to see why",
                f"{run.label} ({states})",
            )
    if store.errors:
        examples = "; ".join(list(store.errors.values())[:3])
        found.add(f"{len(store.errors)} image(s) could not be read and are shown as missing", detail=examples)
    return found


def metric_descriptions(runs, metrics: list[str]) -> list[tuple[str, str, str]]:
    """(metric, description, models) per metric: the summary names the model actually used where all runs agree."""
    described = []
    for metric in metrics:
        info = describe(metric)
        used = {}
        for run in runs:
            for model_id in _model_ids(run.metrics, metric):
                used.setdefault(model_id, []).append(run.label)
        summary = info.summary
        if len(used) == 1 and info.model in DINO_ROLES:
            summary = DINO_NAME.sub(model_name(next(iter(used))), summary)
        models = (
            "; ".join(f"{model_name(i)} [{i}] ({', '.join(labels)})" for i, labels in used.items()) or "not computed"
        )
        described.append(
            (metric, f"{summary} ({info.aspect}, {info.better} is better, version {info.version})", models)
        )
    return described


def model_name(model_id: str) -> str:
    """'dino_vitb8@x' -> 'DINO ViT-B/8'; 'random:vit_small_patch16_224@random' -> 'vit_small_patch16_224 (random
    weights)'; 'file:/w/x.pth@sha256:..' -> 'weights file x.pth'; anything else: its spec."""
    spec, _, weights = model_id.partition("@")
    match = re.fullmatch(r"dino_vit([a-z])(\d+)", spec)
    if match:
        name = f"DINO ViT-{match.group(1).upper()}/{match.group(2)}"
    elif spec.startswith("random:"):
        return f"{spec.removeprefix('random:')} (random weights)"
    elif spec.startswith("file:"):
        name = f"weights file {spec.rsplit('/', 1)[-1]}"
    else:
        name = spec
    return f"{name} (random weights)" if weights == RANDOM_WEIGHTS_ID else name


def first_clause(reason: str) -> str:
    """The cause without the instructions: 'pretrained weights ... are not in the torch hub cache ...'."""
    cause = reason.split(". ")[0]
    return cause.split(": ", 1)[-1] if ": " in cause else cause


def _model_ids(frame: pd.DataFrame, metric: str) -> list[str]:
    column = f"{metric}__model"
    return sorted(frame[column].dropna().astype(str).unique()) if column in frame.columns else []
