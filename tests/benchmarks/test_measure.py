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
