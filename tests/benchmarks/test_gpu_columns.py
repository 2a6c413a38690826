"""On a GPU the overhead and vectorise benchmarks show each run's GPU use beside its times (what
issue 21 asks to quote from a GPU machine); on a CPU they show none."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import overhead  # benchmarks/ scripts are importable neighbours, not a package
import vectorise
from measure import GpuUse

GPU = GpuUse(index=0, mean_util_pct=71.4, peak_gb=1.234)


def run(name: str, gpu: GpuUse | None) -> overhead.Run:
    return overhead.Run(name, 10.0, [4.0, 4.0], {2: 0.5}, 1.0, 0.9, 9.0, {}, gpu)


def test_the_overhead_table_shows_gpu_use_where_there_is_one() -> None:
    on_gpu = overhead.table(run("plain loop", GPU), [run("local", GpuUse(0, 35.0, 2.5))])
    on_cpu = overhead.table(run("plain loop", None), [run("local", None)])

    assert list(on_gpu["GPU util %"]) == ["71", "35"]
    assert list(on_gpu["peak GPU GB"]) == ["1.23", "2.50"]
    assert "GPU util %" not in on_cpu.columns and "peak GPU GB" not in on_cpu.columns


def test_the_vectorise_table_shows_gpu_use_where_there_is_one() -> None:
    case = vectorise.CASES["quickstart"]

    def timed(gpu: GpuUse | None) -> vectorise.Timed:
        return vectorise.Timed([2.0, 1.0], [1.5, 0.5], 0.9, 0.4, gpu)

    on_gpu = vectorise.row("quickstart", case, timed(GPU), timed(GpuUse(0, 93.0, 0.5)))
    on_cpu = vectorise.row("quickstart", case, timed(None), timed(None))

    assert on_gpu["GPU util % loop / vec"] == "71 / 93"
    assert on_gpu["peak GPU GB loop / vec"] == "1.23 / 0.50"
    assert not any("GPU" in column for column in on_cpu)
