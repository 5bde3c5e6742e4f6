"""Plug-ins: methods and metrics from outside this repository, without editing it.

Two ways to name one:
- `py:MODULE:NAME`: NAME in MODULE, where MODULE is an importable module (`mypkg.methods`; on PYTHONPATH or
  installed) or a path to a `.py` file (`py:./my_metric.py:sharpness`, `py:/abs/x.py:fn`). The part after the last
  ':' is the name.
- an entry point of an installed distribution, in group `splice.methods` or `splice.metrics`, e.g. in its
  pyproject.toml: `[project.entry-points."splice.metrics"] sharpness = "mypkg.metrics:sharpness"`; then the
  plug-in is named by the entry point's name alone (`--metrics sharpness`).

Workers of a Ray cluster must be able to import the plug-in too: `ship_path` says what to send them (Ray's
runtime_env `py_modules`): the `.py` file, or the folder of the module's top-level package; nothing for a module
installed in site-packages (install it on every node, e.g. in the cluster's image). A worker that has no file at the
spec's path imports the shipped file by its stem.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
import threading
from pathlib import Path

from pipeline.errors import SpliceError

PY_PREFIX = "py:"
_LOADED: dict[str, object] = {}  # spec -> object, so a plug-in file is executed once per process
_LOCK = threading.Lock()  # pairs of a pack resolve their method from several threads


class PluginError(SpliceError, ValueError):
    """A plug-in spec that cannot be loaded; the message names the spec and what to do."""


def is_py_spec(spec: str) -> bool:
    return spec.startswith(PY_PREFIX)


def canonical(spec: str) -> str:
    """The spec with a .py file's path made absolute, so that workers (other working folders) find the same file."""
    if not is_py_spec(spec):
        return spec
    module_part, sep, name = spec[len(PY_PREFIX) :].rpartition(":")
    if sep and module_part and _is_path(module_part):
        return f"{PY_PREFIX}{Path(module_part).expanduser().resolve()}:{name}"
    return spec


def runtime_env(objects) -> dict | None:
    """Ray runtime_env that lets workers import the plug-ins defining `objects` (None where none needs shipping)."""
    paths = sorted({path for obj in objects if (path := ship_path(obj))})
    return {"py_modules": paths} if paths else None


def load_py(spec: str, what: str) -> object:
    """The object a `py:MODULE:NAME` spec names (imported once per process). `what`: e.g. 'method', for errors."""
    with _LOCK:
        if spec not in _LOADED:
            _LOADED[spec] = _load_py(spec, what)
        return _LOADED[spec]


def _load_py(spec: str, what: str) -> object:
    module_part, sep, name = spec[len(PY_PREFIX) :].rpartition(":")
    if not sep or not module_part or not name.isidentifier():
        raise PluginError(
            f"{what} {spec!r}: expected py:MODULE:NAME, MODULE a module name or a path to a .py file "
            f"(e.g. py:mypkg.plugins:{what.replace('-', '_')} or py:./plugin.py:NAME)"
        )
    module = _import(module_part, spec, what)
    try:
        return getattr(module, name)
    except AttributeError:
        public = sorted(n for n in vars(module) if not n.startswith("_"))[:20]
        raise PluginError(
            f"{what} {spec!r}: {module_part} has no {name!r} (it defines {', '.join(public) or 'nothing'})"
        ) from None


def _is_path(module_part: str) -> bool:
    return module_part.endswith(".py") or "/" in module_part or os.sep in module_part


def _import(module_part: str, spec: str, what: str):
    if _is_path(module_part):
        path = Path(module_part).expanduser()
        if not path.is_file():
            try:  # a Ray worker elsewhere: the file was shipped (py_modules) and is importable by its stem
                return importlib.import_module(path.stem)
            except ImportError:
                raise PluginError(
                    f"{what} {spec!r}: no such file {module_part} (give the path of the plug-in's .py "
                    f"file; on a Ray cluster it is shipped to the workers: README, plug-ins)"
                ) from None
        return _import_file(path.resolve(), spec, what)
    try:
        return importlib.import_module(module_part)
    except ModuleNotFoundError as exc:
        if exc.name and module_part != exc.name and not module_part.startswith(exc.name + "."):
            raise PluginError(
                f"{what} {spec!r}: importing {module_part} failed: it needs module {exc.name!r}, which is not installed"
            ) from None
        raise PluginError(
            f"{what} {spec!r}: module {module_part!r} is not importable: install it, put its folder on "
            f"PYTHONPATH, or give the path of its .py file (py:path/to/file.py:NAME)"
        ) from None
    except Exception as exc:
        raise PluginError(f"{what} {spec!r}: importing {module_part} failed: {_first_line(exc)}") from exc


def _import_file(path: Path, spec: str, what: str):
    # a name of its own, so a plug-in called e.g. json.py never shadows a real module
    name = f"splice_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    # an explicit source loader: a plug-in file need not end in .py (spec_from_file_location finds no loader then)
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    module_spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(module_spec)
    module.__splice_plugin_file__ = str(path)
    sys.modules[name] = module  # before running it: dataclasses and pickling look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PluginError(f"{what} {spec!r}: running {path} failed: {_first_line(exc)}") from exc
    return module


def entry_point_names(group: str) -> list[str]:
    """Names of the installed entry points of `group` (e.g. splice.methods)."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=group)})


def load_entry_point(group: str, name: str, what: str) -> object | None:
    """The object of entry point `name` in `group`, or None if no installed distribution declares one."""
    with _LOCK:
        key = f"{group}:{name}"
        if key in _LOADED:
            return _LOADED[key]
        found = [ep for ep in importlib.metadata.entry_points(group=group) if ep.name == name]
        if not found:
            return None
        try:
            _LOADED[key] = found[0].load()
        except Exception as exc:
            raise PluginError(
                f"{what} {name!r} (entry point {found[0].value!r} in group {group}): loading it failed: "
                f"{_first_line(exc)}"
            ) from exc
        return _LOADED[key]


def ship_path(obj) -> str | None:
    """What a Ray worker needs to import `obj` (a function or an object defined by a plug-in): a .py file or a
    package folder, for runtime_env py_modules; None where there is nothing to ship (installed packages, this
    project's own code)."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    if module is None:
        return None
    plugin_file = getattr(module, "__splice_plugin_file__", None)
    if plugin_file:
        return plugin_file
    top = sys.modules.get(module.__name__.split(".")[0])
    top_file = getattr(top, "__file__", None)
    if not top_file or top.__name__ in ("pipeline", "evaluation", "manifests"):
        return None
    parts = Path(top_file).resolve().parts
    if "site-packages" in parts or "dist-packages" in parts:
        return None  # installed: every node installs it as this one did
    return (
        str(Path(top_file).resolve().parent) if Path(top_file).name == "__init__.py" else str(Path(top_file).resolve())
    )


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"[:300]
