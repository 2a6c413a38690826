"""Registries of named components: one per kind, each entry a factory plus its pydantic params.

A scenario names a component as ``{name: krum, f: 2}``: ``name`` picks the entry, the other keys are
validated by that entry's params model (extra keys forbidden). Adding a rule is one decorator.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T")


class Params(BaseModel):
    """Base of every component's parameters: typed, frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component(BaseModel):
    """A scenario's reference to a registered component: a ``name`` plus that entry's options."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DatasetParams(Params):
    """Base of a dataset's params; its class declares what kind of data the dataset is.

    ``kind`` is matched against a workload's ``reads`` and a data attack's ``poisons``; the
    dataset's ``data.partition`` is a component of the ``partitioners`` registry, by default
    ``default_partition``.
    """

    kind: ClassVar[str] = "samples"
    partitioners: ClassVar[str] = "partitioner"
    default_partition: ClassVar[str] = "iid"

    def check(self) -> list[str]:
        """Cheap checks of the user's files (they exist, hold the names asked for), run when a
        scenario is validated; one ``field: message`` line per problem. The full checks come
        when the dataset is loaded, before round 1."""
        return []


class GraphDatasetParams(DatasetParams):
    """A graph's nodes are split among clients with the graph's structure in view."""

    kind: ClassVar[str] = "graph"
    partitioners: ClassVar[str] = "graph_partitioner"
    default_partition: ClassVar[str] = "random"


class DomainDatasetParams(DatasetParams):
    """Images of people (identity, camera) from several domains, the last one the unlabelled
    target; dealt out one domain per client (``fedsim.reid_data``)."""

    kind: ClassVar[str] = "domains"
    partitioners: ClassVar[str] = "domain_partitioner"
    default_partition: ClassVar[str] = "domains"


class OpenDGDatasetParams(DatasetParams):
    """Source domains with partly different label sets and an unseen target domain with unknown
    classes, dealt out one domain (or a share of every domain) per client
    (``fedsim.opendg_data``)."""

    kind: ClassVar[str] = "opendg"
    partitioners: ClassVar[str] = "opendg_partitioner"
    default_partition: ClassVar[str] = "domains"


class SceneDatasetParams(DatasetParams):
    """One hyperspectral scene (a band cube and a ground-truth map); dealt out as tiles of the
    scene (``fedsim.hsi_data``)."""

    kind: ClassVar[str] = "scene"
    partitioners: ClassVar[str] = "scene_partitioner"
    default_partition: ClassVar[str] = "tiles"


@dataclass(frozen=True)
class Ref:
    """Marks a params field that is itself a component of another kind (e.g. ``aggregator``)."""

    kind: str


@dataclass(frozen=True)
class UserPath:
    """Marks a params field that is a path to the user's files (``Annotated[str, UserPath()]``):
    a scenario resolves a relative one against its file's folder, so runs, sweeps and workers
    find the files from any working directory."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    params: type[Params]
    factory: Callable[[Any], T]

    @property
    def doc(self) -> str:
        return (self.factory.__doc__ or "").strip().split("\n")[0]

    def declared(self, name: str, default: Any = None) -> Any:
        """A capability the entry declares on its params class (e.g. a dataset's ``kind``)."""
        return getattr(self.params, name, default)


class UnknownComponentError(LookupError):
    """A name that no entry of the registry has; the message lists the choices."""


class DuplicateComponentError(ValueError):
    """A second registration of a name (e.g. a plugin's, clashing with a built-in)."""


class Registry(Generic[T]):
    """Named factories of one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        REGISTRIES[kind] = self

    def register(
        self, name: str, params: type[Params] = Params
    ) -> Callable[[Callable[[Any], T]], Callable[[Any], T]]:
        def decorate(factory: Callable[[Any], T]) -> Callable[[Any], T]:
            if name in self._entries:
                first = self._entries[name].factory.__module__
                raise DuplicateComponentError(
                    f"{self.kind} {name!r} is registered twice: by {first} and again by "
                    f"{factory.__module__}; rename one of them"
                )
            self._entries[name] = Entry(name, params, factory)
            return factory

        return decorate

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(
                unknown_name_message(self.kind, name, self.names())
            ) from None

    def params(self, spec: Component) -> Params:
        """The validated params of ``spec`` (raises pydantic's ValidationError)."""
        return self.entry(spec.name).params.model_validate(spec.options)

    def build(self, spec: Component | str, **options: Any) -> T:
        """Instantiate the component that ``spec`` names."""
        if isinstance(spec, str):
            spec = Component(name=spec, **options)
        return self.entry(spec.name).factory(self.params(spec))


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    close = difflib.get_close_matches(name, available, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown {kind} {name!r}; {hint}available: {', '.join(available) or 'none'}"


REGISTRIES: dict[str, Registry[Any]] = {}

DATASETS: Registry[Any] = Registry("dataset")
PARTITIONERS: Registry[Any] = Registry("partitioner")
GRAPH_PARTITIONERS: Registry[Any] = Registry("graph_partitioner")  # nodes of a graph dataset
DOMAIN_PARTITIONERS: Registry[Any] = Registry("domain_partitioner")  # a domain dataset's people
OPENDG_PARTITIONERS: Registry[Any] = Registry("opendg_partitioner")  # open DG source domains
SCENE_PARTITIONERS: Registry[Any] = Registry("scene_partitioner")  # a scene's pixels, as tiles
WORKLOADS: Registry[Any] = Registry("workload")
STRATEGIES: Registry[Any] = Registry("strategy")
AGGREGATORS: Registry[Any] = Registry("aggregator")
PREAGGREGATORS: Registry[Any] = Registry("preaggregator")
ATTACKS: Registry[Any] = Registry("attack")
SERVER_OPTIMISERS: Registry[Any] = Registry("server_optimiser")
AVAILABILITY: Registry[Any] = Registry("availability")
SPARSITY: Registry[Any] = Registry("sparsity")
COMPRESSORS: Registry[Any] = Registry("compressor")
MODELS: Registry[Any] = Registry("model")  # a workload's network: (input_shape, classes) -> Module
ANALYSES: Registry[Any] = Registry("analysis")  # instruments on any workload's model (``analysis``)

# Modules whose import registers components; imported lazily so that layers stay independent.
_COMPONENT_MODULES = (
    "fedsim.data",
    "fedsim.files",
    "fedsim.partition",
    "fedsim.graphs",
    "fedsim.mbo_tasks",
    "fedsim.reid_data",
    "fedsim.avgk_data",
    "fedsim.opendg_data",
    "fedsim.infoplane",
    "fedsim.hsi_data",
    "clients",
    "strategies",
)


def load_components() -> None:
    """Import every module that registers components, and installed plugins (idempotent)."""
    for module in _COMPONENT_MODULES:
        importlib.import_module(module)
    importlib.import_module("fedsim.plugins").load_entry_points()


def registrations() -> dict[str, set[str]]:
    """The names each registry holds now, to ``rollback`` to."""
    return {kind: set(registry._entries) for kind, registry in REGISTRIES.items()}


def rollback(before: dict[str, set[str]]) -> None:
    """Forget entries registered since ``before`` (a plugin that failed half-way)."""
    for kind, registry in REGISTRIES.items():
        for name in set(registry._entries) - before.get(kind, set()):
            del registry._entries[name]


def resolve(
    spec: Component, kind: str, path: str, base: Path | None = None
) -> tuple[Component, list[str]]:
    """Validate ``spec`` against the ``kind`` registry, filling in every default.

    Returns the resolved component (all params explicit, nested components resolved, relative
    ``UserPath`` fields made absolute from ``base``, the working directory by default) and the
    problems found, each as ``path.to.field: message``.
    """
    registry = REGISTRIES[kind]
    if spec.name not in registry:
        msg = unknown_name_message(kind, spec.name, registry.names())
        return spec, [f"{path}.name: {msg}"]
    try:
        params = registry.params(spec)
    except ValidationError as err:
        return spec, [f"{path}{loc}: {msg}" for loc, msg in pydantic_errors(err)]
    resolved: dict[str, Any] = params.model_dump()
    problems: list[str] = []
    for field, info in type(params).model_fields.items():
        ref = next((m for m in info.metadata if isinstance(m, Ref)), None)
        value = getattr(params, field)
        if isinstance(value, str) and any(isinstance(m, UserPath) for m in info.metadata):
            resolved[field] = os.path.normpath((base or Path.cwd()) / Path(value).expanduser())
        if ref is None or value is None:
            continue
        if isinstance(value, Component):
            sub, errs = resolve(value, ref.kind, f"{path}.{field}", base)
            resolved[field] = sub.model_dump()
            problems += errs
        else:  # a list of components, applied in order
            resolved[field] = []
            for i, item in enumerate(value):
                sub, errs = resolve(item, ref.kind, f"{path}.{field}[{i}]", base)
                resolved[field].append(sub.model_dump())
                problems += errs
    return Component(name=spec.name, **resolved), problems


def pydantic_errors(err: ValidationError) -> list[tuple[str, str]]:
    """Pydantic errors as (``.dotted.path``, message) pairs."""
    out = []
    for e in err.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not a parameter of this component)"
        elif e["type"] == "value_error":  # our own validators' messages read best unprefixed
            msg = msg.removeprefix("Value error, ")
        out.append((loc, msg))
    return out
