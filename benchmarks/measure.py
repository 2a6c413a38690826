"""Measuring a command as the benchmarks do: wall time and peak resident memory of its process tree.

The memory figure is the sum of the resident set sizes of the process and all its descendants
(driver, worker processes, Ray daemons and actors), sampled every ``interval`` seconds; the peak
of that sum is reported. Pages shared between processes count once per process, so for a tree
of many processes it is an upper bound on what the machine lost.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psutil

SAMPLE_INTERVAL_S = 0.2


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants."""
    total = 0
    with contextlib.suppress(psutil.Error):  # the root itself has exited
        procs = [root, *root.children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.Error):  # exited between listing and reading
                total += proc.memory_info().rss
    return total


@dataclass(frozen=True)
class Measured:
    """What running one command cost, and what it printed (stdout and stderr together)."""

    command: tuple[str, ...]
    returncode: int
    output: str
    wall_s: float
    peak_rss: int  # bytes, of the whole process tree

    @property
    def peak_gb(self) -> float:
        return self.peak_rss / 1e9

    def check(self, what: str) -> Measured:
        """This measurement, or SystemExit with the command's output when it failed."""
        if self.returncode != 0:
            raise SystemExit(
                f"{what} failed (exit code {self.returncode}): {' '.join(self.command)}\n"
                f"{self.output}"
            )
        return self


def measure(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    interval: float = SAMPLE_INTERVAL_S,
) -> Measured:
    """Run ``command`` to completion; its wall time and the peak RSS of its process tree."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=None if env is None else dict(env),
        cwd=cwd,
    )
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:  # already gone
            return
        while not done.is_set():
            peak = max(peak, tree_rss(root))
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    return Measured(tuple(command), proc.returncode, output, wall, peak)
