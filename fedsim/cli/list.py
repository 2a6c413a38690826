"""``fedsim list [KIND]``: every registered component with its parameters and defaults."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo
from rich.console import Console
from rich.table import Table

from fedsim import plugins
from fedsim.cli.common import user_errors
from fedsim.errors import UserError
from fedsim.registry import REGISTRIES, Params, Ref, load_components, unknown_name_message


@user_errors
def list_components(
    kind: Annotated[
        str | None, typer.Argument(help="Only this kind (dataset, partitioner, aggregator, …).")
    ] = None,
    plugin: Annotated[
        list[str] | None,
        typer.Option(
            help="Import this plugin first (a dotted module or a .py file; repeatable); "
            "installed plugins are always listed.",
            metavar="MODULE|FILE",
        ),
    ] = None,
) -> None:
    """List registered components (datasets, partitioners, workloads, strategies, …)."""
    load_components()
    plugins.load(plugin or [])
    kinds = sorted(REGISTRIES)
    if kind is not None and kind not in REGISTRIES:
        raise UserError(unknown_name_message("kind", kind, kinds))
    console = Console(highlight=False)
    for name in [kind] if kind else kinds:
        table = Table(title=f"{name}", title_justify="left", show_lines=False, expand=False)
        table.add_column("name", style="bold cyan", no_wrap=True)
        table.add_column("parameters (default)")
        table.add_column("what it does")
        for entry in REGISTRIES[name]:
            table.add_row(entry.name, describe(entry.params), entry.doc)
        console.print(table)


def describe(params: type[Params]) -> str:
    fields = params.model_fields
    if not fields:
        return "–"
    return "\n".join(
        f"{key}: {_type(info)} {_default(info)}"
        if info.is_required()
        else f"{key}: {_type(info)} = {_default(info)}"
        for key, info in fields.items()
    )


def _type(info: FieldInfo) -> str:
    ref = next((m for m in info.metadata if isinstance(m, Ref)), None)
    if ref is not None:  # a nested component: name its kind, `fedsim list KIND` shows the choices
        return ref.kind
    return _type_name(info.annotation)


def _type_name(annotation: Any) -> str:
    """A type as a scenario's author reads it: ``int | list[int]``, ``str | None``, ``1 | 3``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:  # a nested component shows its kind; constraints are not shown
        ref = next((m for m in annotation.__metadata__ if isinstance(m, Ref)), None)
        return ref.kind if ref is not None else _type_name(args[0])
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if annotation is type(None):
        return "None"
    if origin is not None and args:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(map(_type_name, args))}]"
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("fedsim.registry.", "")


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "(required)"
    value = info.get_default(call_default_factory=True)
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    return repr(value)
