"""Dispatched aten ops per step of packed training (`train_pack`): today's code against the working tree, one run.

    python benchmarks/opcount.py                        # baseline 2765aeb vs the working tree, K = 1, 4, 16
    python benchmarks/opcount.py --quick                # K = 1, 4 and fewer steps: about two minutes
    python benchmarks/opcount.py --baseline REF --json out.json

The count is a property of the code, not of the machine or the image size (docs/performance.md, "Packing";
benchmarks/RESULTS.md), so it is measured here on the CPU and holds for a GPU's launches (estimate below).

What is counted
  Every aten op that reaches the Python dispatch key (a `TorchDispatchMode` around a whole `train_pack` call),
  forward and backward alike: on the CPU the autograd engine runs the backward on the calling thread, under the
  same mode (checked against torch.profiler over the same steps: the per-step counts of `convolution_backward`,
  `native_batch_norm_backward`, `native_layer_norm_backward` and `convolution` must agree; printed at the end).
  That is the op stream a device is asked to run: composite ops arrive decomposed (`linear` as `t` + `addmm`), and
  what a kernel calls inside itself (an `empty` for its output, the CPU's per-tensor loop of a `_foreach_` op, the
  CPU's per-group loop of a grouped convolution) is not seen.
  torch.profiler records every `aten::` call at every level, so its count is larger (about 4.7x at K=1) and grows
  with whatever the CPU's kernels do inside; the issue's table (10,587 ops per step at K=1) is in that unit, and the
  last columns give it (`--profiler`: for same-size packs by default) so the two can be compared. A CPU runs a
  grouped convolution group by group inside one `convolution` call (a narrow, slice and `_slow_conv2d` per group),
  where a GPU launches one kernel; the last column leaves out the events nested in convolution calls (in both codes).

Set-up
  The working tree's stacks convolve grouped (`TrainOptions(generator_convolutions="grouped")`: one convolution
  call per layer for a stack's pairs, what a GPU runs); the CPU's default, per slot (one call per pair and layer:
  faster there, and bit for bit each pair's own arithmetic), dispatches more: `--convolutions per-slot` counts it.
  Random ViT-Ti/16 (`load_backbone("random:vit_tiny_patch16_224")`, seeded: every process builds the same network),
  fp32, CPU, 1 torch thread, no compile. K pairs with distinct seeds, all of one size (same-size: structure 64x80,
  appearance 72x64, HxW) or each of its own (mixed-size: pair i has structure (64+4i)x(80-2i), appearance
  (72+2i)x(64-i)); `TrainConfig(steps=n, log_every=10**6, full_image_every=10**6, checkpoint_every=0,
  precision="fp32")`. The command line counts with a slim copy of the backbone (the same 12 blocks, 3 heads, 16x16
  patches and 197 tokens, with 16-wide heads: 48 channels instead of 192), which dispatches the same ops for about a
  tenth of the arithmetic: each worker first counts a pack of one and a mixed pack of two with both, and uses the
  copy only if every (phase, op) count agrees (`--full-width`: never). `count_ops_per_step` uses the backbone it is
  given (default: the real one).

Per step
  (count(steps=n2) - count(steps=n1)) / (n2 - n1), default n1=2, n2=5: the last step's log sync is in both runs and
  cancels, leaving crop-only steps n1..n2-1. Each run's count starts at the first pair's `on_step(pair, 1)` and ends
  at its `on_step(pair, n)`, so the set-up, step 0 (the only full-image step) and the finished pairs' outputs are out
  of both, even where their cost depends on the number of steps (as it may when a pack regroups as pairs finish).
  Per pair-step = per step / K.

Phases
  Each op goes to the innermost Python frame that names a phase: a file whose name contains `augment` ->
  augmentation; `generator` or `grouped` -> generator; `backbone`, or anything under `timm/` -> backbone;
  `objective` -> losses; `torch/optim/` -> optimiser. An op dispatched inside `.backward()` (the autograd engine
  is running a graph task, or a frame of `torch/_tensor.py` / `torch/autograd/` backward is on the stack) ->
  backward, whoever called it. Anything else (the trainer's own glue) -> other. Project file names are matched
  outside site-packages only, so a library file called e.g. `generator.py` cannot take ops.

GPU launches per pair-step (est.)
  The ops above, less those that launch no kernel on a GPU:
  - views and aliases: every op whose schema returns an alias it does not write (`OpOverload.is_view`: view,
    as_strided, t, transpose, permute, expand, slice, select, squeeze, unsqueeze, split, chunk, unbind, narrow,
    alias, detach, ...), plus, by name, _unsafe_view, lift_fresh and _reshape_alias; a `reshape` that must copy
    reaches the mode as `clone` + `_unsafe_view`, and its `clone` is counted;
  - allocations: empty, empty_like, empty_strided, new_empty, new_empty_strided, resize_;
  - `_local_scalar_dense` (`.item()`): no kernel, but a host-device sync; counted separately as syncs;
  - the profiler's markers (`_record_function_enter_new`, `_record_function_exit`, e.g. around `optimizer.step`);
  and with the optimiser phase replaced by the kernel ops (same filter) of one steady-state
  `torch.optim.Adam(params, fused=True)` step over as many parameter tensors as the trainer's optimiser stepped
  (read with `register_optimizer_step_pre_hook`: the sum of len(group['params'])), counted on this CPU: two ops
  (`_foreach_add_` on the step counters, `_fused_adam_`) whatever the number of tensors; on CUDA each is a
  multi-tensor launch per chunk of tensors (a few for a pack of 16 generators). Every other op counts as one
  launch (a GPU may launch more than one kernel for some, e.g. cuDNN convolutions or two-pass reductions, and bf16
  autocast adds casts: fp32 here), so the estimate is of the order, not exact.

The baseline's code is extracted with `git archive REF pipeline` into a temporary folder and counted in a
subprocess whose PYTHONPATH is that folder; the working tree's in a subprocess whose PYTHONPATH is the repository
root (each worker reports `pipeline.__file__`, and the parent checks it). `count_ops_per_step` counts in-process for
whatever `pipeline` is importable (tests/test_opcount.py uses it).
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BASELINE = "2765aeb"  # the commit before the grouped generators
BACKBONE = "random:vit_tiny_patch16_224"
SAME_SIZE = ((64, 80), (72, 64))  # (H, W) of the structure and appearance images of every pair of a same-size pack
DEFAULT_STEPS = (2, 5)  # n1, n2
PHASES = ("augmentation", "generator", "backbone", "losses", "backward", "optimiser", "other")
JSON_MARK = "OPCOUNT_JSON "

# ops that launch nothing on a GPU, beyond those whose schema says they are views (OpOverload.is_view)
NO_LAUNCH_VIEWS = frozenset(
    "alias detach _unsafe_view lift_fresh as_strided t transpose permute expand view _reshape_alias slice select "
    "squeeze unsqueeze split split_with_sizes chunk unbind narrow unflatten view_as".split()
)
ALLOCATIONS = frozenset("empty empty_like empty_strided new_empty new_empty_strided resize_".split())
SYNCS = frozenset({"_local_scalar_dense"})
MARKERS = frozenset({"_record_function_enter", "_record_function_enter_new", "_record_function_exit"})  # profiler
KINDS = ("kernel", "view", "allocation", "sync", "marker")


# --- classifying one op -------------------------------------------------------------------------------------------


def op_kind(func) -> str:
    """'view', 'allocation', 'sync', 'marker' or 'kernel': what the op would cost on a GPU (module docstring)."""
    name = func.overloadpacket.__name__
    if name in MARKERS:
        return "marker"
    if name in SYNCS:
        return "sync"
    if name in ALLOCATIONS:
        return "allocation"
    if name in NO_LAUNCH_VIEWS or getattr(func, "is_view", False):
        return "view"
    return "kernel"


_FILE_PHASES: dict[str, str | None] = {}
_BACKWARD_FRAMES = (
    ("torch/_tensor.py", "backward"),
    ("torch/autograd/__init__.py", "backward"),
    ("torch/autograd/__init__.py", "grad"),
    ("torch/autograd/graph.py", "_engine_run_backward"),
)


def file_phase(filename: str) -> str | None:
    """The phase a source file stands for, or None (look further out). Cached per file name."""
    phase = _FILE_PHASES.get(filename, "?")
    if phase != "?":
        return phase
    path = filename.replace(os.sep, "/")
    base = path.rsplit("/", 1)[-1]
    library = "/site-packages/" in path or "/dist-packages/" in path or "/lib/python" in path
    phase = None
    if "/torch/optim/" in path:
        phase = "optimiser"
    elif "/timm/" in path:
        phase = "backbone"
    elif not library:
        if "augment" in base:
            phase = "augmentation"
        elif "generator" in base or "grouped" in base:
            phase = "generator"
        elif "backbone" in base:
            phase = "backbone"
        elif "objective" in base:
            phase = "losses"
    _FILE_PHASES[filename] = phase
    return phase


def current_phase() -> str:
    """The phase of the op being dispatched now, from the Python stack (see the module docstring)."""
    if torch._C._current_graph_task_id() != -1:  # the autograd engine is running a backward on this thread
        return "backward"
    phase = None
    frame = sys._getframe(2)  # past current_phase and __torch_dispatch__
    while frame is not None:
        code = frame.f_code
        if phase is None:
            phase = file_phase(code.co_filename)
        if code.co_name in ("backward", "grad", "_engine_run_backward"):
            path = code.co_filename.replace(os.sep, "/")
            if any(path.endswith(suffix) and code.co_name == name for suffix, name in _BACKWARD_FRAMES):
                return "backward"
        frame = frame.f_back
    return phase or "other"


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while active, by (phase, op name); `kinds` by what it costs on a GPU."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()  # (phase, op name) -> count
        self.kinds: collections.Counter = collections.Counter()  # (phase, kind) -> count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        phase = current_phase()
        self.ops[phase, func.overloadpacket.__name__] += 1
        self.kinds[phase, op_kind(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


# --- one counted run ----------------------------------------------------------------------------------------------


def pair_sizes(pack: int, same_size: bool) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(structure (H, W), appearance (H, W)) of each pair of a pack."""
    if same_size:
        return [SAME_SIZE] * pack
    return [((64 + 4 * i, 80 - 2 * i), (72 + 2 * i, 64 - i)) for i in range(pack)]


def _image(seed: int, size: tuple[int, int]) -> torch.Tensor:
    """A smooth random (3, H, W) uint8 image."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0]
    return (smooth * 255).round().to(torch.uint8)


def _pairs(pack: int, same_size: bool, steps: int, backbone_spec: str) -> list:
    from pipeline.method.config import TrainConfig
    from pipeline.method.trainer import PairInput

    config = TrainConfig(
        backbone=backbone_spec,
        steps=steps,
        log_every=10**6,
        full_image_every=10**6,
        checkpoint_every=0,
        precision="fp32",
    )
    return [
        PairInput(f"pair{i}", _image(2 * i, structure), _image(2 * i + 1, appearance), config.replace(seed=i))
        for i, (structure, appearance) in enumerate(pair_sizes(pack, same_size))
    ]


CONVOLUTIONS = "grouped"  # how stacks convolve while counting (TrainOptions.generator_convolutions); --convolutions


def set_convolutions(mode: str) -> None:
    global CONVOLUTIONS
    CONVOLUTIONS = mode


def train_options(options_class):
    """Eager, and the generator convolutions a GPU runs (grouped: one call per layer per stack) unless --convolutions
    says otherwise; code without that option (the baseline) runs as it always did."""
    fields = getattr(options_class, "__dataclass_fields__", {})
    if "generator_convolutions" in fields:
        return options_class(compile="off", generator_convolutions=CONVOLUTIONS)
    return options_class(compile="off")


def count_run(pack: int, same_size: bool, steps: int, backbone) -> dict:
    """Count the ops of steps 1..steps-1 of one `train_pack` call of `steps` steps: from the first pair's
    `on_step(pair0, 1)` to its `on_step(pair0, steps)`, so the set-up, step 0 and the finished pairs' outputs are
    left out even where their cost depends on the number of steps (the last step's log sync is in)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from pipeline.method.trainer import TrainOptions, train_pack

    pairs = _pairs(pack, same_size, steps, backbone.spec)
    stepped: list[int] = []  # parameter tensors of each optimiser step
    counter = OpCounter()
    marks: dict[int, tuple[collections.Counter, collections.Counter]] = {}

    def on_optimizer_step(optimizer, args, kwargs):
        stepped.append(sum(len(group["params"]) for group in optimizer.param_groups))

    def on_step(pair_id: str, done: int) -> None:
        if pair_id == pairs[0].pair_id and done in (1, steps):
            marks[done] = (collections.Counter(counter.ops), collections.Counter(counter.kinds))

    handle = register_optimizer_step_pre_hook(on_optimizer_step)
    try:
        with counter:
            results = train_pack(
                pairs, backbone, torch.device("cpu"), options=train_options(TrainOptions), on_step=on_step
            )
    finally:
        handle.remove()
    failed = {pair_id: str(result) for pair_id, result in results.items() if isinstance(result, Exception)}
    if failed:
        raise RuntimeError(f"pairs failed while counting: {failed}")
    if set(marks) != {1, steps}:
        raise RuntimeError(f"train_pack called on_step for {sorted(marks)} of steps 1 and {steps}: cannot mark steps")
    (ops_first, kinds_first), (ops_last, kinds_last) = marks[1], marks[steps]
    ops_last.subtract(ops_first)
    kinds_last.subtract(kinds_first)
    return {"ops": ops_last, "kinds": kinds_last, "optimizer_steps": stepped}


def fused_adam_kernels(parameter_tensors: int) -> dict:
    """Ops of one steady-state `torch.optim.Adam(fused=True)` step over that many parameter tensors, by kind."""
    params = [torch.nn.Parameter(torch.zeros(4)) for _ in range(parameter_tensors)]
    for param in params:
        param.grad = torch.full_like(param, 0.1)
    optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.0, 0.99), fused=True)
    optimizer.step()  # the first step also creates the state
    counter = OpCounter()
    with counter:
        optimizer.step()
    kinds = collections.Counter()
    for (_, kind), count in counter.kinds.items():
        kinds[kind] += count
    return {"ops": counter.total, **{kind: kinds[kind] for kind in KINDS}}


def count_ops_per_step(
    pack: int,
    same_size: bool = True,
    *,
    steps: tuple[int, int] = DEFAULT_STEPS,
    backbone=None,
    backbone_spec: str = BACKBONE,
    profiler: bool = False,
) -> dict:
    """Ops per crop-only step of `train_pack` for a pack of `pack` pairs, counted in this process on whatever code
    `pipeline` imports from: {'ops_per_step', 'ops_per_pair_step', 'gpu_launches_per_pair_step', 'phases', ...}.
    `backbone`: an already loaded backbone (default: load `backbone_spec` on the CPU). `profiler`: also count
    torch.profiler's `aten::` events per step over the same steps in one more run ('profiler_events_per_step'), and
    check that both counters agree on ops that only the autograd engine or the model call ('profiler_agreement')."""
    from pipeline.method.backbone import load_backbone

    first, last = steps
    if not 1 <= first < last:
        raise ValueError(f"steps must be (n1, n2) with 1 <= n1 < n2, got {steps}")
    if backbone is None:
        backbone = load_backbone(backbone_spec, "cpu")
    short = count_run(pack, same_size, first, backbone)
    long = count_run(pack, same_size, last, backbone)
    span = last - first

    def per_step(counter_long, counter_short, key) -> dict:
        out = collections.Counter()
        for counter, sign in ((counter_long, 1), (counter_short, -1)):
            for item, count in counter.items():
                out[key(item)] += sign * count
        return {name: value / span for name, value in out.items()}

    phases = per_step(long["ops"], short["ops"], lambda item: item[0])
    phases = {phase: phases.get(phase, 0.0) for phase in PHASES}
    kinds = per_step(long["kinds"], short["kinds"], lambda item: item)
    by_op = per_step(long["ops"], short["ops"], lambda item: item[1])
    parameter_tensors = long["optimizer_steps"][-1] if long["optimizer_steps"] else 0
    fused = fused_adam_kernels(parameter_tensors) if parameter_tensors else {"kernel": 0, "sync": 0}
    # GPU launches: kernels of every phase but the optimiser, whose own ops are replaced by a fused Adam step's
    gpu_phases = {phase: kinds.get((phase, "kernel"), 0.0) for phase in PHASES}
    gpu_phases["optimiser"] = float(fused["kernel"])
    gpu = sum(gpu_phases.values())
    total = sum(phases.values())
    syncs = sum(value for (phase, kind), value in kinds.items() if kind == "sync" and phase != "optimiser")
    row = {
        "pack": pack,
        "same_size": same_size,
        "sizes": [list(map(list, sizes)) for sizes in pair_sizes(pack, same_size)],
        "steps": [first, last],
        "backbone": backbone.spec,
        "ops_per_step": total,
        "ops_per_pair_step": total / pack,
        "phases": phases,  # ops per step by phase
        "phase_shares": {phase: (value / total if total else 0.0) for phase, value in phases.items()},
        "by_kind": {
            kind: sum(v for (_, k), v in kinds.items() if k == kind)
            for kind in ("kernel", "view", "allocation", "sync")
        },
        "optimizer_parameter_tensors": parameter_tensors,
        "fused_adam": fused,
        "gpu_phases": gpu_phases,  # estimated launches per step by phase (optimiser: fused Adam)
        "gpu_launches_per_step": gpu,
        "gpu_launches_per_pair_step": gpu / pack,
        "syncs_per_step": syncs + fused.get("sync", 0),
        "top_ops": dict(sorted(by_op.items(), key=lambda item: -item[1])[:15]),
    }
    if profiler:
        events = profile_run(pack, same_size, first, last, backbone)
        kernel_level = sum(n for name, n in events.items() if name.startswith(KERNEL_LEVEL))
        row["profiler_events_per_step"] = (sum(events.values()) - kernel_level) / span
        row["profiler_events_per_pair_step"] = row["profiler_events_per_step"] / pack
        # the same events with each convolution call counted as one (as a GPU runs it), not its CPU internals
        row["profiler_events_conv_as_one_per_step"] = kernel_level / span
        row["profiler_events_conv_as_one_per_pair_step"] = kernel_level / span / pack
        row["profiler_agreement"] = {
            name: {"mode": by_op.get(name, 0.0), "profiler": events[f"aten::{name}"] / span} for name in CHECKED_OPS
        }
    return row


# --- torch.profiler's count: the unit of the table, and the check that the mode sees the backward --------

CHECKED_OPS = ("convolution_backward", "native_batch_norm_backward", "native_layer_norm_backward", "convolution")


def profile_run(pack: int, same_size: bool, first: int, last: int, backbone) -> collections.Counter:
    """`aten::` events torch.profiler records in steps first..last-1 of one `train_pack` call of last+1 steps: the
    steps `count_ops_per_step` counts, with no log step among them. No dispatch mode: under one, every op would be
    recorded twice (as called, and as the mode calls it again)."""
    from torch.profiler import ProfilerActivity, profile

    from pipeline.method.trainer import TrainOptions, train_pack

    pairs = _pairs(pack, same_size, last + 1, backbone.spec)
    prof = profile(activities=[ProfilerActivity.CPU])
    window = []

    def on_step(pair_id: str, done: int) -> None:
        if pair_id == pairs[0].pair_id and done in (first, last):
            (prof.start if done == first else prof.stop)()
            window.append(done)

    train_pack(pairs, backbone, torch.device("cpu"), options=train_options(TrainOptions), on_step=on_step)
    if window != [first, last]:
        raise RuntimeError(f"train_pack called on_step for {window} of steps {first} and {last}: cannot mark steps")
    counted = collections.Counter()
    for event in prof.events():
        if event.name.startswith("aten::"):
            counted[event.name] += 1
            if not _inside_convolution(event):
                counted[KERNEL_LEVEL + event.name] += 1
    return counted


KERNEL_LEVEL = "kernel-level/"  # profile_run's key prefix for events not nested inside a convolution call
CONVOLUTIONS_CALLS = ("aten::convolution", "aten::convolution_backward")


def _inside_convolution(event) -> bool:
    """Whether a profiler event runs inside a convolution (or its backward) call: on a CPU a grouped convolution
    loops over its groups there (narrow, slice, a _slow_conv2d per group...), where a GPU launches one kernel."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in CONVOLUTIONS_CALLS:
            return True
        parent = parent.cpu_parent
    return False


# --- a slim copy of the backbone: the same ops, a fraction of the arithmetic ---------------------------------------

SLIM_HEAD_DIM = 16


def slim_backbone(backbone):
    """The backbone's ViT rebuilt with `SLIM_HEAD_DIM`-wide heads (ViT-Ti/16: 48 channels instead of 192): the same
    blocks, heads, patch size, tokens and so the same ops, with a sixteenth of the channel arithmetic. Random weights,
    seeded; only for counting (`check_slim` checks that it dispatches exactly what the backbone does)."""
    import timm

    from pipeline.method.backbone import DinoBackbone

    arch = backbone.spec.split(":", 1)[1] if backbone.spec.startswith("random:") else None
    if arch is None:
        raise ValueError(f"a slim copy needs a random:TIMM_ARCH backbone, got {backbone.spec}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = timm.create_model(
            arch,
            pretrained=False,
            num_classes=0,
            dynamic_img_size=True,
            embed_dim=SLIM_HEAD_DIM * backbone.num_heads,
            num_heads=backbone.num_heads,
        )
    return DinoBackbone(vit, backbone.spec, backbone.weights_id)


def check_slim(backbone, slim, steps: int = 3) -> bool:
    """A pack of one and a mixed pack of two, counted with each: the same ops, phase by phase?"""
    for pack, same_size in ((1, True), (2, False)):
        full = count_run(pack, same_size, steps, backbone)["ops"]
        thin = count_run(pack, same_size, steps, slim)["ops"]
        if +full != +thin:
            return False
    return True


# --- worker: counts for the code this process imports, as JSON ------------------------------------------------------


def worker(args) -> None:
    import pipeline
    from pipeline.method.backbone import load_backbone

    where = os.path.dirname(os.path.dirname(os.path.abspath(pipeline.__file__)))
    if args.expect_root and os.path.realpath(where) != os.path.realpath(args.expect_root):
        raise SystemExit(f"opcount worker: pipeline imported from {where}, expected {args.expect_root}")
    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.backbone, "cpu")
    slim_used = False
    if args.slim:
        slim = slim_backbone(backbone)
        slim_used = check_slim(backbone, slim)
        print(
            f"  [{args.label}] slim backbone: "
            + ("dispatches the same ops, phase by phase: counting with it" if slim_used else "DIFFERENT ops: not used"),
            file=sys.stderr,
            flush=True,
        )
        if slim_used:
            backbone = slim
    rows = []
    for kind in args.kinds.split(","):
        for pack in map(int, args.packs.split(",")):
            started = time.perf_counter()
            profiled = args.profiler == "all" or (args.profiler == "same" and kind == "same")
            row = count_ops_per_step(pack, kind == "same", steps=args.step_pair, backbone=backbone, profiler=profiled)
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(
                f"  [{args.label}] {kind}-size K={pack}: {row['ops_per_step']:,.0f} ops/step, "
                f"{row['gpu_launches_per_pair_step']:,.0f} GPU launches/pair-step (est.), {row['seconds']} s",
                file=sys.stderr,
                flush=True,
            )
    print(JSON_MARK + json.dumps({"pipeline_file": pipeline.__file__, "slim_backbone": slim_used, "rows": rows}))


def run_worker(label: str, root: str, args) -> dict:
    """Run this script's worker mode with `pipeline` imported from `root` (PYTHONPATH); returns its JSON."""
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS=str(args.threads))
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--label", label, "--expect-root", root]
    for option in ("packs", "kinds", "steps", "backbone", "threads", "profiler", "convolutions"):
        command += [f"--{option}", str(getattr(args, option))]
    if not args.slim:
        command.append("--full-width")
    noise = []  # the worker's other stderr lines (library warnings, the profiler's own log): shown if it fails
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, env=env, cwd=root, stdout=out, stderr=subprocess.PIPE, text=True)
        for line in process.stderr:
            if line.startswith("  ["):
                print(line, end="", flush=True)
            else:
                noise.append(line)
        process.wait()
        out.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith(JSON_MARK)]
    if process.returncode != 0 or not lines:
        raise SystemExit(
            f"opcount: the {label} worker failed (exit {process.returncode}); its stderr ends:\n{''.join(noise[-40:])}"
        )
    return json.loads(lines[-1][len(JSON_MARK) :])


def extract_baseline(repo: str, ref: str, into: str) -> str:
    """`git archive REF pipeline | tar -x -C into`; returns the commit."""
    commit = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--verify", f"{ref}^{{commit}}"], capture_output=True, text=True
    )
    if commit.returncode != 0:
        raise SystemExit(f"opcount: baseline ref {ref!r} is not a commit of {repo}: {commit.stderr.strip()}")
    archive = subprocess.run(["git", "-C", repo, "archive", ref, "pipeline"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into)
    return commit.stdout.strip()


# --- the tables -----------------------------------------------------------------------------------------------------


def _label(row: dict) -> str:
    return f"| {row['code']} | {'same-size' if row['same_size'] else 'mixed-size'} | {row['pack']} |"


def table(rows: list[dict]) -> str:
    lines = [
        "| code | pack | K | aten ops per step | per pair-step | GPU launches per pair-step (est.) "
        "| torch.profiler aten events per step | per pair-step | per pair-step, convolution internals out |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        events = row.get("profiler_events_per_step")
        profiled = (
            f"{events:,.0f} | {events / row['pack']:,.0f} | {row['profiler_events_conv_as_one_per_pair_step']:,.0f}"
            if events is not None
            else "- | - | -"
        )
        lines.append(
            f"{_label(row)} {row['ops_per_step']:,.0f} | {row['ops_per_pair_step']:,.0f} | "
            f"{row['gpu_launches_per_pair_step']:,.0f} | {profiled} |"
        )
    return "\n".join(lines)


def phase_table(rows: list[dict]) -> str:
    lines = ["| code | pack | K | " + " | ".join(PHASES) + " |", "|---|---|---|" + "---|" * len(PHASES)]
    for row in rows:
        shares = " | ".join(f"{100 * row['phase_shares'][phase]:.1f}%" for phase in PHASES)
        lines.append(f"{_label(row)} {shares} |")
    return "\n".join(lines)


def agreement(rows: list[dict]) -> str | None:
    """One line: the dispatch mode and torch.profiler agree on ops only the autograd engine or the model call."""
    checked = [row for row in rows if "profiler_agreement" in row]
    if not checked:
        return None
    row = checked[0]
    pairs = row["profiler_agreement"]
    agree = all(v["mode"] == v["profiler"] and v["mode"] > 0 for v in pairs.values())
    return (
        f"check ({row['code']}, {'same' if row['same_size'] else 'mixed'}-size K={row['pack']}, per step): "
        + ", ".join(f"{name} {v['mode']:g} (mode) / {v['profiler']:g} (profiler)" for name, v in pairs.items())
        + f"; backward ops {row['phases']['backward']:,.0f}/step: "
        + ("the counter sees the backward" if agree else "DISAGREE: the counter misses ops")
    )


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git ref of today's code (default: %(default)s)")
    parser.add_argument("--no-baseline", action="store_true", help="count the working tree only")
    parser.add_argument("--repo", default=REPO, help="the repository (default: this script's)")
    parser.add_argument("--packs", default="1,4,16", help="pack sizes K, comma-separated")
    parser.add_argument("--kinds", default="same,mixed", help="same (every pair one size) and/or mixed")
    parser.add_argument("--steps", default="2,5", help="n1,n2: per step = (count(n2) - count(n1)) / (n2 - n1)")
    parser.add_argument("--backbone", default=BACKBONE)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (counts do not depend on it)")
    parser.add_argument(
        "--profiler",
        default="same",
        choices=("same", "all", "none"),
        help="also count torch.profiler's aten events (the unit of the issue's table) for same-size packs (default), "
        "all packs, or none: one more run per row",
    )
    parser.add_argument(
        "--full-width",
        dest="slim",
        action="store_false",
        help="count with the backbone itself, not its slim copy (16-wide heads: the same ops, checked at the start "
        "of each worker, about a tenth of the time)",
    )
    parser.add_argument(
        "--convolutions",
        default=CONVOLUTIONS,
        choices=("grouped", "per-slot", "auto"),
        help="the tree's generator convolutions while counting: grouped (what a GPU runs, default), per-slot (the "
        "CPU's default: one call per pair and layer), auto",
    )
    parser.add_argument("--quick", action="store_true", help="K = 1, 4 and steps 2,4: about two minutes")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="tree", help=argparse.SUPPRESS)
    parser.add_argument("--expect-root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick and not args.worker:
        args.packs, args.steps = "1,4", "2,4"
    args.step_pair = tuple(int(n) for n in args.steps.split(","))
    set_convolutions(args.convolutions)
    if args.worker:
        worker(args)
        return []

    started = time.perf_counter()
    context = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor()} ({os.cpu_count()} CPUs)".replace("  ", " "),
        "threads": args.threads,
        "convolutions": args.convolutions,
        "backbone": args.backbone,
        "steps": list(args.step_pair),
        "baseline_ref": None if args.no_baseline else args.baseline,
    }
    print(" ".join(f"{k}={v}" for k, v in context.items()), flush=True)
    rows, workers = [], {}
    with tempfile.TemporaryDirectory(prefix="opcount-baseline-") as tmp:
        plan = [] if args.no_baseline else [("baseline", tmp)]
        plan.append(("tree", os.path.abspath(args.repo)))
        for label, root in plan:
            if label == "baseline":
                context["baseline_commit"] = extract_baseline(args.repo, args.baseline, tmp)
            print(f"counting {label} (pipeline from {root}) ...", flush=True)
            result = run_worker(label, root, args)
            workers[label] = {"pipeline_file": result["pipeline_file"], "slim_backbone": result["slim_backbone"]}
            code = f"baseline {args.baseline}" if label == "baseline" else "working tree"
            rows += [{"code": code, **row} for row in result["rows"]]
    print()
    print(table(rows))
    print()
    print("Share of dispatched ops per step by phase:")
    print()
    print(phase_table(rows))
    check = agreement(rows)
    if check:
        print()
        print(check)
    if args.json:
        with open(args.json, "w") as handle:
            payload = {"context": context, "workers": workers, "rows": rows, "seconds": time.perf_counter() - started}
            json.dump(payload, handle, indent=2)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
