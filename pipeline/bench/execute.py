"""`splice bench SPEC.toml`: the plan, run.

1. manifests: each dataset's builder output written to OUT/manifests/<dataset>.parquet (only where it changed);
2. one chain per (dataset, method): `splice run` (pipeline.runs.fanout.run_manifest) or `splice import`, then
   `splice evaluate`; the chains run in threads (at most `concurrency` at once) over ONE Ray connection made here,
   so their tasks share the cluster and Ray schedules them within its resources. Each step is skipped when the run
   folder says it is complete (plan.py); a chain that fails is recorded and never stops the others;
3. one report per dataset (OUT/report/<dataset>/) and an index over all of them (OUT/report/index.html, tables.md,
   tables.csv, tables.tex), rebuilt only when an evaluation or the spec changed;
4. OUT/bench.json: the spec (text, hash, as parsed), the run URLs, what each step did, what is missing, versions.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from manifests.schema import write_manifest
from pipeline import __version__
from pipeline.bench.plan import BLOCKED, CONFLICT, DONE, TODO, Plan, RunPlan, eval_settings, evaluation_todo, plan_bench
from pipeline.bench.spec import BenchSpec, describe_spec
from pipeline.runs import layout
from pipeline.runs.run_folder import RunFolder
from pipeline.storage import Storage, redact_text, redact_url

log = logging.getLogger(__name__)
DEFAULT_CONCURRENCY = 4  # (dataset, method) chains at once; their Ray tasks queue for the cluster's resources
BENCH_FORMAT = 1


@dataclass
class Outcome:
    step: str  # manifest | run | import | evaluate | report
    label: str  # dataset, or dataset/method
    status: str  # skipped (already complete) | done | incomplete (some pairs failed) | failed
    detail: str = ""

    def line(self) -> str:
        return f"{self.step:<8} {self.label}: {self.status}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class BenchSummary:
    outcomes: list[Outcome]
    index_url: str
    bench_json: str
    seconds: float
    runs: dict[str, str] = field(default_factory=dict)  # dataset/method -> run URL

    @property
    def missing(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in ("failed", "incomplete")]

    @property
    def exit_code(self) -> int:
        return 1 if self.missing else 0

    def worked(self, step: str | None = None) -> list[Outcome]:
        """Steps that did something (not skipped)."""
        return [o for o in self.outcomes if o.status != "skipped" and (step is None or o.step == step)]

    def lines(self) -> list[str]:
        counts: dict[str, dict[str, int]] = {}
        for o in self.outcomes:
            counts.setdefault(o.step, {}).setdefault(o.status, 0)
            counts[o.step][o.status] += 1
        text = "; ".join(
            f"{step}: " + ", ".join(f"{n} {status}" for status, n in sorted(states.items()))
            for step, states in counts.items()
        )
        lines = [f"bench: {text}; {self.seconds:.1f}s", f"report: {redact_url(self.index_url)}"]
        if self.missing:
            lines.append(f"missing ({len(self.missing)}):")
            lines += [f"  {o.line()}" for o in self.missing]
        return lines


def run_bench(
    spec: BenchSpec,
    *,
    address: str | None = None,
    concurrency: int | None = None,
    storage: Storage | None = None,
    break_lock: bool = False,
) -> BenchSummary:
    """`break_lock`: take over the locks of run folders, eval/ folders and reports whose commands died."""
    from pipeline.runs.target import check_target

    started, begun = time.perf_counter(), _now()
    storage = storage or Storage(spec.storage_options)
    check_target(storage, spec.out, what="bench out", create=True)
    address = address or spec.run.get("address")
    plan = plan_bench(spec, storage)
    outcomes = _write_manifests(plan, storage)
    chains = [run for run in plan.runs if run.state != BLOCKED]
    outcomes += [Outcome("run", r.label, "failed", r.note) for r in plan.runs if r.state == BLOCKED]
    evaluation = eval_settings(spec)
    context = _Context(spec, storage, evaluation, address, break_lock)
    started_ray = _connect(chains, address)
    pool = ThreadPoolExecutor(max(1, concurrency or spec.run.get("concurrency") or DEFAULT_CONCURRENCY))
    try:
        for found in pool.map(context.chain, chains):
            outcomes += found
    except BaseException:  # Ctrl-C, SIGTERM: start no other chain; ending Ray's job ends the running ones' tasks
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=False)
        if started_ray:
            import ray

            ray.shutdown()
    previous = _previous(storage, plan.bench_json_url)
    reports, index_url = _reports(plan, storage, previous, outcomes, break_lock)
    summary = BenchSummary(outcomes, index_url, plan.bench_json_url, time.perf_counter() - started)
    summary.runs = {run.label: run.url for run in plan.runs}
    _write_record(plan, storage, summary, reports, begun)
    return summary


def _connect(chains: list[RunPlan], address: str | None) -> bool:
    """One Ray connection for every run of the bench (None needed when every run is complete or imported)."""
    if not any(not run.method.imported and run.state not in (DONE, CONFLICT) for run in chains):
        return False
    from pipeline import plugins
    from pipeline.method.registry import get_method
    from pipeline.runs.ray_session import connect_ray

    methods = {run.method.method for run in chains if not run.method.imported}
    return connect_ray(address, plugins.runtime_env(get_method(m).run for m in methods))


def _write_manifests(plan: Plan, storage: Storage) -> list[Outcome]:
    outcomes = []
    for name, dataset in plan.datasets.items():
        if dataset.state == "failed":
            outcomes.append(Outcome("manifest", name, "failed", dataset.error or ""))
        elif dataset.state == TODO:
            write_manifest(dataset.manifest.frame, dataset.manifest_url, storage)
            outcomes.append(Outcome("manifest", name, "done", f"{dataset.pairs} pair(s)"))
        else:
            outcomes.append(Outcome("manifest", name, "skipped", f"{dataset.pairs} pair(s), unchanged"))
    return outcomes


class _Context:
    """What every chain shares: the spec, the store, the evaluation settings, one lock for cluster evaluations."""

    def __init__(self, spec: BenchSpec, storage: Storage, evaluation, address: str | None, break_lock: bool = False):
        from pipeline.runs.ray_session import address as cluster

        self.spec, self.storage, self.evaluation = spec, storage, evaluation
        self.address, self.break_lock = address, break_lock
        self.eval_address = cluster(address)  # on a cluster, evaluations spread over its actors, one at a time
        self.eval_lock = threading.Lock()

    def chain(self, run: RunPlan) -> list[Outcome]:
        """The run (or import) of one (dataset, method), then its evaluation; a failure is an outcome, never raised."""
        step = "import" if run.method.imported else "run"
        if run.state == CONFLICT:
            return [Outcome(step, run.label, "failed", run.note), Outcome("evaluate", run.label, "failed", "no run")]
        outcomes = []
        try:
            outcomes.append(self._run(run) if run.state != DONE else self._skipped(run, step))
        except Exception as exc:  # one method or dataset failing never stops the others
            log.debug("%s failed", run.label, exc_info=True)
            return [Outcome(step, run.label, "failed", _line(exc)), Outcome("evaluate", run.label, "failed", "no run")]
        try:
            outcomes.append(self._evaluate(run))
        except Exception as exc:
            log.debug("evaluation of %s failed", run.label, exc_info=True)
            outcomes.append(Outcome("evaluate", run.label, "failed", _line(exc)))
        return outcomes

    def _skipped(self, run: RunPlan, step: str) -> Outcome:
        return Outcome(step, run.label, "skipped", f"{run.done} pair(s) done: {redact_url(run.url)}")

    def _run(self, run: RunPlan) -> Outcome:
        dataset = self.spec.datasets[run.dataset]
        manifest_url = (
            dataset.args["url"]
            if dataset.builder == "manifest"
            else layout.join(self.spec.out, "manifests", f"{run.dataset}.parquet")
        )
        if run.method.imported:
            return self._import(run, manifest_url)
        from pipeline.runs.fanout import run_manifest
        from pipeline.runs.jobs import RunSettings

        options = dict(run.method.options)
        if run.method.method == "splicenet":  # as `splice run`: a backbone the spec names must be the checkpoint's
            options["backbone"] = run.config.backbone if "backbone" in run.method.explicit else None
        values = self.spec.run
        settings = RunSettings(
            out=run.url,
            method=run.method.method,
            config=run.config,
            address=self.address,
            backbone_fallback=run.backbone_fallback,
            cpus_per_task=values.get("cpus_per_task", 1.0),
            gpus_per_task=values.get("gpus_per_task"),
            pack=values.get("pack"),
            max_retries=values.get("max_retries", 2),
            compile=values.get("compile", "auto"),
            storage_options=self.spec.storage_options,
            progress=False,
            method_options=options,
            break_lock=self.break_lock,
        )
        summary = run_manifest(manifest_url, settings)
        detail = f"{summary.done} done ({summary.skipped} before), {summary.failed} failed, {summary.pending} pending"
        if summary.storage_error:
            return Outcome("run", run.label, "failed", summary.storage_error)
        return Outcome("run", run.label, "incomplete" if summary.failed or summary.pending else "done", detail)

    def _import(self, run: RunPlan, manifest_url: str) -> Outcome:
        from pipeline.runs.importer import import_outputs

        source = run.method.source
        root = source["root"].replace("{dataset}", run.dataset) if source["root"] else None
        csv = source["csv"].replace("{dataset}", run.dataset) if source["csv"] else None
        summary = import_outputs(
            run.method.name,
            root,
            manifest_url,
            run.url,
            storage=self.storage,
            pattern=source["pattern"],
            csv=csv,
            force=RunFolder(self.storage, run.url).record() is not None,  # a re-import of a changed dataset
            follow_symlinks=source["follow_symlinks"],
            break_lock=self.break_lock,
        )
        detail = f"{summary.imported} imported, {summary.missing} missing, {summary.failed} unreadable"
        return Outcome("import", run.label, "incomplete" if summary.missing or summary.failed else "done", detail)

    def _evaluate(self, run: RunPlan) -> Outcome:
        from evaluation.evaluate import evaluate_run
        from evaluation.models import best_device

        folder = RunFolder(self.storage, run.url)
        todo, unrecorded = evaluation_todo(folder, self.evaluation)
        if not todo and not unrecorded:
            return Outcome("evaluate", run.label, "skipped", "up to date")
        device = self.spec.evaluation.get("device") or best_device()
        lock = self.eval_lock if self.eval_address else _NoLock()
        with lock:
            summary = evaluate_run(
                run.url,
                self.evaluation,
                storage=self.storage,
                device=device,
                address=self.eval_address,
                progress=False,
                break_lock=self.break_lock,
            )
        errors = summary.statuses.get("error", 0)
        detail = f"{summary.computed} pair(s) evaluated, {summary.up_to_date} up to date" + (
            f", {errors} with errors" if errors else ""
        )
        return Outcome("evaluate", run.label, "incomplete" if errors else "done", detail)


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- reports ------------------------------------------------------------------------------------------------------


def _reports(
    plan: Plan, storage: Storage, previous: dict, outcomes: list[Outcome], break_lock: bool = False
) -> tuple[dict, str]:
    """One report per dataset over its evaluated runs, then the index; each rebuilt only when its inputs changed."""
    from evaluation.report.build import build_report
    from pipeline.bench.index import write_index

    spec, reports = plan.spec, {}
    for dataset in plan.datasets:
        runs = [r for r in plan.runs if r.dataset == dataset and RunFolder(storage, r.url).evaluation()]
        url = layout.join(plan.report_url, dataset)
        if not runs:
            outcomes.append(Outcome("report", dataset, "failed", "no evaluated run"))
            continue
        names = [r.method.name for r in runs]
        reference = spec.reference if spec.reference in names else None
        published = [p for p in spec.published if p.dataset in (None, dataset)]
        inputs = _report_inputs(storage, runs, spec, reference)
        reports[dataset] = {"url": url, "inputs": inputs, "methods": names}
        old = (previous.get("reports") or {}).get(dataset) or {}
        if old.get("inputs") == inputs and storage.exists(layout.join(url, "report.html")):
            outcomes.append(Outcome("report", dataset, "skipped", "unchanged"))
            continue
        group_by = [c for c in spec.group_by if c != "dataset"]
        try:
            summary = build_report(
                [r.url for r in runs],
                url,
                reference=reference,
                group_by=group_by,
                storage=storage,
                pairs=spec.pairs,
                labels={r.url: r.method.name for r in runs},
                published=published,
                break_lock=break_lock,
            )
        except Exception as exc:
            outcomes.append(Outcome("report", dataset, "failed", _line(exc)))
            reports.pop(dataset)
            continue
        note = "" if reference or not spec.reference else f"; reference {spec.reference} has no evaluated run here"
        outcomes.append(Outcome("report", dataset, "done", f"{len(runs)} method(s), {summary.pairs} pairs{note}"))
    index = layout.join(plan.report_url, "index.html")
    if reports and any(o.step == "report" and o.status == "done" for o in outcomes) or not storage.exists(index):
        write_index(storage, plan, reports)
    return reports, index


def _report_inputs(storage: Storage, runs: list[RunPlan], spec: BenchSpec, reference: str | None) -> str:
    parts = [spec.sha256, reference or ""]
    for run in runs:
        for name in (layout.METRICS, layout.EVALUATION_JSON):
            parts.append(f"{run.url}:{_stamp(storage, layout.join(run.url, layout.EVAL, name))}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _stamp(storage: Storage, url: str) -> str:
    try:
        fs, path = storage.fs(url)
        fs.invalidate_cache(path)
        info = fs.info(path)
    except (FileNotFoundError, OSError):
        return "none"
    version = next((info[k] for k in ("ETag", "etag", "mtime", "LastModified", "updated") if info.get(k)), "")
    return f"{info.get('size')}:{version}"


# --- bench.json ---------------------------------------------------------------------------------------------------


def _previous(storage: Storage, url: str) -> dict:
    try:
        value = storage.read_json(url)
    except (FileNotFoundError, ValueError, OSError):
        return {}
    return value if isinstance(value, dict) else {}


def versions() -> dict:
    from pipeline.runs.rerun import _git_commit

    found = {"splice_pipeline": __version__, "git_commit": _git_commit(), "python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "ray", "pandas", "fsspec"):
        try:
            found[name] = __import__(name).__version__
        except Exception:  # not installed here: nothing to record
            found[name] = None
    return found


def _write_record(plan: Plan, storage: Storage, summary: BenchSummary, reports: dict, begun: str) -> None:
    spec = plan.spec
    by_label: dict[str, list[dict]] = {}
    for outcome in summary.outcomes:
        by_label.setdefault(outcome.label, []).append(asdict(outcome))
    record = {
        "format": BENCH_FORMAT,
        "spec": {"path": spec.path, "sha256": spec.sha256, "text": _masked(spec), "parsed": describe_spec(spec)},
        "started_at": begun,
        "finished_at": _now(),
        "seconds": round(summary.seconds, 1),
        "versions": versions(),
        "datasets": {
            name: {"manifest": redact_url(d.manifest_url), "pairs": d.pairs, "outcomes": by_label.get(name, [])}
            for name, d in plan.datasets.items()
        },
        "runs": [
            {
                "dataset": run.dataset,
                "method": run.method.name,
                "url": redact_url(run.url),
                "fingerprint": run.fingerprint,
                "superseded": run.superseded,
                "outcomes": by_label.get(run.label, []),
            }
            for run in plan.runs
        ],
        "reports": reports,
        "index": redact_url(summary.index_url),
        "missing": [o.line() for o in summary.missing],
        "exit_code": summary.exit_code,
    }
    buffer = io.BytesIO(json.dumps(record, indent=2, default=str).encode())
    storage.write_bytes(plan.bench_json_url, buffer.getvalue())


def _masked(spec: BenchSpec) -> str:
    """The spec's text without the values of its storage options (credentials never reach bench.json)."""
    text = spec.text
    for value in spec.storage_options.values():
        if isinstance(value, str) and len(value) >= 3:
            text = text.replace(value, "***")
    return redact_text(text)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _line(exc: BaseException) -> str:
    text = redact_text(str(exc) or type(exc).__name__)
    return text.splitlines()[0][:400] if text.strip() else type(exc).__name__
