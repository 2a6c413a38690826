"""Scaling out on Flower's real engines: an existing Ray cluster, and the deployment engine.

Each test starts its own daemons (a Ray head; a SuperLink and two SuperNodes) on loopback, in
their own sessions, with free ports and private temp/home directories, and stops every process
it started (by process group and by process tree, never by name) even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    return shutil.which(name, path=str(BIN)) or name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[Any], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s:\n{log.read_text()}")


class Daemons:
    """Processes started in their own sessions; ``stop()`` ends them and everything they spawned.

    Ray's daemons outlive ``ray start`` (reparented, but still in its process group); Flower's
    SuperLink starts its ``flower-superexec`` in a new session (still its child). So both the
    groups and the process trees are signalled: SIGTERM, a grace period, then SIGKILL. (Not
    ``ray stop``: it stops every Ray instance on the machine, other tests' included.)
    """

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, name: str, command: list[str]) -> tuple[subprocess.Popen[Any], Path]:
        log = self.logs / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                command,
                env=self.env,
                cwd=self.logs,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc, log

    def _alive(self) -> list[psutil.Process]:
        """Running processes in the started processes' groups (their pids are the pgids)."""
        groups = {proc.pid for proc in self.procs}
        members = []
        for found in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getpgid(found.pid) in groups:
                    members.append(found)
        return _running(members)

    def stop(self, grace: float = 5.0) -> list[str]:
        """Stop everything; return what is still alive afterwards (should be nothing)."""
        tree: list[psutil.Process] = []
        for proc in self.procs:
            try:
                root = psutil.Process(proc.pid)
                tree += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            targets = list({p.pid: p for p in [*tree, *self._alive()]}.values())
            for proc in self.procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            for target in targets:
                with contextlib.suppress(psutil.Error):
                    target.send_signal(sig)  # psutil refuses a reused pid
            deadline = time.monotonic() + grace
            while (alive := _running(targets)) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not alive and not self._alive():
                break
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)  # reap the ones this process started
        left = [*self._alive(), *_running(tree)]
        return sorted({f"{p.pid} {' '.join(_cmdline(p))}" for p in left})


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running; a zombie (dead, not yet reaped by its parent) does not count."""
    running = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
    return running


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return ["?"]


def central_accuracy_rounds(out: Path) -> list[int]:
    metrics = pd.read_csv(out / "metrics.csv")
    central = metrics[(metrics.scope == "server") & (metrics.metric == "accuracy")]
    assert central["value"].between(0, 1).all()
    return list(central["round"])


@pytest.mark.flower
def test_flower_engine_on_an_existing_ray_cluster(tiny, write_scenario, tmp_path) -> None:
    tiny["resources"] = {"client_cpus": 1}  # 2 actors on the 2-CPU head
    scenario, out = write_scenario(tiny), tmp_path / "run"
    # Ray puts unix sockets under its temp dir: keep the path short.
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",  # actors on the cluster inherit the raylet's environment
    }
    ray = Daemons(tmp_path, env)
    try:
        head, log = ray.start(
            "ray-head",
            [
                tool("ray"), "start", "--head", "--port", str(port), "--num-cpus", "2",
                "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(ray_tmp),
                "--ray-client-server-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()),
            ],
        )  # fmt: skip
        assert head.wait(timeout=60) == 0, log.read_text()  # returns once the head is up
        command = [
            tool("fedsim"), "run", str(scenario),
            "--set", "engine=flower", "--set", f"resources.ray_address=127.0.0.1:{port}",
            "--set", "rounds=2", "--out", str(out), "--no-progress",
        ]  # fmt: skip
        done = subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
        )
        drivers = list(ray_tmp.glob("session_*/logs/*driver*"))
    finally:
        left = ray.stop(grace=1.0)  # gcs_server and raylet ignore SIGTERM: as `ray stop --force`
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert drivers, "fedsim did not run as a driver on the cluster it was given"
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"
    assert central_accuracy_rounds(out) == [1, 2]
    assert not left, f"processes left running: {left}"


@pytest.mark.flower
def test_deployment_engine_superlink_and_two_supernodes(tiny, write_scenario, tmp_path) -> None:
    tiny.update(rounds=2, clients={"num": 2, "per_round": 2})
    # Central evaluation only: every ClientApp call is a fresh process here (~5 s of imports).
    tiny["eval"] = {"every": 1, "clients": 0.0}
    scenario, out, home = write_scenario(tiny), tmp_path / "run", tmp_path / "flwr-home"
    link, nodes = free_port(), [free_port(), free_port()]
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink.deploy]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # they spawn flower-superexec
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "OMP_NUM_THREADS": "1",
    }
    flower = Daemons(tmp_path, env)
    try:
        superlink, log = flower.start(
            "superlink",
            [
                tool("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                "--database", ":flwr-in-memory:", "--host", "127.0.0.1", "--port", str(link),
            ],
        )  # fmt: skip
        wait_for_port(link, superlink, log)
        for partition, port in enumerate(nodes):
            flower.start(
                f"supernode-{partition}",
                [
                    tool("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                    "--port", str(port),
                    "--node-config", f"partition-id={partition} num-partitions={len(nodes)}",
                ],
            )  # fmt: skip
        command = [
            tool("flwr"), "run", str(ROOT), "deploy", "--stream",
            "-c", f"scenario='{scenario}' out='{out}' progress=false",
        ]  # fmt: skip
        done = subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
        )
    finally:
        left = flower.stop()
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.log")))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"
    assert central_accuracy_rounds(out) == [1, 2]
    metrics = pd.read_csv(out / "metrics.csv")
    trained = metrics[(metrics.scope == "federated") & (metrics.metric == "train_clients")]
    assert list(trained["round"]) == [1, 2] and (trained["value"] == 2).all()
    assert not left, f"processes left running: {left}"
