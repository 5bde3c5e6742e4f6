"""Named points in the run machinery where a TEST can act (crash a worker, slow a pair, hold a command); no-ops
in production.

Production code marks a point and passes what a test may need, nothing more:

    hooks.point("pair.written", pair_id=job.pair_id, attempt=attempt)

Nothing happens unless the environment names a hook module in SPLICE_TEST_HOOKS (a file path, or an importable
module name). That module defines `hook(point: str, **context)`, called at every point reached; the scenarios
(which pair dies, how long a chunk sleeps) live in that module and in the tests, never in production types.
The environment reaches every process a test starts: subprocesses inherit it, and Ray tasks and actors get it
through `runtime_env()` (every SPLICE_TEST_* variable), so a worker in an already running Ray session sees the
hooks of the test that submitted its task.

Points (context in brackets): pair.started [pair_id, attempt, storage, pair_dir] once a worker has recorded its
attempt; pair.inputs_read [pair_id]; pair.written [pair_id, attempt] once the pair's _SUCCESS is written;
evaluate.chunk [pairs] before an evaluation chunk on Ray; evaluate.before_save; report.before_publish;
train_net.checkpoint [step] once rank 0 of `splice train-net` has written a checkpoint.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

HOOKS_ENV = "SPLICE_TEST_HOOKS"
TEST_ENV_PREFIX = "SPLICE_TEST_"  # variables forwarded to Ray workers with the hooks

_loaded: dict[str, object] = {}  # spec -> module, one load per process


def point(name: str, **context) -> None:
    """Mark the point `name`: calls the test hook module's `hook(name, **context)` if one is installed."""
    spec = os.environ.get(HOOKS_ENV)
    if spec:
        _module(spec).hook(name, **context)


def runtime_env() -> dict | None:
    """Ray `runtime_env` that carries the installed test hooks (and their SPLICE_TEST_* settings) to workers;
    None when no hooks are installed, so production tasks keep the job's own environment."""
    if not os.environ.get(HOOKS_ENV):
        return None
    return {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(TEST_ENV_PREFIX)}}


def _module(spec: str):
    module = _loaded.get(spec)
    if module is None:
        if spec.endswith(".py"):
            location = importlib.util.spec_from_file_location("splice_test_hooks", spec)
            if location is None:
                raise ImportError(f"{HOOKS_ENV}={spec}: not a readable Python file")
            module = importlib.util.module_from_spec(location)
            sys.modules[location.name] = module  # before running it, as an import would (dataclasses look it up)
            location.loader.exec_module(module)
        else:
            module = importlib.import_module(spec)
        _loaded[spec] = module
    return module
