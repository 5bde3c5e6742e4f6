"""The connection to Ray, for every command that uses it (`splice run`, `splice evaluate`, `splice train-net`):
connect or start one, check an address answers before Ray's minutes of retries, keep the caller's SIGTERM handler,
and read the cluster's resources (GPUs per task, how many tasks fit at once)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import threading

import ray

from pipeline.errors import SpliceError

log = logging.getLogger(__name__)


def address(given: str | None) -> str | None:
    """The cluster to use: `given` (--address), else RAY_ADDRESS; None: an embedded Ray on this machine."""
    return given or os.environ.get("RAY_ADDRESS")


def connect_ray(address: str | None, runtime_env: dict | None = None, **options) -> bool:
    """Use an initialised Ray as it is; else connect to address / RAY_ADDRESS, else start one here.

    Returns whether this call initialised Ray. 'local' (or no address) always starts a fresh instance here,
    never a stray cluster that another `ray start` left running. `runtime_env` (e.g. plug-ins' py_modules) goes
    with the job to every worker; a Ray initialised by the caller keeps its own (its workers import plug-ins
    from their own path: a plug-in .py file given by its path is found there on one machine).
    """
    if ray.is_initialized():
        if runtime_env:
            log.info(
                "Ray was initialised before: plug-ins %s are not shipped to its workers (they import them from "
                "their own path)",
                ", ".join(runtime_env.get("py_modules", [])),
            )
        return False
    if runtime_env:
        options["runtime_env"] = runtime_env
    with _keep_sigterm_handler():
        return _connect(address, **options)


@contextlib.contextmanager
def _keep_sigterm_handler():
    """ray.init installs its own SIGTERM handler (abort, no cleanup); keep the caller's (the CLI's releases locks)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _connect(given: str | None, **options) -> bool:
    target = address(given)
    if not target or target == "local":
        ray.init(address="local", include_dashboard=False, **options)
        return True
    check_listening(target)
    try:
        ray.init(address=target, **options)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SpliceError(
            f"cannot connect to the Ray cluster at {target} ({reason}). Check the address (`ray status` on the head "
            f"node); if the cluster uses token authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
            f"RAY_AUTH_TOKEN_PATH) here as on the head"
        ) from exc
    return True


def check_listening(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes, when a HOST:PORT (or ray://HOST:PORT) address has nothing listening:
    Ray itself keeps retrying a silent address for minutes."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)/?", address.strip())
    if not match:  # 'auto' and other forms are Ray's to resolve
        return
    host, port = match.group(1), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise SpliceError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}): check the address (the head "
            f"node prints it at `ray start --head`; `ray status` there shows it) and that its port is "
            f"reachable from here"
        ) from exc


def gpus_per_task(asked: float | None, started_embedded: bool) -> float:
    """GPUs each task asks for: `asked` (--gpus-per-task), or 1 where the cluster has GPUs and 0 where it has none."""
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    if asked is None or (started_embedded and not has_gpus):  # auto, or nothing could ever provide a GPU here
        if asked:
            log.warning("no GPU on this machine: pairs run on CPUs (--gpus-per-task %s ignored)", asked)
        return 1.0 if has_gpus else 0.0
    if asked and not has_gpus:
        log.warning("the cluster has no GPU now: pairs wait until GPU nodes join (--gpus-per-task 0 runs them on CPUs)")
    return asked


def slots(cpus_per_task: float, gpus_per_task: float) -> int:
    """How many tasks of this shape the cluster runs at once now."""
    resources = ray.cluster_resources()
    if gpus_per_task:
        return max(1, int(resources.get("GPU", 0) / gpus_per_task))
    return max(1, int(resources.get("CPU", 1) / max(cpus_per_task, 1e-3)))


def cancel(refs: list) -> None:
    """Stop in-flight tasks (politely, then by killing their workers), e.g. so none outlives a driver's lock."""
    for ref in refs:
        ray.cancel(ref)
    _, still = ray.wait(refs, num_returns=len(refs), timeout=5)
    for ref in still:
        ray.cancel(ref, force=True)
    if still:
        ray.wait(still, num_returns=len(still), timeout=10)
