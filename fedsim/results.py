"""The run directory: what a run leaves behind, written as it goes so a crash loses little.

``scenario.yaml`` (resolved), ``metrics.csv`` (tidy: round, scope, client, metric, value; flushed
each round), ``events.jsonl`` (failures, skipped rounds, timings), ``manifest.json`` (versions,
seed, command, wall time, status) and ``model.pt`` (the final global model, written atomically).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from fedsim.errors import UserError
from fedsim.scenario import Scenario

METRICS_HEADER = ("round", "scope", "client", "metric", "value")

# Scopes of metrics.csv rows.
SERVER = "server"  # the server's own measurements, e.g. central test accuracy
CLIENT = "client"  # one client's value (the client column holds its id)
FEDERATED = "federated"  # clients' values aggregated, weighted by their sample counts


def default_run_dir(scenario: Scenario, root: str | Path = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{scenario.name}-{stamp}"


def prepare(path: Path, scenario: Scenario, command: str) -> None:
    """Create the run directory with the resolved scenario and a manifest; never overwrite a run."""
    if (path / "metrics.csv").exists():
        raise UserError(
            f"{path} already holds a run (metrics.csv exists); choose another --out "
            f"or remove that directory"
        )
    path.mkdir(parents=True, exist_ok=True)
    _atomic_write(path / "scenario.yaml", scenario.to_yaml().encode())
    manifest = {
        "name": scenario.name,
        "seed": scenario.seed,
        "command": command,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": _versions(),
        "status": "prepared",
    }
    _atomic_write(path / "manifest.json", json.dumps(manifest, indent=2).encode())


class RunWriter:
    """Appends a run's metrics and events to its directory (made by ``prepare``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._started = time.perf_counter()
        self._rows: list[tuple[Any, ...]] = []
        new = not (path / "metrics.csv").exists()
        self._metrics_file = open(path / "metrics.csv", "a", newline="")  # noqa: SIM115
        self._csv = csv.writer(self._metrics_file)
        if new:
            self._csv.writerow(METRICS_HEADER)
        self._events = open(path / "events.jsonl", "a")  # noqa: SIM115
        self.update_manifest(status="running")

    def metrics(
        self, round: int, scope: str, client: int | None, values: Mapping[str, float]
    ) -> None:
        """Queue rows for the current round (written by ``flush``)."""
        for name, value in values.items():
            self._rows.append((round, scope, "" if client is None else client, name, float(value)))

    def event(self, kind: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": kind, **fields}
        self._events.write(json.dumps(record, default=str) + "\n")
        self._events.flush()

    def flush(self) -> None:
        """Write the queued rows: called once a round, so metrics.csv never holds half a round."""
        self._csv.writerows(self._rows)
        self._rows.clear()
        self._metrics_file.flush()
        os.fsync(self._metrics_file.fileno())

    def save_model(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        tmp = self.path / "model.pt.tmp"
        torch.save(dict(state_dict), tmp)
        os.replace(tmp, self.path / "model.pt")

    def update_manifest(self, **fields: Any) -> None:
        path = self.path / "manifest.json"
        manifest = json.loads(path.read_text()) if path.exists() else {}
        manifest.update(fields)
        _atomic_write(path, json.dumps(manifest, indent=2).encode())

    def close(self, status: str, **fields: Any) -> None:
        self.flush()
        wall = round(time.perf_counter() - self._started, 3)
        self.update_manifest(status=status, wall_time_s=wall, **fields)
        self._metrics_file.close()
        self._events.close()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    out = {}
    for package in ("fedsim", "flwr", "torch", "numpy", "pydantic"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out
