"""Measuring a command as the benchmarks do: wall time and peak resident memory of its process tree.

Memory is sampled over the process and all its descendants (driver, worker processes, Ray
daemons and actors), and the peak of each sum is reported:

* ``peak_rss``: the sum of the resident set sizes. A page shared between processes (a forked
  worker's copy-on-write data, a library) counts once per process: an upper bound on what the
  machine lost.
* ``peak_pss``: the sum of the proportional set sizes (Linux; elsewhere equal to the RSS): a
  page shared by k processes counts 1/k in each, so pages the tree shares count once. Pages also
  mapped by processes outside the tree (a library other programs load too) count a share only,
  so compare PSS figures measured side by side, in one run.

RSS and CPU times are read every ``interval`` (0.2 s), PSS every ``pss_interval`` (2 s), at
every tenth the tree grows by, and where its growth stops: to tell a process's PSS the
kernel walks its page tables, ~20 ms of CPU for a process of 1 GB. Read every 0.2 s over a
driver and two workers, that took a fifth of a core from the run it measured, on a machine whose
two cores the workers keep busy (a one-process run left it the idle core).

CPU time (user + system, all processes of the tree) is less disturbed than wall time by other
work on a shared machine. It is the larger of two lower bounds: what the operating system
reports for the descendants that were waited for (exact for a process and the workers it joins),
and the sum of each process's last sampled CPU time (which also sees processes that were never
waited for, such as Ray's daemons, but misses their last ``interval``).

On a machine with NVIDIA GPUs (``nvidia-smi`` on the PATH) the GPU is sampled too, by one
``nvidia-smi`` process that reports every ``interval`` for as long as the command runs: ``gpu``
is the mean utilisation and the peak memory of the GPU whose memory grew most (the one the
command used), less what was in use on it when the command started. Elsewhere ``gpu`` is None.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psutil

SAMPLE_INTERVAL_S = 0.2
PSS_INTERVAL_S = 2.0


def tree(root: psutil.Process) -> list[psutil.Process]:
    """A process and all its descendants (none when it has exited)."""
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class GpuUse:
    """What a command used of one GPU, from ``nvidia-smi``'s samples while it ran."""

    index: int  # nvidia-smi's index of the GPU
    mean_util_pct: float  # of the samples, the command's start-up included
    peak_gb: float  # memory in use at the peak, less what was in use when the command started


class GpuSampler:
    """``nvidia-smi`` reporting each GPU's utilisation and memory every ``interval`` seconds,
    its lines read in a thread; a no-op where there is no ``nvidia-smi``."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.samples: dict[int, list[tuple[float, float]]] = {}  # index -> (util %, MiB used)
        executable = shutil.which("nvidia-smi")
        self._proc = self._reader = None
        if executable is None:
            return
        query = "--query-gpu=index,utilization.gpu,memory.used"
        self._proc = subprocess.Popen(
            [executable, query, "--format=csv,noheader,nounits", f"--loop-ms={interval * 1e3:.0f}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            fields = [f.strip() for f in line.split(",")]
            with contextlib.suppress(ValueError, IndexError):  # "[N/A]", or a line cut short
                index, util, used = int(fields[0]), float(fields[1]), float(fields[2])
                self.samples.setdefault(index, []).append((util, used))

    def stop(self) -> GpuUse | None:
        """The GPU whose memory grew most, or None without nvidia-smi or its samples."""
        if self._proc is None or self._reader is None:
            return None
        self._proc.terminate()
        self._proc.wait()
        self._reader.join()
        if not self.samples:
            return None

        def grown(index: int) -> float:
            used = [mib for _, mib in self.samples[index]]
            return max(used) - used[0]

        index = max(self.samples, key=grown)
        utils = [util for util, _ in self.samples[index]]
        return GpuUse(index, sum(utils) / len(utils), grown(index) * 2**20 / 1e9)


@dataclass(frozen=True)
class Measured:
    """What running one command cost, and what it printed (stdout and stderr together)."""

    command: tuple[str, ...]
    returncode: int
    output: str
    wall_s: float
    peak_rss: int  # bytes, of the whole process tree
    peak_pss: int  # bytes, proportional: pages shared within the tree count once
    cpu_s: float  # user + system seconds of the whole process tree (a lower bound, see above)
    gpu: GpuUse | None = None  # where nvidia-smi tells it

    @property
    def peak_gb(self) -> float:
        return self.peak_rss / 1e9

    @property
    def peak_pss_gb(self) -> float:
        return self.peak_pss / 1e9

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
    pss_interval: float = PSS_INTERVAL_S,
) -> Measured:
    """Run ``command`` to completion; its wall time, CPU time and the peak RSS of its tree.

    Not thread-safe: the operating system's CPU count covers every child of this process.
    """
    cpu_before = _children_cpu_s()
    gpu = GpuSampler(interval)
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=None if env is None else dict(env),
        cwd=cwd,
    )
    peak = peak_pss = 0
    done = threading.Event()
    cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> last sampled CPU seconds

    def sample() -> None:
        nonlocal peak, peak_pss
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:  # already gone
            return
        pss_due, pss_rss = time.perf_counter(), 0  # the next PSS reading; the RSS at the last
        last_rss = 0
        while not done.is_set():
            processes, rss = tree(root), 0
            for p in processes:
                # A process may exit between listing and reading.
                with contextlib.suppress(psutil.Error), p.oneshot():
                    rss += p.memory_info().rss
                    times = p.cpu_times()
                    cpu[(p.pid, p.create_time())] = times.user + times.system
            peak = max(peak, rss)
            # PSS when due, while the tree grows (at every tenth), and once it has stopped
            # growing (a plateau above the last reading): a peak is read where it settles.
            grown = rss > 1.1 * pss_rss
            settled = rss > 1.02 * pss_rss and rss <= 1.01 * last_rss
            last_rss = rss
            if time.perf_counter() >= pss_due or grown or settled:
                pss = 0
                for p in processes:
                    with contextlib.suppress(psutil.Error):
                        pss += _pss(p)
                peak_pss, pss_due, pss_rss = (
                    max(peak_pss, pss),
                    time.perf_counter() + pss_interval,
                    rss,
                )
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    cpu_s = max(_children_cpu_s() - cpu_before, sum(cpu.values()))
    used = gpu.stop()
    return Measured(tuple(command), proc.returncode, output, wall, peak, peak_pss, cpu_s, used)


def _pss(p: psutil.Process) -> int:
    """``p``'s proportional set size, or its RSS where the system does not tell it."""
    full = p.memory_full_info()
    return int(getattr(full, "pss", full.rss))
