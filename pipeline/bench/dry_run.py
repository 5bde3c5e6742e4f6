"""`splice bench SPEC --dry-run` and `splice run M --out URL --dry-run`: the plan and its estimate, printed; nothing
is written, no lock is taken, no folder is created (plan.py reads; cost.py computes)."""

from __future__ import annotations

import dataclasses
import posixpath

from pipeline.bench import cost
from pipeline.bench.plan import BLOCKED, CONFLICT, DAMAGED, DONE, Plan, RunPlan, inspect_run, plan_bench
from pipeline.bench.spec import BenchSpec, MethodSpec, settings_fingerprint
from pipeline.storage import Storage, redact_url


def bench_dry_run(spec: BenchSpec, *, cluster: dict | None = None, calibrate: bool = False) -> tuple[Plan, object]:
    """The plan of `spec` and its estimate for the cluster it would use (`cluster`: describe_cluster's keywords)."""
    storage = Storage(spec.storage_options)
    plan = plan_bench(spec, storage)
    manifests = {name: d.manifest for name, d in plan.datasets.items() if d.manifest is not None}
    options = {"address": spec.run.get("address"), "gpus_per_task": spec.run.get("gpus_per_task")}
    options.update({"cpus_per_task": spec.run.get("cpus_per_task")})
    options.update({k: v for k, v in (cluster or {}).items() if v is not None})
    found = cost.describe_cluster(**options)
    rates = None
    if calibrate:
        rates = cost.calibrate(plan.runs, storage=storage, manifests=manifests, cpus_per_task=found.cpus_per_task)
    reports = len(plan.datasets) if any(r.state != DONE or r.evaluation.state != DONE for r in plan.runs) else 0
    estimate = cost.estimate(
        plan.runs,
        found,
        storage=storage,
        pack=spec.run.get("pack"),
        calibrated=rates,
        reports=reports,
        concurrency=spec.run.get("concurrency") or 4,
        manifests=manifests,
    )
    return plan, estimate


def plan_lines(plan: Plan) -> list[str]:
    spec = plan.spec
    lines = [f"plan of {spec.name} (spec sha256 {spec.sha256[:12]}) -> {redact_url(spec.out)}", "datasets:"]
    for name, dataset in plan.datasets.items():
        if dataset.state == "failed":
            lines.append(f"  {name}: FAILED: {dataset.error}")
            continue
        what = "manifest unchanged" if dataset.state == DONE else "manifest to write"
        lines.append(f"  {name}: {dataset.pairs} pair(s), {what}: {redact_url(dataset.manifest_url)}")
    lines.append("runs (dataset/method: run | evaluation):")
    for run in plan.runs:
        lines += run_lines(run)
    pending = [r for r in plan.runs if r.state != DONE or r.evaluation.state != DONE]
    lines.append(
        f"report: {'to write' if pending else 'up to date unless the spec changed'}: {redact_url(plan.report_url)}"
    )
    counts = {}
    for run in plan.runs:
        counts[run.state] = counts.get(run.state, 0) + 1
    lines.append("runs: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return lines


def run_lines(run: RunPlan) -> list[str]:
    step = "import" if run.method.imported else "run"
    if run.state == BLOCKED:
        return [f"  {run.label}: blocked ({run.note})"]
    if run.state == CONFLICT:
        return [f"  {run.label}: {step} CONFLICT: {run.note}"]
    if run.state == DONE:
        what = f"{step} done ({run.done} pair(s))"
    else:
        extra = f", {run.damaged} damaged" if run.state == DAMAGED else ""
        extra += f", {run.failed_before} failed before" if run.failed_before else ""
        what = f"{step} {run.state}: {len(run.todo_ids)} of {run.pairs} pair(s){extra}"
    evaluation = run.evaluation
    evaluated = (
        "evaluation done" if evaluation.state == DONE else f"evaluation {evaluation.state}: {evaluation.todo} pair(s)"
    )
    evaluated += f" ({evaluation.note})" if evaluation.note else ""
    lines = [f"  {run.label}: {what} | {evaluated}", f"      {redact_url(run.url)}"]
    if run.note and run.state != CONFLICT:
        lines.append(f"      note: {run.note}")
    if run.backbone_fallback:
        lines.append("      backbone: RANDOM weights (the preset's cannot be had here)")
    for old in run.superseded:
        lines.append(f"      superseded: {old} (other settings; kept, not in the report)")
    return lines


def run_dry_run(manifest_url: str, settings, *, calibrate: bool = False) -> list[str]:
    """`splice run --dry-run`: what the run of `manifest_url` into `settings.out` would do, and its estimate."""
    from manifests.schema import read_manifest
    from pipeline.runs.jobs import select_pairs

    storage = Storage(settings.storage_options)
    manifest = read_manifest(manifest_url, storage)
    selected = {pair.pair_id for pair in select_pairs(manifest, settings.only, settings.limit)}
    name = posixpath.basename(str(settings.out).rstrip("/")) or "run"
    method = MethodSpec(name, settings.method, settings.config, options=dict(settings.method_options))
    run = RunPlan("run", method, settings.out, settings_fingerprint(method), config=settings.config)
    inspect_run(run, manifest, storage)
    run.todo_ids = [p for p in run.todo_ids if p in selected]
    if settings.force:
        run.todo_ids = [p for p in manifest.pair_ids if p in selected]
    run.state = DONE if not run.todo_ids and run.state != CONFLICT else run.state
    run.evaluation = dataclasses.replace(run.evaluation, state=DONE)  # `splice run` evaluates nothing
    found = cost.describe_cluster(
        settings.address, gpus_per_task=settings.gpus_per_task, cpus_per_task=settings.cpus_per_task
    )
    rates = None
    if calibrate:
        rates = cost.calibrate([run], storage=storage, manifests={"run": manifest}, cpus_per_task=found.cpus_per_task)
    estimate = cost.estimate(
        [run], found, storage=storage, pack=settings.pack, calibrated=rates, manifests={"run": manifest}
    )
    lines = [f"dry run of {redact_url(manifest_url)} -> {redact_url(settings.out)} (method {settings.method}):"]
    lines += [line for line in run_lines(run) if "evaluation" not in line or "|" in line]
    return [lines[0], *(line.split(" | ")[0] for line in lines[1:])] + cost.estimate_lines(estimate)
