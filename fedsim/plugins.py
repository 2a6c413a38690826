"""Plugins: the user's own modules, imported before a scenario is validated, that register
components (datasets, partitioners, workloads, models, aggregators, attacks, …) as fedsim's own do.

A scenario names them under ``plugins:`` — a dotted module importable on the path
(``mylab.components``) or a Python file (``./my_model.py``, relative to the scenario file) — and an
installed package may register through the entry-point group ``fedsim.plugins``. Each is imported
once per process; every process that parses the scenario (worker processes, Ray actors) imports
them too, because the resolved scenario names them by absolute path. A plugin that fails leaves
the registries as they were and raises one ``UserError`` naming it and its own exception.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache, partial
from importlib import metadata
from pathlib import Path
from types import ModuleType

from fedsim.errors import UserError
from fedsim.registry import DuplicateComponentError, registrations, rollback

ENTRY_POINT_GROUP = "fedsim.plugins"


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin as the run's manifest records it."""

    spec: str  # as the scenario names it (files: their absolute path)
    module: str
    file: str | None
    sha256: str | None  # of the module's source file

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


_loaded: dict[str, Plugin] = {}


def is_file_spec(spec: str) -> bool:
    """A plugin named by its file (``x.py``, ``./x.py``, ``/a/x.py``), not a dotted module."""
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def absolute(spec: str, base: Path) -> str:
    """A file plugin's path made absolute against ``base`` (the scenario's folder)."""
    if not is_file_spec(spec):
        return spec
    path = Path(spec).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def load(specs: list[str], base: Path | None = None) -> list[Plugin]:
    """Import each plugin (once per process) and return them in order; all of them or none."""
    before, known = registrations(), set(_loaded)
    try:
        return [_load_one(absolute(spec, base or Path.cwd())) for spec in specs]
    except UserError:
        rollback(before)
        for spec in set(_loaded) - known:
            del _loaded[spec]
        raise


def load_entry_points() -> list[Plugin]:
    """Import the plugins installed packages declare in the ``fedsim.plugins`` entry-point group."""
    plugins = []
    for point in _entry_points():
        key = f"entry point {point.name} = {point.value}"
        if key not in _loaded:
            module = _guarded(key, partial(_load_entry_point, point))
            _loaded[key] = _describe(key, module)
        plugins.append(_loaded[key])
    return plugins


def used_by(specs: list[str]) -> list[Plugin]:
    """What a run's manifest records: the scenario's plugins and the installed ones."""
    return [_load_one(spec) for spec in specs] + load_entry_points()


@cache
def _entry_points() -> tuple[metadata.EntryPoint, ...]:
    # Scanning the installed distributions takes ~10 ms: once per process is enough.
    return tuple(metadata.entry_points(group=ENTRY_POINT_GROUP))


# -- importing -------------------------------------------------------------------------------------


def _load_one(spec: str) -> Plugin:
    if spec not in _loaded:
        module = _guarded(spec, lambda: _import_file(spec) if is_file_spec(spec) else _import(spec))
        _loaded[spec] = _describe(spec, module)
    return _loaded[spec]


def _import(name: str) -> ModuleType:
    try:
        found = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # a parent package is missing
        found = None
    if found is None:
        raise UserError(
            f"plugin {name!r}: no module of that name on the Python path; install it, add its "
            "folder to PYTHONPATH, or name its file (e.g. ./components.py)"
        )
    return importlib.import_module(name)


def _import_file(path: str) -> ModuleType:
    file = Path(path)
    if not file.is_file():
        raise UserError(
            f"plugin {path!r}: no such file; a relative plugin path is read from the scenario "
            "file's folder"
        )
    # A name fixed by the path, so that every process (and pickle) agrees on it.
    name = f"fedsim_plugin_{file.stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, file)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"plugin {path!r}: not a Python module; name a .py file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _guarded(spec: str, do_import: Callable[[], ModuleType]) -> ModuleType:
    """Run ``do_import``; on any failure forget what it registered and raise one UserError."""
    before = registrations()
    try:
        return do_import()
    except UserError:
        rollback(before)
        raise
    except DuplicateComponentError as err:
        rollback(before)
        raise UserError(f"plugin {spec!r}: {err}") from None
    except Exception as err:  # the plugin's own bug: name it, show its own exception
        rollback(before)
        where = _where(err)
        raise UserError(
            f"plugin {spec!r} failed to import: {type(err).__name__}: {err}{where}"
        ) from err


def _where(err: BaseException) -> str:
    """`` (file:line)`` of the innermost frame of the error, to find the plugin's own bug."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" ({tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})" if tb is not None else ""


def _load_entry_point(point: metadata.EntryPoint) -> ModuleType:
    """The module an entry point names (or defines the object it names)."""
    obj = point.load()
    return obj if isinstance(obj, ModuleType) else sys.modules[obj.__module__]


def _describe(spec: str, module: ModuleType) -> Plugin:
    file = getattr(module, "__file__", None)
    digest = hashlib.sha256(Path(file).read_bytes()).hexdigest() if file else None
    return Plugin(spec=spec, module=module.__name__, file=file, sha256=digest)
