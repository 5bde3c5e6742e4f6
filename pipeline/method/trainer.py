"""Train Splice generators: one pair (`train_pair`) or K pairs packed together (`train_pack`), one code path.

The loop reads top to bottom in a fixed order: loss weights for the step, augmented batches, forward + losses,
backward, optimiser step, zero_grad, then (on log steps only) one host sync to record every pair's losses, and
periodic checkpoints. Images are decoded once and live on the device as tensors for the whole run.

A pack shares what does not mix pairs: one no-grad backbone pass over all pairs' crops, one backbone pass over all
generators' outputs, one backward of the sum of the pairs' totals (parameters are disjoint, so gradients do not
mix), one Adam over all generators' parameters (elementwise, so the same as one Adam per pair). Pairs of one image
size at one step form a stack (`pipeline.method.pair_stack`) whose generators run as ONE grouped call and whose
augmentation is batched, so the launches of a step hardly grow with the pack. Each pair keeps its own seed,
augmentation RNG, step counter, checkpoints and result: a pair trained alone or in any pack gives the same losses
and output. A pair whose loss goes non-finite (seen on a log step) or whose output is
non-finite fails alone; the others go on. A pair that finishes leaves the pack at once, through `on_result`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.method.backbone import DinoBackbone
from pipeline.method.devices import device_name, peak_memory, reset_peak_memory, resolve_device
from pipeline.method.objective import Features, GroupStep, GroupTerms, last_block_reader, pack_losses
from pipeline.method.pair_run import PairInput, PairRun, TrainingError
from pipeline.method.pair_stack import PairStack, form_stacks
from pipeline.method.result import MethodResult

log = logging.getLogger(__name__)
__all__ = [
    "MethodResult",
    "PairInput",
    "TrainOptions",
    "TrainingError",
    "resolve_device",
    "resolve_precision",
    "train_pack",
    "train_pair",
]
# settings that every pair of a pack must share (the rest, e.g. seed and steps, may differ per pair)
PACK_SHARED = ("backbone", "precision", "lr", "betas", "antialias")


@dataclass(frozen=True)
class TrainOptions:
    """How to run the step, not what it computes: results agree with the defaults up to rounding."""

    # torch.compile the 224x224 backbone passes and the grouped generator calls: auto (on for CUDA, off for CPU) |
    # on | off. The shared crop schedule gives a pack a small fixed set of shapes (~27 per image size at 512 px),
    # each compiled once (with mode "reduce-overhead": captured as a CUDA graph once)
    compile: str = "auto"
    compile_backend: str | Callable = "inductor"  # torch.compile backend: a name, or a backend function
    compile_mode: str | None = None  # torch.compile mode (None: default; "reduce-overhead" adds CUDA graphs)
    # how a stack's generators convolve: auto (per slot on CPUs, grouped elsewhere) | grouped | per-slot. Grouped:
    # one convolution with groups=K per layer, one launch for the whole stack (GPUs, where launches are the cost).
    # Per slot: each pair's convolution as its own call (CPUs: oneDNN's plain kernels are faster there than its
    # grouped ones, and compute each pair bit for bit as it computes it alone; grouped kernels round differently)
    generator_convolutions: str = "auto"

    def __post_init__(self):
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"compile must be auto, on or off, got {self.compile!r}")
        if self.generator_convolutions not in ("auto", "grouped", "per-slot"):
            raise ValueError(
                f"generator_convolutions must be auto, grouped or per-slot, got {self.generator_convolutions!r}"
            )


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def train_pair(
    structure: torch.Tensor,
    appearance: torch.Tensor,
    config,
    backbone: DinoBackbone,
    device: torch.device,
    *,
    checkpoint: dict | None = None,
    save_checkpoint: Callable[[dict], None] | None = None,
    progress: bool = False,
    options: TrainOptions = TrainOptions(),
    on_step: Callable[[int], None] | None = None,
) -> MethodResult:
    """Train G on (structure, appearance), each a (3, H, W) uint8 tensor, and return G(structure).
    on_step(steps_done) after each step (e.g. a live progress record)."""
    pair = PairInput("pair", structure, appearance, config, checkpoint, save_checkpoint)
    report = (lambda _, step: on_step(step)) if on_step is not None else None
    result = train_pack([pair], backbone, device, progress=progress, options=options, on_step=report)["pair"]
    if isinstance(result, Exception):
        raise result
    return result


def train_pack(
    pairs: list[PairInput],
    backbone: DinoBackbone,
    device: torch.device,
    *,
    options: TrainOptions = TrainOptions(),
    on_step: Callable[[str, int], None] | None = None,
    on_result: Callable[[str, MethodResult | TrainingError], None] | None = None,
    progress: bool = False,
) -> dict[str, MethodResult | TrainingError]:
    """Train every pair's generator, packed; returns {pair_id: MethodResult, or the TrainingError it failed with}.

    on_step(pair_id, steps_done) is called after each step of each pair (no device sync); on_result(pair_id,
    result or error) as soon as a pair is finished or has failed, while the others go on.
    """
    started = time.perf_counter()
    device = torch.device(device)
    _check_shared_settings(pairs)
    precision = resolve_precision(pairs[0].config.precision, device)
    reset_peak_memory(device)
    backbone = backbone.to(device)
    outcomes: dict[str, MethodResult | TrainingError] = {}

    def finish(run_id: str, outcome) -> None:
        outcomes[run_id] = outcome
        if on_result is not None:
            on_result(run_id, outcome)

    # 1. set up every pair (inputs on the device, generator, RNG, checkpoint); one that cannot start fails alone
    runs: list[PairRun] = []
    for pair in pairs:
        try:
            runs.append(PairRun(pair, backbone, device, precision))
        except TrainingError as exc:
            finish(pair.pair_id, exc)
    facts = _run_facts(backbone, device, precision, [run.pair_id for run in runs])

    # 2. stacks: pairs of one size at one step share one grouped generator; one Adam over every stack
    stacks = form_stacks(runs, device, per_slot=_per_slot_convolutions(device, options))
    generator_call = _compiled_generators(device, options)
    for stack in stacks:
        stack.call = generator_call(stack.generator)
    optimizer = _optimizer(stacks, device)
    crop_features = _crop_features(backbone, device, options)

    # 3. train: one joint step per iteration; a pair leaves the pack when it is done or has failed
    bar = _progress_bar(progress, runs)
    while stacks:
        groups = [stack.step_inputs() for stack in stacks]
        terms = pack_losses(groups, backbone, precision, crop_features, runs[0].config.antialias)
        torch.cat([group_terms.total for group_terms in terms]).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        leaving = _log_step(stacks, groups, terms, finish, bar)  # the only host-device sync in the loop
        _advance(stacks, leaving, optimizer, finish, on_step)
        if bar is not None:
            bar.update(sum(len(stack.runs) for stack in stacks))
        for stack in stacks:
            for slot, run in enumerate(stack.runs):
                if run.done and run not in leaving:
                    leaving.add(run)
                    finish(run.pair_id, _result(run, stack.generator.generator(slot), facts, started))
        if leaving:
            stacks = _without(stacks, leaving, optimizer, generator_call)
            optimizer = _optimizer(stacks, device, previous=optimizer)
    if bar is not None:
        bar.close()
    return outcomes


# --- the step's parts -------------------------------------------------------------------------------------------


def _advance(stacks: list[PairStack], leaving: set[PairRun], optimizer, finish, on_step) -> None:
    """Count the step for every pair still in, report it, and write the checkpoints that are due; a pair whose
    checkpoint cannot be written (e.g. storage gone for good) fails and joins `leaving`, its pack-mates go on."""
    for stack in stacks:
        for slot, run in enumerate(stack.runs):
            if run in leaving:
                continue
            run.step += 1
            if on_step is not None:
                on_step(run.pair_id, run.step)
            if not run.is_checkpoint_step():
                continue
            try:
                run.save(run.checkpoint_state(stack.generator_state(slot), stack.optimizer_state(optimizer, slot)))
            except Exception as exc:
                leaving.add(run)
                finish(run.pair_id, exc)


def _log_step(stacks: list[PairStack], groups: list[GroupStep], terms: list[GroupTerms], finish, bar) -> set[PairRun]:
    """Record the losses of pairs on a log step (one device sync for the whole pack); returns the pairs that failed."""
    logging = [
        (run, group_terms, slot, group.weights[slot])
        for stack, group, group_terms in zip(stacks, groups, terms)
        for slot, run in enumerate(stack.runs)
        if run.is_log_step()
    ]
    if not logging:
        return set()
    rows = torch.stack(
        [torch.cat([t.values[slot], t.total[slot : slot + 1]]).detach().float() for _, t, slot, _ in logging]
    ).tolist()
    failed = set()
    for (run, group_terms, _, weights), values in zip(logging, rows):
        row = {name: value for name, value in zip(group_terms.names, values) if getattr(weights, name) > 0}
        row["total"] = values[-1]
        try:
            run.log(run.step, row)
        except TrainingError as exc:
            failed.add(run)
            finish(run.pair_id, exc)
            continue
        if bar is not None and run is stacks[0].runs[0]:
            bar.set_postfix_str(f"loss {row['total']:.4g}", refresh=False)
    return failed


def _without(stacks: list[PairStack], leaving: set[PairRun], optimizer, generator_call) -> list[PairStack]:
    """The stacks less the pairs leaving (sliced, their Adam state moved along); empty stacks are gone."""
    remaining = []
    for stack in stacks:
        kept = stack.without(leaving, optimizer)
        if kept is not None and kept is not stack:
            kept.call = generator_call(kept.generator)
        if kept is not None:
            remaining.append(kept)
    return remaining


def _optimizer(stacks: list[PairStack], device: torch.device, previous: torch.optim.Optimizer | None = None):
    """One Adam over every stack's parameters. Adam is elementwise, so each parameter's update is the one it would
    get from an Adam of its own pair alone; Adam's step count is per stacked tensor, which is why a stack's pairs
    have taken equal steps. Fused on CUDA (a few multi-tensor launches per step); foreach on CPUs, whose fused
    kernel rounds a tensor's last few elements (its scalar tail) differently from the rest, so a pair's update
    would depend on where its slice of a stacked tensor falls (the foreach path's plain ops round alike)."""
    if not stacks:
        return None
    config = stacks[0].runs[0].config
    parameters = [p for stack in stacks for p in stack.parameters]
    flags = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.Adam(parameters, lr=config.lr, betas=tuple(map(float, config.betas)), **flags)
    for stack in stacks:
        if previous is not None:  # the pack shrank: carry every remaining parameter's state over
            for parameter in stack.parameters:
                if parameter in previous.state:
                    optimizer.state[parameter] = previous.state[parameter]
        else:
            stack.restore_optimizer(optimizer)  # from the pairs' checkpoints
    return optimizer


def _per_slot_convolutions(device: torch.device, options: TrainOptions) -> bool:
    if options.generator_convolutions == "auto":
        return device.type == "cpu"
    return options.generator_convolutions == "per-slot"


def _compiled_generators(device: torch.device, options: TrainOptions) -> Callable:
    """stack generator -> what the step calls: itself, or where compiling is asked for (default: on CUDA), its
    compiled form (one graph per crop shape; the shared schedule keeps their number small), falling back to it."""
    wanted = options.compile == "on" or (options.compile == "auto" and device.type == "cuda")
    if not wanted:
        return lambda generator: generator

    def compiled(generator):
        try:
            graph = torch.compile(generator, backend=options.compile_backend, mode=options.compile_mode, dynamic=False)
        except Exception as exc:
            log.warning("torch.compile is not available here (%s): the generators run eagerly", _first_line(exc))
            return generator
        return _Fallback(graph, generator, "generator")

    _allow_shapes()
    return compiled


def _allow_shapes(count: int = 256) -> None:
    """Let torch.compile keep a graph per crop shape (~27 per image size, two kinds of crop, whole images) instead of
    giving up after its default of 8 recompilations."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < count:
            setattr(config, name, count)


def _crop_features(backbone: DinoBackbone, device: torch.device, options: TrainOptions) -> Features:
    """The reader of the 224x224 crop passes: compiled where asked (default: on CUDA), else eager."""
    eager = last_block_reader(backbone)
    wanted = options.compile == "on" or (options.compile == "auto" and device.type == "cuda")
    if not wanted:
        return eager
    try:
        compiled = torch.compile(eager, backend=options.compile_backend, mode=options.compile_mode)
    except Exception as exc:  # e.g. a backend this torch does not have
        log.warning("torch.compile is not available here (%s): the backbone runs eagerly", _first_line(exc))
        return eager
    return _Fallback(compiled, eager, "backbone")


class _Fallback:
    """A compiled function that turns into the eager one, for good, the first time compiling or running it fails
    (no compiler, an unsupported op): the run goes on, a little slower, with the same results."""

    def __init__(self, compiled: Callable, eager: Callable, what: str):
        self.compiled, self.eager, self.what = compiled, eager, what

    def __call__(self, inputs: torch.Tensor):
        if self.compiled is not None:
            try:
                return self.compiled(inputs)
            except Exception as exc:  # compilation errors surface on the first call with a new shape
                log.warning("compiled %s failed (%s): running it eagerly from now on", self.what, _first_line(exc))
                self.compiled = None
        return self.eager(inputs)


def _check_shared_settings(pairs: list[PairInput]) -> None:
    if not pairs:
        raise ValueError("train_pack needs at least one pair")
    first = pairs[0].config
    for pair in pairs[1:]:
        differ = [name for name in PACK_SHARED if getattr(pair.config, name) != getattr(first, name)]
        if differ:
            raise ValueError(
                f"pairs {pairs[0].pair_id!r} and {pair.pair_id!r} differ in {', '.join(differ)}: "
                f"pairs trained in one pack must share {', '.join(PACK_SHARED)}"
            )
    ids = [pair.pair_id for pair in pairs]
    if len(set(ids)) != len(ids):
        raise ValueError("pair ids in a pack must be unique")


# --- results ----------------------------------------------------------------------------------------------------


def _result(run: PairRun, generator, facts: dict, started: float) -> MethodResult | TrainingError:
    try:
        output = run.output(generator)
    except TrainingError as exc:
        return exc
    seconds = time.perf_counter() - started
    meta = {
        "config": run.config.to_dict(),
        "seed": run.config.seed,
        **facts,
        "backbone_resize": {"rule": "torchvision Resize(224, max_size=480)", "antialias": run.config.antialias},
        "seconds": seconds,  # wall time from the start of the pack until this pair was done
        "seconds_share": seconds / facts["pack_size"],  # its share of the device time when its pack-mates took as long
        "steps": run.config.steps,
        "resumed_from_step": run.start_step,
        "seconds_per_step": seconds / max(1, run.config.steps - run.start_step),
        **peak_memory(facts["device"]),
        "structure_size": list(run.structure.shape[-2:]),
        "appearance_size": list(run.appearance.shape[-2:]),
        "final_losses": run.losses[-1] if run.losses else {},
    }
    return MethodResult(output=output, losses=run.losses, meta=meta)


def _run_facts(backbone: DinoBackbone, device: torch.device, precision: torch.dtype, pair_ids: list[str]) -> dict:
    return {
        "backbone": backbone.spec,
        "weights_id": backbone.weights_id,
        "random_backbone": backbone.is_random,
        "device": str(device),
        "device_name": device_name(device),
        "precision": str(precision).replace("torch.", ""),
        "pack_size": len(pair_ids),  # pairs trained together (1: alone); results do not depend on it
        "torch_version": torch.__version__,
    }


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _progress_bar(enabled: bool, active: list[PairRun]):
    """A bar over every pair's steps, or None."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    total = sum(run.config.steps for run in active)
    initial = sum(run.start_step for run in active)
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
