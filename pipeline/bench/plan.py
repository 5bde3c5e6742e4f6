"""The plan of `splice bench`: what the spec asks for, against what is already stored. Read only: it takes no lock,
creates no folder and writes no manifest, so `--dry-run` and the real run see the same plan.

Where things go under the spec's `out`:

    OUT/manifests/<dataset>.parquet           the manifest a builder made (a `manifest` dataset is used where it is)
    OUT/runs/<dataset>/<method>-<fingerprint> one run folder per (dataset, method, settings fingerprint)
    OUT/report/                               the report over everything (index.html, tables.*, one folder per dataset)
    OUT/bench.json                            the spec, its hash, the run URLs and the versions of the last bench

What is done is what the run folders say (pipeline/runs: run.json's settings, inputs.parquet's fingerprints,
`_SUCCESS` checked against the files, eval/metrics.parquet with each metric's version and model): a run is done
when every pair of its dataset is; an evaluation when every pair with an output has the asked metrics, of today's
version and model spec, computed on that output.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import pandas as pd

from manifests.schema import Manifest, ManifestError, read_manifest, validate_frame
from pipeline.bench.spec import BenchSpec, DatasetSpec, MethodSpec, settings_fingerprint
from pipeline.errors import SpliceError
from pipeline.method.config import TrainConfig
from pipeline.runs import layout
from pipeline.runs.run_folder import PairStatus, RunFolder, RunFolderError
from pipeline.storage import Storage, redact_text, redact_url

log = logging.getLogger(__name__)

DONE, TODO, DAMAGED, CONFLICT, BLOCKED = "done", "to do", "damaged", "conflict", "blocked"


@dataclass
class DatasetPlan:
    spec: DatasetSpec
    manifest_url: str
    manifest: Manifest | None = None  # validated (None: it could not be built or read)
    state: str = DONE  # done (stored, unchanged) | to do (to write) | failed
    error: str | None = None

    @property
    def pairs(self) -> int:
        return len(self.manifest) if self.manifest is not None else 0


@dataclass
class EvalPlan:
    state: str = TODO  # done | to do | blocked
    todo: int = 0  # pairs with an output whose metrics are missing or stale (after the run: every new output)
    note: str = ""


@dataclass
class RunPlan:
    dataset: str
    method: MethodSpec
    url: str
    fingerprint: str
    config: TrainConfig | None = None  # resolved, after the backbone fallback (None: imports)
    backbone_fallback: str | None = None
    state: str = TODO  # done | to do | damaged (some pairs redone) | conflict (the run would refuse) | blocked
    pairs: int = 0
    done: int = 0
    damaged: int = 0
    failed_before: int = 0  # failed in the last invocation: attempted again
    todo_ids: list[str] = field(default_factory=list)
    note: str = ""
    superseded: list[str] = field(default_factory=list)  # this method's folders of other settings (kept)
    evaluation: EvalPlan = field(default_factory=EvalPlan)

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.method.name}"


@dataclass
class Plan:
    spec: BenchSpec
    datasets: dict[str, DatasetPlan]
    runs: list[RunPlan]
    report_url: str
    bench_json_url: str


def plan_bench(spec: BenchSpec, storage: Storage | None = None) -> Plan:
    storage = storage or Storage(spec.storage_options)
    datasets = {name: plan_dataset(spec, dataset, storage) for name, dataset in spec.datasets.items()}
    settings = eval_settings(spec)
    runs = []
    for name, dataset in datasets.items():
        existing = _run_folders(storage, layout.join(spec.out, "runs", name)) if dataset.manifest is not None else []
        for method in spec.methods_for(name):
            runs.append(plan_method(spec, dataset, method, storage, settings, existing))
    return Plan(spec, datasets, runs, layout.join(spec.out, "report"), layout.join(spec.out, "bench.json"))


# --- datasets ---------------------------------------------------------------------------------------------------


def build_frame(dataset: DatasetSpec, storage: Storage) -> pd.DataFrame:
    """The dataset's manifest frame from its builder (validated, image URIs absolute, labelled with its name)."""
    from manifests import builders

    args = dataset.args
    cross = args.get("cross_domain")
    frame = builders.build(
        dataset.builder,
        args.get("root") or args.get("structures") or args.get("path"),
        appearances=args.get("appearances"),
        pairs=args.get("pairs"),
        domains=args.get("domains"),
        split=args.get("split", "train"),
        seed=args.get("seed", 0),
        cross_domain="all" if cross is True else cross or None,
        direction=args.get("direction", "AtoB"),
        storage=storage,
    )
    frame = validate_frame(frame, f"dataset {dataset.name}")
    frame.attrs = {}
    return frame.assign(dataset=dataset.name).reset_index(drop=True)


def plan_dataset(spec: BenchSpec, dataset: DatasetSpec, storage: Storage) -> DatasetPlan:
    if dataset.builder == "manifest":
        plan = DatasetPlan(dataset, dataset.args["url"])
        try:
            plan.manifest = read_manifest(plan.manifest_url, storage)
        except (SpliceError, OSError) as exc:
            plan.state, plan.error = "failed", _line(exc)
        return plan
    plan = DatasetPlan(dataset, layout.join(spec.out, "manifests", f"{dataset.name}.parquet"))
    try:
        frame = build_frame(dataset, storage)
    except (SpliceError, OSError, ValueError) as exc:
        plan.state, plan.error = "failed", _line(exc)
        return plan
    plan.manifest = Manifest(plan.manifest_url, frame)
    try:
        stored = read_manifest(plan.manifest_url, storage).frame
        same = list(stored.columns) == list(frame.columns) and stored.astype(str).equals(frame.astype(str))
    except (ManifestError, OSError):
        same = False
    plan.state = DONE if same else TODO
    return plan


# --- runs -------------------------------------------------------------------------------------------------------


def run_url(spec: BenchSpec, dataset: str, method: MethodSpec, fingerprint: str) -> str:
    return layout.join(spec.out, "runs", dataset, f"{method.name}-{fingerprint}")


def resolved_config(method: MethodSpec) -> tuple[TrainConfig | None, str | None]:
    """The method's training settings as `splice run` would use them: a preset's DINO backbone whose weights cannot be
    had becomes its random twin (said loudly once); a backbone the spec names is kept."""
    if method.imported:
        return None, None
    from pipeline.method.registry import get_method
    from pipeline.method.weights import announce_fallback, resolve_backbone

    found = get_method(method.method)
    if not found.uses_backbone or found.batched is not None:
        return method.config, None
    backbone, fallback = resolve_backbone(method.config.backbone, explicit="backbone" in method.explicit)
    if fallback:
        announce_fallback(fallback)
        return method.config.replace(backbone=backbone), fallback
    return method.config, None


def plan_method(
    spec: BenchSpec, dataset: DatasetPlan, method: MethodSpec, storage: Storage, settings, existing: list[str]
) -> RunPlan:
    config, fallback = resolved_config(method)
    fingerprint = settings_fingerprint(method, config)
    plan = RunPlan(dataset.spec.name, method, run_url(spec, dataset.spec.name, method, fingerprint), fingerprint)
    plan.config, plan.backbone_fallback = config, fallback
    mine = f"{method.name}-{fingerprint}"
    plan.superseded = sorted(f for f in existing if f.rsplit("-", 1)[0] == method.name and f != mine)
    if dataset.manifest is None:
        plan.state, plan.note = BLOCKED, f"dataset {dataset.spec.name} failed"
        plan.evaluation = EvalPlan(BLOCKED)
        return plan
    try:
        inspect_run(plan, dataset.manifest, storage)
        plan.evaluation = plan_evaluation(RunFolder(storage, plan.url), plan, settings)
    except Exception as exc:  # the store cannot be read, or the folder is not what this run would make
        plan.state, plan.note = CONFLICT, _line(exc)
        plan.evaluation = EvalPlan(BLOCKED)
    return plan


def inspect_run(plan: RunPlan, manifest: Manifest, storage: Storage) -> None:
    """Fill `plan` from the run folder: what `splice run` (or `splice import`) would find and do, without doing it."""
    from pipeline.runs import rerun

    folder = RunFolder(storage, plan.url)
    plan.pairs = len(manifest)
    record = folder.record()
    holder = folder.lock_holder()
    if holder:
        plan.note = f"locked by {holder.get('command', 'a command')} on {holder.get('host')} (pid {holder.get('pid')})"
    wanted = manifest.pair_ids
    if record is None:
        plan.todo_ids = list(wanted)
        plan.state = TODO
        return
    if plan.method.imported:
        found = folder.scan()
        imported = record.get("imported") and record.get("method") == plan.method.name
        recorded = set(folder.pair_ids()) if folder.has_manifest() else set()
        if not imported:
            plan.state = CONFLICT
            plan.note = f"{redact_url(plan.url)} holds a run of {record.get('method')!r}, not this import"
        elif set(wanted) - recorded or found.damaged:
            plan.state, plan.todo_ids = TODO, list(wanted)  # imported again as a whole (--force)
            plan.damaged = len(found.damaged)
        else:
            plan.state = DONE
        plan.done = len(found.done & set(wanted))
        return
    from pipeline.method.registry import get_method

    method = get_method(plan.method.method)
    seen = rerun.compare_run(  # what `splice run` compares, read only; pairs without outputs need no fingerprint
        folder,
        manifest,
        set(),
        verify=False,
        settings_check=lambda existing: rerun.settings_mismatch(existing, plan.url, method, plan.config),
    )
    if seen.mismatch:
        plan.state, plan.note = CONFLICT, seen.mismatch
        return
    changed_done = sorted(seen.changed_done)
    if changed_done:
        plan.state = CONFLICT
        plan.note = (
            f"{len(changed_done)} done pair(s) were made from other inputs than the dataset gives them now (e.g. "
            f"{changed_done[0]}: {seen.changed[changed_done[0]]}): the run refuses; remove the folder to redo them"
        )
        return
    found = seen.found
    results = folder.results(wanted)
    failed = set() if results is None else set(results.loc[results["status"] == PairStatus.FAILED, "pair_id"])
    plan.done = len(found.done & set(wanted))
    plan.damaged = len(set(found.damaged) & set(wanted))
    plan.failed_before = len(failed - found.done)
    plan.todo_ids = [p for p in wanted if p not in found.done]
    plan.state = DONE if not plan.todo_ids else DAMAGED if plan.damaged else TODO


# --- evaluations ------------------------------------------------------------------------------------------------


def eval_settings(spec: BenchSpec):
    from evaluation.metrics import DEFAULT_METRICS
    from evaluation.models import EvalSettings
    from evaluation.segmenter import DEFAULT_SEGMENTER

    values = spec.evaluation
    return EvalSettings(
        metrics=spec.metrics or DEFAULT_METRICS,
        explicit=bool(spec.metrics),
        metric_backbone=values.get("metric_backbone"),
        lpips_weights=values.get("lpips_weights", "pretrained"),
        segmenter=values.get("segmenter") or DEFAULT_SEGMENTER,
        segmenter_weights=values.get("segmenter_weights"),
        batch_size=values.get("batch_size", 8),
    )


def plan_evaluation(folder: RunFolder, run: RunPlan, settings) -> EvalPlan:
    """What `splice evaluate` would compute after the run: every output the run makes, and the outputs it has whose
    stored metrics are missing or stale (another output, version or model spec); pairs without an output only need
    their status recorded. `splice evaluate` itself decides precisely (it also checks the weights' ids)."""
    if run.state == CONFLICT:
        return EvalPlan(BLOCKED, 0, "the run would refuse")
    if run.state != DONE:
        expected = run.pairs if run.method.imported else run.done + len(run.todo_ids)
        return EvalPlan(TODO, expected, "after the run")
    todo, unrecorded = evaluation_todo(folder, settings)
    if todo or unrecorded:
        note = f"{unrecorded} pair(s) without an output to record" if unrecorded and not todo else ""
        return EvalPlan(TODO, todo, note)
    return EvalPlan(DONE)


def evaluation_todo(folder: RunFolder, settings) -> tuple[int, int]:
    """(pairs with an output to (re)compute, pairs without an output whose status is not recorded yet)."""
    from evaluation.registry import describe, get_metric

    listing = folder.listing()  # the run folder's word on which pairs are done (as `splice evaluate` reads it)
    with_output = {p for p in listing.files if listing.is_done(p)}
    try:
        frame = folder.metrics()
        evaluation = folder.evaluation()
    except RunFolderError:
        frame, evaluation = None, {}
    results = folder.results()
    expected = {} if results is None else dict(zip(results["pair_id"], results["status"]))
    pair_ids = folder.pair_ids()
    if frame is None:
        return len(with_output & set(pair_ids)), len(set(pair_ids) - with_output)
    rows = frame.drop_duplicates("pair_id", keep="last").set_index("pair_id").to_dict("index")
    skipped = set(evaluation.get("skipped") or {}) if not settings.explicit else set()
    prefixes = _model_prefixes(settings)
    wanted = [get_metric(m).name for m in settings.metrics]
    todo = unrecorded = 0
    for pair_id in pair_ids:
        row = rows.get(pair_id)
        if pair_id not in with_output:
            status = PairStatus.of(expected.get(pair_id)).value
            unrecorded += row is None or row.get("status") != status
            continue
        if row is None or row.get("output_stamp") != listing.output_stamp(pair_id):
            todo += 1
            continue
        for metric in wanted:
            value, model = row.get(metric), str(row.get(f"{metric}__model") or "")
            if metric in skipped and metric not in frame.columns:
                continue
            stale = (
                value is None
                or (isinstance(value, float) and math.isnan(value))
                or row.get(f"{metric}__version") != describe(metric).version
                or not model.startswith(prefixes.get(metric, ""))
            )
            if stale:
                todo += 1
                break
    return todo, unrecorded


def _model_prefixes(settings) -> dict[str, str]:
    """metric -> the start of the model id it will be computed with (the DINO metrics' backbone spec)."""
    from evaluation.models import DINO_ROLES
    from evaluation.registry import get_metric

    specs = settings.backbone_specs()
    prefixes = {}
    for name in settings.metrics:
        metric = get_metric(name)
        if metric.model in DINO_ROLES:
            prefixes[metric.name] = f"{specs[metric.model]}@"
    return prefixes


# --- helpers ----------------------------------------------------------------------------------------------------


def _run_folders(storage: Storage, url: str) -> list[str]:
    """Names of the folders under a dataset's runs folder (one listing; none yet: [])."""
    try:
        fs, path = storage.fs(url)
        fs.invalidate_cache(path)
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False))
    except Exception:  # none yet, or the store cannot be listed (the runs' own reads say why)
        return []


def _line(exc: BaseException) -> str:
    text = redact_text(str(exc) or type(exc).__name__)
    return text.splitlines()[0][:400] if text else type(exc).__name__
