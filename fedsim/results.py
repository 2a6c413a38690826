"""The run directory: what a run leaves behind, written as it goes so a crash loses little.

``scenario.yaml`` (resolved), ``metrics.csv`` (tidy: round, scope, client, metric, value; flushed
each round), ``events.jsonl`` (failures, skipped rounds, timings), ``manifest.json`` (versions,
seed, command, wall time, status), ``checkpoint.pt`` (the state after the last completed round,
from which ``--resume`` continues) and ``model.pt`` (the final global model). Files that are
replaced are written to a temporary file and renamed, so a crash never leaves half of one.
The trackers a scenario asks for (``fedsim.tracking``) get each round's rows as they are flushed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import socket
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from fedsim import checkpoint, plugins
from fedsim.checkpoint import Checkpoint
from fedsim.errors import UserError
from fedsim.scenario import Scenario

METRICS_HEADER = ("round", "scope", "client", "metric", "value")


class Row(NamedTuple):
    """One line of metrics.csv; ``client`` is None for server and federated rows."""

    round: int
    scope: str
    client: int | None
    metric: str
    value: float


class Tracker(Protocol):
    """Somewhere else metric rows go as they are flushed (``fedsim.tracking``)."""

    name: str

    def log(self, rows: Sequence[Row]) -> None:
        """Rows just written to metrics.csv: a round's, after it completed."""

    def close(self, status: str) -> None:
        """The run stopped with this status (completed, failed, interrupted)."""


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
        "plugins": [plugin.as_dict() for plugin in plugins.used_by(scenario.plugins)],
        "status": "prepared",
    }
    _atomic_write(path / "manifest.json", json.dumps(manifest, indent=2).encode())


def run_status(path: Path) -> str | None:
    """The status a run directory's manifest records, or None if it has none."""
    manifest = path / "manifest.json"
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text()).get("status")


def read_manifest(path: Path) -> dict[str, Any]:
    """The run directory's manifest.json as a dict (empty when there is none)."""
    manifest = path / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.exists() else {}


def update_manifest(path: Path, **fields: Any) -> None:
    """Set top-level fields of the run directory's manifest.json (atomically)."""
    manifest = read_manifest(path)
    manifest.update(fields)
    _atomic_write(path / "manifest.json", json.dumps(manifest, indent=2).encode())


class RunWriter:
    """Appends a run's metrics and events to its directory (made by ``prepare``).

    ``resume_after=r`` continues a run after round r: rows of later rounds (a round cut short by
    a crash) are dropped, and so is a last line that was only half written. ``trackers`` get
    every row as it is flushed; one that fails is recorded (event ``tracker_failed``), warned
    about and left out for the rest of the run, which metrics.csv still holds in full.
    """

    def __init__(
        self, path: Path, resume_after: int | None = None, trackers: Sequence[Tracker] = ()
    ) -> None:
        self.path = path
        self._started = time.perf_counter()
        self._rows: list[Row] = []
        self._trackers = list(trackers)
        if resume_after is not None:
            _keep_rounds(path / "metrics.csv", resume_after)
            _drop_partial_line(path / "events.jsonl")
        new = not (path / "metrics.csv").exists()
        self._metrics_file = open(path / "metrics.csv", "a", newline="")  # noqa: SIM115
        self._csv = csv.writer(self._metrics_file)
        if new:
            self._csv.writerow(METRICS_HEADER)
        self._events = open(path / "events.jsonl", "a")  # noqa: SIM115
        manifest = self._manifest()
        resuming = resume_after is not None
        self._earlier_wall = float(manifest.get("wall_time_s", 0.0)) if resuming else 0.0
        self.update_manifest(status="running")

    def metrics(
        self, round: int, scope: str, client: int | None, values: Mapping[str, float]
    ) -> None:
        """Queue rows for the current round (written by ``flush``)."""
        for name, value in values.items():
            self._rows.append(Row(round, scope, client, name, float(value)))

    def event(self, kind: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": kind, **fields}
        self._events.write(json.dumps(record, default=str) + "\n")
        self._events.flush()

    def flush(self) -> None:
        """Write the queued rows: called once a round, so metrics.csv never holds half a round."""
        rows, self._rows = self._rows, []
        self._csv.writerows(rows)  # csv writes a None client as an empty field
        self._metrics_file.flush()
        os.fsync(self._metrics_file.fileno())
        if rows:
            self._track(lambda tracker: tracker.log(rows))

    def save_model(
        self,
        state_dict: Mapping[str, torch.Tensor],
        broadcasts: Mapping[str, Mapping[str, torch.Tensor]],
    ) -> None:
        """The final model (``model.pt``) and, if the workload has exchanges, their last
        broadcasts by exchange name (``broadcasts.pt``), apart so that no name can clash."""
        self._save("model.pt", dict(state_dict))
        if broadcasts:
            self._save("broadcasts.pt", {name: dict(b) for name, b in broadcasts.items()})

    def _save(self, name: str, tensors: dict[str, Any]) -> None:
        tmp = self.path / f"{name}.tmp"
        torch.save(tensors, tmp)
        os.replace(tmp, self.path / name)

    def save_checkpoint(self, state: Checkpoint) -> None:
        """The state after a completed round; written after that round's metrics are flushed."""
        checkpoint.save(self.path, state)
        self.update_manifest(wall_time_s=self._wall())

    def _manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)

    def update_manifest(self, **fields: Any) -> None:
        update_manifest(self.path, **fields)

    def _track(self, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self._trackers):
            try:
                call(tracker)
            except Exception as err:  # a tracker is a copy of metrics.csv: the run goes on
                self._trackers.remove(tracker)
                error = f"{type(err).__name__}: {err}"
                self.event("tracker_failed", tracker=tracker.name, error=error)
                warnings.warn(
                    f"fedsim: tracking to {tracker.name} failed and is off for the rest of "
                    f"this run (metrics.csv has every row): {error}",
                    stacklevel=2,
                )

    def _wall(self) -> float:
        """Wall time of the run so far, over every session that ran it."""
        return round(self._earlier_wall + time.perf_counter() - self._started, 3)

    def close(self, status: str, **fields: Any) -> None:
        self.flush()
        self._track(lambda tracker: tracker.close(status))
        self.update_manifest(status=status, wall_time_s=self._wall(), **fields)
        self._metrics_file.close()
        self._events.close()


CHECKPOINT = checkpoint.FILE


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The last completed round's state, or None when no round completed; loaded safely
    (tensors and plain containers only), a damaged file refused with one clear message."""
    return checkpoint.load(path)


def _keep_rounds(path: Path, completed_rounds: int) -> None:
    """Rewrite metrics.csv with the rows of completed rounds only (atomic)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] if rows and tuple(rows[0]) == METRICS_HEADER else [list(METRICS_HEADER)]
    for row in rows[1:]:
        if len(row) == len(METRICS_HEADER) and row[0].isdigit() and int(row[0]) <= completed_rounds:
            kept.append(row)
    buffer = io.StringIO()
    csv.writer(buffer).writerows(kept)
    _atomic_write(path, buffer.getvalue().encode())


def _drop_partial_line(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        _atomic_write(path, data[: data.rfind(b"\n") + 1])


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
