"""The layer table of DESIGN.md, enforced on the source: who may import whom.

| layer | modules | never imports |
| foundation | fedsim's registry, errors, scenario, checkpoint and data | flwr, opacus, clients, |
|            | modules                                                  | strategies, the app   |
| workloads | clients/ | flwr, strategies, the app |
| aggregation math | strategies/ but its Flower strategies | flwr, clients, the app |
| Flower strategies | strategies/flower/ and the registrations that build them | clients, the app |
|                   | (strategies/{fedavg,fedlaavg}.py, which import Flower lazily) |         |
| app | the rest of fedsim/ | — |
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FOUNDATION = (
    "fedsim.registry",
    "fedsim.errors",
    "fedsim.plugins",
    "fedsim.scenario",
    "fedsim.checkpoint",
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
)
FLOWER_STRATEGIES = ("strategies.flower", "strategies.fedavg", "strategies.fedlaavg")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _forbidden(module: str) -> tuple[str, ...]:
    app = tuple(
        m
        for m in (_module(p) for p in (ROOT / "fedsim").rglob("*.py"))
        if not _within(m, FOUNDATION)
    )
    app = tuple(m for m in app if m != "fedsim")
    if _within(module, FOUNDATION):
        return ("flwr", "opacus", "clients", "strategies", *app)
    if _within(module, ("clients",)):
        return ("flwr", "strategies", *app)
    if _within(module, FLOWER_STRATEGIES):
        return ("clients", *app)
    if _within(module, ("strategies",)):
        return ("flwr", "clients", *app)
    return ()


SOURCES = sorted(
    p for folder in ("fedsim", "clients", "strategies") for p in (ROOT / folder).rglob("*.py")
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_the_layers_below_it(path: Path) -> None:
    module = _module(path)
    forbidden = _forbidden(module)
    wrong = sorted(name for name in _imports(path) if _within(name, forbidden))
    assert not wrong, f"{module} may not import {wrong} (see the layer table above)"


def test_the_table_covers_every_layer() -> None:
    # The checks above would pass vacuously if the table named no module of a layer.
    modules = [_module(p) for p in SOURCES]
    for layer in (FOUNDATION, ("clients",), FLOWER_STRATEGIES, ("strategies",)):
        assert any(_within(m, layer) for m in modules), layer


def test_validating_every_scenario_imports_neither_flower_nor_opacus() -> None:
    # `fedsim validate` is what a user runs on a laptop before a cluster job: it must stay light.
    script = """
import json, sys
from pathlib import Path
from fedsim.scenario import parse, read
from fedsim.sweep import expand
for path in sorted(Path("scenarios").glob("*.yaml")):
    raw = read(path)
    expand(raw, str(path)) if "sweep" in raw else parse(raw, str(path))
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert "fedsim" in loaded and "strategies" in loaded  # it did load the registries
    assert not loaded & {"flwr", "opacus", "ray"}, sorted(loaded & {"flwr", "opacus", "ray"})
