"""The benchmarks' measurement of a process tree: its memory peaks, at a cost it can afford."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import measure  # benchmarks/ helpers are scripts' neighbours, not a package

HOLD = "import time; block = bytearray(300 * 2**20); time.sleep(1.5)"  # 300 MB, touched


def test_a_grown_tree_gets_its_pss_read_soon_and_then_seldom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: count the PSS readings (each costs the kernel a walk of the page tables)
    reads: list[int] = []
    pss = measure._pss

    def counted(p: object) -> int:
        reads.append(1)
        return pss(p)

    monkeypatch.setattr(measure, "_pss", counted)

    # Execute: a process that grows by 300 MB at once, then holds it for 1.5 s
    measured = measure.measure([sys.executable, "-c", HOLD])

    # Assert: the grown tree was read where it settled (before the 2 s period was up), and the
    # 1.5 s were not read every 0.2 s (9 readings) but a few times
    assert measured.returncode == 0
    assert measured.peak_rss > 300 * 2**20 and measured.peak_pss > 300 * 2**20
    assert 2 <= len(reads) <= 5


# Two GPUs, sampled while a command runs: GPU 1's memory grows from 500 to 2548 MiB.
FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in *--query-gpu=index,utilization.gpu,memory.used*--loop-ms=*) ;; *) exit 2 ;; esac
echo "0, 0, 300"; echo "1, 0, 500"
echo "0, 0, 300"; echo "1, 60, 1524"
echo "0, [N/A], 300"; echo "1, 90, 2548"
echo "0, 0, 300"; echo "1, 90, 2548"
exec sleep 60
"""


def test_the_gpu_the_command_used_is_read_from_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: an nvidia-smi that prints four samples of two GPUs, then waits to be stopped
    fake = tmp_path / "nvidia-smi"
    fake.write_text(FAKE_NVIDIA_SMI)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{Path(sys.executable).parent}:/usr/bin:/bin")

    # Execute
    measured = measure.measure([sys.executable, "-c", "import time; time.sleep(0.5)"])

    # Assert: GPU 1, whose memory grew: mean utilisation (0 + 60 + 90 + 90) / 4, peak 2048 MiB
    assert measured.gpu == measure.GpuUse(1, 60.0, 2048 * 2**20 / 1e9)


def test_without_nvidia_smi_there_is_no_gpu_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no nvidia-smi
    measured = measure.measure([sys.executable, "-c", "pass"])
    assert measured.returncode == 0 and measured.gpu is None
