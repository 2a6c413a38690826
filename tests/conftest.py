"""Shared fixtures: a tiny scenario that trains in well under a second."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "rounds": 3,
    "data": {"name": "digits", "partition": {"name": "dirichlet", "alpha": 0.5}},
    "clients": {"num": 4, "per_round": 3},
    "workload": {"name": "classification", "model": "mlp", "hidden": 32, "lr": 0.1},
    "strategy": {"name": "fedavg", "aggregator": {"name": "mean"}},
    "eval": {"every": 1},
}


@pytest.fixture
def tiny() -> dict[str, Any]:
    """A fresh copy of the tiny scenario as plain data, to modify per test."""
    return copy.deepcopy(TINY)


@pytest.fixture
def write_scenario(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write scenario data (or raw text) to a YAML file and return its path."""

    def write(content: dict[str, Any] | str, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        return path

    return write


@pytest.fixture
def forget_plugins() -> Iterator[None]:
    """The test may load plugins; afterwards the registries hold the built-ins only again."""
    from fedsim import plugins
    from fedsim.registry import load_components, registrations, rollback

    load_components()  # so that the built-ins are part of what is restored
    before, loaded = registrations(), dict(plugins._loaded)
    yield
    rollback(before)
    plugins._loaded.clear()
    plugins._loaded.update(loaded)


@pytest.fixture
def as_flower_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps every new Message with the task running it: pretend to be one, for tests
    that build Messages outside a run (``pytestmark = pytest.mark.usefixtures(...)``)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
