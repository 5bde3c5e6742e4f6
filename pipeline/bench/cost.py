"""What a plan costs before it runs: device-hours and wall time for the cluster it would use, as a range.

The model: a training run's work is its pairs to do x their steps x seconds per pair-step, plus per pair (read,
write) and per worker (imports, backbone) overheads; packs follow `splice run`'s rule (pipeline/runs/packs.py: one
pair per task on CPUs, `--pack auto` on GPUs from the device's memory and the images' sizes). Methods that do not
train (copy, colour transfer, imports) cost their per-pair overhead only. Seconds per pair-step come from the table
kept beside this file (step_costs.toml: measured rows name where they were measured, the rest are marked as
estimates), or from `calibrate`: a few steps of the plan's own pack shapes on this machine's device. Wall time spreads
the tasks over the cluster's task slots (GPUs / GPUs per task, or CPUs / CPUs per task); evaluations and reports
follow. Every figure is [low, high].
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.runs.packs import auto_pack_size, downscaled, probe_sizes
from pipeline.storage import Storage

log = logging.getLogger(__name__)
TABLE = Path(__file__).with_name("step_costs.toml")
SIZE_SAMPLE = 16  # image headers read per run to know its images' sizes
CALIBRATION_NOISE = (0.85, 1.35)  # a few steps on a shared machine: the range around the measured rate


@dataclass(frozen=True)
class Cluster:
    device: str  # "cpu", or the GPU's kind in lower case ("h100", "a100", ...)
    gpus: float
    cpus: float
    gpus_per_task: float
    cpus_per_task: float
    source: str  # where these figures come from
    load: float | None = None  # this machine's load average, for an embedded Ray here (None: a cluster)

    @property
    def contention(self) -> float:
        """How many times over this machine's CPUs are asked for now (1: not over): a shared machine's tasks get
        that much less of a CPU, so the estimate's high end is scaled by it."""
        if self.load is None or self.gpus:
            return 1.0
        return max(1.0, min(8.0, self.load / max(self.cpus, 1.0)))

    @property
    def slots(self) -> int:
        if self.gpus_per_task:
            return max(1, int(self.gpus / self.gpus_per_task))
        return max(1, int(self.cpus / max(self.cpus_per_task, 1e-3)))

    def line(self) -> str:
        what = f"{self.gpus:g} GPU(s) ({self.device})" if self.gpus else f"{self.cpus:g} CPU(s), no GPU"
        per = f"{self.gpus_per_task:g} GPU" if self.gpus_per_task else f"{self.cpus_per_task:g} CPU"
        return f"{what}, {per} per task: {self.slots} task(s) at once [{self.source}]"


@dataclass(frozen=True)
class Rate:
    low: float
    high: float
    source: str
    measured: bool


@dataclass
class RunCost:
    label: str
    pairs: int  # to do
    packs: int
    pack_size: int
    pair_steps: int
    rate: Rate | None  # seconds per pair-step (training methods)
    task_s: tuple[float, float] = (0.0, 0.0)  # on the workers, all packs together
    longest_s: tuple[float, float] = (0.0, 0.0)  # the longest pack
    driver_s: tuple[float, float] = (0.0, 0.0)
    eval_s: tuple[float, float] = (0.0, 0.0)
    notes: list[str] = field(default_factory=list)


@dataclass
class Estimate:
    cluster: Cluster
    runs: list[RunCost]
    device_hours: tuple[float, float]  # GPU-hours (CPU-hours on a CPU-only cluster)
    wall_s: tuple[float, float]
    notes: list[str] = field(default_factory=list)

    @property
    def unit(self) -> str:
        return "GPU-hours" if self.cluster.gpus_per_task else "CPU-hours"


def load_table(path: Path = TABLE) -> dict:
    import tomllib

    with open(path, "rb") as stream:
        return tomllib.load(stream)


# --- the cluster -------------------------------------------------------------------------------------------------


def describe_cluster(
    address: str | None = None,
    *,
    gpus: float | None = None,
    cpus: float | None = None,
    device: str | None = None,
    gpus_per_task: float | None = None,
    cpus_per_task: float | None = None,
) -> Cluster:
    """The cluster a bench would use: as given (`gpus`, `cpus`, `device`), else the Ray cluster at `address` /
    RAY_ADDRESS (connecting reads its resources and starts nothing), else this machine (an embedded Ray)."""
    from pipeline.runs import ray_session

    cpus_per_task = 1.0 if cpus_per_task is None else cpus_per_task
    target, load = ray_session.address(address), None
    if gpus is not None or cpus is not None or device is not None:
        found_gpus, found_cpus, kind, source = gpus or 0.0, cpus or float(os.cpu_count() or 1), device, "as given"
    elif target:
        import ray

        ray_session.connect_ray(target)
        resources = ray.cluster_resources()
        found_gpus, found_cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        kinds = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
        kind, source = (kinds[0] if kinds else None), f"the Ray cluster at {target}"
    else:
        import torch

        found_gpus = float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0
        found_cpus = float(os.cpu_count() or 1)
        kind = torch.cuda.get_device_name(0) if found_gpus else None
        source = "this machine (embedded Ray)"
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    kind = gpu_kind(kind) if found_gpus else "cpu"
    per_task = gpus_per_task if gpus_per_task is not None else (1.0 if found_gpus else 0.0)
    return Cluster(kind, found_gpus, found_cpus, per_task, cpus_per_task, source, load)


def gpu_kind(name: str | None) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; Ray's 'H100' -> 'h100'; unknown -> 'gpu'."""
    match = re.search(r"\b([A-Z]{1,2}\d{1,4}[A-Z]?)\b", (name or "").upper())
    return match.group(1).lower() if match else "gpu"


# --- seconds per pair-step ---------------------------------------------------------------------------------------


def backbone_family(spec: str) -> str:
    """'dino_vitb8' -> 'vit_base_patch8'; 'random:vit_tiny_patch16_224' -> 'vit_tiny_patch16'."""
    from pipeline.method.backbone import DINO_BACKBONES

    name = DINO_BACKBONES.get(spec, spec.split(":", 1)[-1])
    match = re.search(r"vit_[a-z]+_patch\d+", str(name))
    return match.group(0) if match else "vit_base_patch8"


def table_rate(table: dict, device: str, family: str, side: int, pack: int) -> Rate:
    rows = [row for row in table.get("train", []) if row["device"] == device]
    widen, notes = 1.0, []
    if not rows and device != "cpu":
        rows = [row for row in table.get("train", []) if row["device"] == "h100"]
        widen, notes = 3.0, [f"no row for {device}: H100 rows, high end x3"]
    if not rows:
        return Rate(0.05, 30.0, f"no row for device {device}: a wide guess", False)
    same = [row for row in rows if row["backbone"] == family]
    if not same:
        same, notes = rows, [*notes, f"no row for {family}: nearest backbone's, range x0.5-x4"]
        low_factor, widen = 0.5, widen * 4
    else:
        low_factor = 1.0
    row = min(same, key=lambda r: (abs(math.log(max(side, 1) / r["side"])), abs(math.log(pack / r.get("pack", 1)))))
    ratio = max(side, 1) / row["side"]
    low, high = row["s_per_pair_step"]
    if ratio > 1.5 or ratio < 1 / 1.5:  # another image size: the generator's share scales with the pixels
        notes.append(f"nearest measured side {row['side']} px for {side} px")
        low, high = low * min(1.0, ratio), high * max(1.0, ratio**2)
    source = row.get("source", "step_costs.toml") + ("" if not notes else f" ({'; '.join(notes)})")
    return Rate(low * low_factor, high * widen, source, bool(row.get("measured")) and not notes)


# --- a plan's cost -----------------------------------------------------------------------------------------------


def estimate(
    runs,
    cluster: Cluster,
    *,
    storage: Storage,
    pack: int | None = None,
    calibrated: dict | None = None,
    reports: int = 0,
    concurrency: int = 4,
    manifests: dict | None = None,
    table: dict | None = None,
) -> Estimate:
    """The cost of the plan's runs (pipeline.bench.plan.RunPlan) still to do, and of their evaluations and reports.
    `manifests`: dataset -> Manifest (per-pair steps); `calibrated`: (family, side, K) -> Rate from `calibrate`."""
    table = table or load_table()
    over = table["overhead"]["gpu" if cluster.gpus_per_task else "cpu"]
    costs = [
        run_cost(run, cluster, over, table, storage, pack, calibrated or {}, (manifests or {}).get(run.dataset))
        for run in runs
    ]
    task = _sum(c.task_s for c in costs)
    longest = tuple(max([c.longest_s[i] for c in costs] or [0.0]) for i in (0, 1))
    driver = _sum(c.driver_s for c in costs)
    evals = _sum(c.eval_s for c in costs)
    started = any(c.pairs for c in costs) and not cluster.source.startswith("the Ray cluster")
    ray_start = over["ray_start_s"] if started else (0.0, 0.0)
    report = tuple(reports * v for v in over["report_s"])
    per_task = cluster.gpus_per_task or cluster.cpus_per_task
    hours = tuple(task[i] * per_task / 3600 for i in (0, 1))
    chains = max(1, min(concurrency, len([c for c in costs if c.pairs or c.eval_s[1]]) or 1))
    if cluster.gpus_per_task:  # training on the GPUs, the driver evaluates beside it
        spread_low = max(task[0] / cluster.slots, longest[0], evals[0] / chains)
        spread_high = task[1] / cluster.slots + longest[1] + evals[1] / chains
    else:  # one pool of cores for the tasks and the driver's evaluations
        cores = max(1.0, cluster.cpus)
        spread_low = max((task[0] * cluster.cpus_per_task + evals[0]) / cores, longest[0])
        spread_high = (task[1] * cluster.cpus_per_task + evals[1]) / min(cores, cluster.slots + 1) + longest[1]
    wall = (
        ray_start[0] + driver[0] / chains + spread_low + report[0],
        ray_start[1] + driver[1] + spread_high + report[1],
    )
    notes = sorted({n for c in costs for n in c.notes})
    if cluster.contention > 1 and not calibrated:  # a calibration ran under the same load already
        wall = (wall[0], wall[1] * cluster.contention)
        hours = (hours[0], hours[1] * cluster.contention)
        notes.append(
            f"this machine is shared: load average {cluster.load:.1f} on {cluster.cpus:g} CPUs; the high end is "
            f"x{cluster.contention:.1f} (the table's rows are for a quiet machine)"
        )
    return Estimate(cluster, costs, hours, wall, notes)


def run_cost(run, cluster, over, table, storage, pack, calibrated, manifest) -> RunCost:
    from pipeline.method.registry import get_method

    todo = len(run.todo_ids) if run.state not in ("done", "conflict", "blocked") else 0
    evals = run.evaluation.todo if run.evaluation.state == "to do" else 0
    cost = RunCost(run.label, todo, 0, 1, 0, None)
    if evals or run.evaluation.state == "to do":
        cost.eval_s = tuple(over["eval_start_s"][i] + evals * over["eval_pair_s"][i] for i in (0, 1))
    if not todo:
        return cost
    cost.driver_s = tuple(over["run_start_s"])
    if run.method.imported:
        cost.driver_s = tuple(cost.driver_s[i] + todo * over["pair_s"][i] for i in (0, 1))
        cost.notes.append("imports: read and re-encoded on the driver")
        return cost
    method = get_method(run.method.method)
    config = run.config
    slots_used = min(cluster.slots, todo)
    if method.batched is not None:
        size = pack or method.batched.pack_size(todo, cluster.slots, cluster.gpus_per_task)
        cost.pack_size, cost.packs = size, math.ceil(todo / size)
        per_pair = over["splicenet_pair_s"]
        cost.task_s = tuple(todo * per_pair[i] + slots_used * over["task_start_s"][i] for i in (0, 1))
        cost.longest_s = tuple(size * per_pair[i] + over["task_start_s"][i] for i in (0, 1))
        return cost
    if not method.uses_backbone or not method.packs:
        if method.uses_backbone:
            cost.notes.append(f"method {method.name}: its own cost is unknown; counted as per-pair overhead")
        cost.packs = todo
        cost.task_s = tuple(todo * over["pair_s"][i] + slots_used * over["task_start_s"][i] for i in (0, 1))
        cost.longest_s = tuple(over["pair_s"][i] + over["task_start_s"][i] for i in (0, 1))
        return cost
    steps = _steps(run, manifest, config)
    cost.pair_steps = sum(steps)
    sides = pair_sizes(storage, manifest, run.todo_ids, config.max_side)
    side = max((max(max(s), max(a)) for s, a in sides), default=512)
    family = backbone_family(config.backbone)
    size = pack or 1
    if cluster.gpus_per_task and pack is None:
        memory = int(over.get("memory_gib", 80) * 2**30 * min(1.0, cluster.gpus_per_task))
        patch = int(re.search(r"patch(\d+)", family).group(1))
        size = auto_pack_size(memory, sides or None, patch, fp32=config.precision == "fp32")
    cost.pack_size, cost.packs = size, math.ceil(todo / size)
    rate = calibrated.get((family, side, size)) or table_rate(table, cluster.device, family, side, size)
    cost.rate = rate
    if not rate.measured:
        cost.notes.append(f"{family} at {side} px on {cluster.device}: {rate.source}")
    per_step = (rate.low, rate.high)
    cost.task_s = tuple(
        cost.pair_steps * per_step[i] + todo * over["pair_s"][i] + slots_used * over["task_start_s"][i] for i in (0, 1)
    )
    biggest = max(steps) * size
    cost.longest_s = tuple(biggest * per_step[i] + over["task_start_s"][i] for i in (0, 1))
    return cost


def _steps(run, manifest, config) -> list[int]:
    if manifest is None or "steps" not in manifest.frame.columns:
        return [config.steps] * len(run.todo_ids)
    per_pair = dict(zip(manifest.frame["pair_id"], manifest.frame["steps"]))
    return [int(s) if isinstance(s, (int, float)) and s == s else config.steps for s in map(per_pair.get, run.todo_ids)]


def pair_sizes(storage: Storage, manifest, pair_ids: list[str], max_side: int | None) -> list[tuple]:
    """((h, w) structure, (h, w) appearance) after --max-side, of a sample of the pairs, from the images' headers."""
    if manifest is None:
        return []
    frame = manifest.frame.set_index("pair_id")
    sample = [p for p in pair_ids[:SIZE_SAMPLE] if p in frame.index]
    rows = [(p, frame.at[p, "structure_uri"], frame.at[p, "appearance_uri"]) for p in sample]
    found = probe_sizes(rows, storage)
    return [(downscaled(s, max_side), downscaled(a, max_side)) for s, a in (found[p] for p in sample if p in found)]


def _sum(pairs) -> tuple[float, float]:
    pairs = list(pairs)
    return (sum(p[0] for p in pairs), sum(p[1] for p in pairs))


# --- calibration -------------------------------------------------------------------------------------------------


def calibrate(
    runs, *, storage: Storage, manifests: dict, steps: int = 3, warmup: int = 2, cpus_per_task: float = 1.0
) -> dict:
    """(family, side, K) -> Rate: `warmup` + `steps` training steps of each distinct pack shape of the plan's
    training runs, with their own first pairs' images, on this machine's device (a few seconds each on a CPU with a
    tiny backbone), with as many torch threads on a CPU as a task gets (Ray sets a worker's OMP_NUM_THREADS to its
    CPUs). The device is this machine's: for a remote cluster, run the dry run where its GPUs are."""
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(max(1, int(cpus_per_task)))
        return _calibrate(runs, storage, manifests, steps, warmup)
    finally:
        torch.set_num_threads(threads)


def _calibrate(runs, storage: Storage, manifests: dict, steps: int, warmup: int) -> dict:
    import torch

    from pipeline.method.backbone import load_backbone
    from pipeline.method.devices import resolve_device
    from pipeline.method.images import decode_image, downscale_to
    from pipeline.method.registry import get_method
    from pipeline.method.trainer import PairInput, train_pack

    device = resolve_device("auto")
    rates, backbones = {}, {}
    for run in runs:
        if run.method.imported or not run.todo_ids or run.state in ("conflict", "blocked"):
            continue
        method = get_method(run.method.method)
        if not (method.uses_backbone and method.packs) or run.dataset not in manifests:
            continue
        manifest, config = manifests[run.dataset], run.config
        sides = pair_sizes(storage, manifest, run.todo_ids, config.max_side)
        side = max((max(max(s), max(a)) for s, a in sides), default=512)
        size = 1 if device.type == "cpu" else min(len(run.todo_ids), 16)
        key = (backbone_family(config.backbone), side, size)
        if key in rates:
            continue
        frame = manifest.frame.set_index("pair_id")
        pairs = []
        for index, pair_id in enumerate(run.todo_ids[:size]):
            images = [
                downscale_to(decode_image(storage.read_bytes(frame.loc[pair_id][c]), c), config.max_side)
                for c in ("structure_uri", "appearance_uri")
            ]
            short = config.replace(steps=warmup + steps, checkpoint_every=0, log_every=warmup + steps, seed=index)
            pairs.append(PairInput(f"calibrate{index}", *images, short))
        if config.backbone not in backbones:
            backbones[config.backbone] = load_backbone(config.backbone, device)
        marks = {}

        def on_step(pair_id: str, step: int, marks=marks) -> None:
            if pair_id == "calibrate0" and step in (warmup, warmup + steps):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                marks[step] = time.perf_counter()

        train_pack(pairs, backbones[config.backbone], device, on_step=on_step)
        per = (marks[warmup + steps] - marks[warmup]) / (steps * len(pairs))
        rates[key] = Rate(
            per * CALIBRATION_NOISE[0],
            per * CALIBRATION_NOISE[1],
            f"calibrated here: {steps} steps of {len(pairs)} pair(s) at {side} px on {device}",
            True,
        )
        log.info("calibration %s: %.3f s per pair-step", key, per)
    return rates


# --- printing ----------------------------------------------------------------------------------------------------


def hours_text(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_lines(found: Estimate) -> list[str]:
    lines = [f"cluster: {found.cluster.line()}"]
    for cost in found.runs:
        if not cost.pairs and not cost.eval_s[1]:
            continue
        rate = f", {cost.rate.low:.3g}-{cost.rate.high:.3g} s per pair-step" if cost.rate else ""
        steps = f", {cost.pair_steps} pair-steps" if cost.pair_steps else ""
        evaluation = f", evaluation {duration(cost.eval_s[0])}-{duration(cost.eval_s[1])}" if cost.eval_s[1] else ""
        lines.append(
            f"  {cost.label}: {cost.pairs} pair(s) in {cost.packs} pack(s) of up to {cost.pack_size}{steps}{rate}; "
            f"tasks {duration(cost.task_s[0])}-{duration(cost.task_s[1])}{evaluation}"
        )
    low, high = found.device_hours
    lines.append(
        f"estimate: {hours_text(low)}-{hours_text(high)} {found.unit}; wall time {duration(found.wall_s[0])} to "
        f"{duration(found.wall_s[1])}"
    )
    lines += [f"  note: {note}" for note in found.notes]
    return lines
