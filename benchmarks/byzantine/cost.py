"""Aggregation cost: seconds per call of every registered aggregator and pre-aggregator.

All rules are measured in one run, side by side, on the same random float32 updates ``(n, d)``:
every entry of ``AGGREGATORS`` and ``PREAGGREGATORS`` with its default parameters (``f = n // 5``
where a rule takes ``f``), plus Flag with λ = 4 and the authors' SVD form of Flag
(``_flag_svd_reference``: a thin SVD of the d×n matrix per IRLS step). Each figure is the median
of ``--repeat`` calls after one warm-up call (of up to 50 calls for a rule that takes
milliseconds, enough to fill ~0.25 s); a rule whose warm-up took over ``--slow`` seconds is timed
once more only. The shared Gram cache is cleared before every call, so each rule pays for its
own ``U Uᵀ``.
CPU always; CUDA too when ``torch.cuda.is_available()``.

    python benchmarks/byzantine/cost.py            # n ∈ {15, 30, 60} × d ∈ {1e5, 1e6, 1.1e7}
    python benchmarks/byzantine/cost.py --quick    # n ∈ {15, 30} × d ∈ {1e4, 1e5}
    python benchmarks/byzantine/cost.py --smoke    # seconds: n = 8, d = 1e3, one call per rule
    python benchmarks/byzantine/cost.py --sizes 15x1e6,60x1e6 --repeat 5 --csv out.csv

Targets: Flag / Krum ≤ 2 at every size (both are one Gram pass plus O(n³)); SVD form / Flag ≥ 20
at d = 1e6. Sizes that would not fit in memory (the updates plus ``MEMORY_FACTOR`` copies, for
the sorting rules' values and int64 indices) are skipped and listed; the SVD form is skipped
above ``--svd-max-d`` (at d = 1.1e7 one call takes 30–150 s on 2 cores). Timings on a shared
machine are noisy: another process using the CPU inflates them; rerun to compare.
"""

from __future__ import annotations

import argparse
import csv
import functools
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's fedsim
import strategies
from fedsim.registry import AGGREGATORS, PREAGGREGATORS, Registry
from strategies.aggregators.flag import _flag_svd_reference
from strategies.gram import _cache as gram_cache
from strategies.pipeline import RoundInfo

FULL_SIZES = [(n, d) for d in (100_000, 1_000_000, 11_000_000) for n in (15, 30, 60)]
QUICK_SIZES = [(n, d) for d in (10_000, 100_000) for n in (15, 30)]
SMOKE_SIZES = [(8, 1_000)]  # n = 8 > 4f + 2 with f = n // 5 = 1: every rule applies
MEMORY_FACTOR = 5  # bytes needed = (1 + MEMORY_FACTOR) × the updates' bytes
FLAG_LAMBDA = 4.0
SVD_FORM = "flag (SVD form)"
FAST_BUDGET_S, MAX_FAST_CALLS = 0.25, 50


@dataclass(frozen=True)
class Rule:
    key: str  # the registry name ("pre:" before a pre-aggregator's), or "flag:lam", "flag:svd"
    label: str  # as printed
    call: Callable[[Tensor, RoundInfo], Tensor]


@dataclass(frozen=True)
class Timing:
    device: str
    size: str
    rule: Rule
    seconds: float


def registered(registry: Registry[Any], prefix: str, n: int) -> list[Rule]:
    """Every entry of ``registry`` with its defaults, ``f = n // 5`` where it takes ``f``."""
    rules = []
    for entry in registry:
        fields = entry.params.model_fields
        required = [name for name, field in fields.items() if field.is_required()]
        if required:
            print(f"  skipped {registry.kind} {entry.name}: required parameters {required}")
            continue
        params = {"f": n // 5} if "f" in fields else {}
        stage = registry.build(entry.name, **params)
        label = entry.name + (" f=n//5" if params else "") + (" *" if prefix else "")

        def call(u: Tensor, info: RoundInfo, stage: Any = stage) -> Tensor:
            out, _ = stage.update(u, stage.init(u.shape[1]), info)
            return out

        rules.append(Rule(prefix + entry.name, label, call))
    return rules


def rules_for(n: int, d: int, svd_max_d: float) -> list[Rule]:
    rules = registered(AGGREGATORS, "", n) + registered(PREAGGREGATORS, "pre:", n)
    if "flag" in AGGREGATORS:
        stage = AGGREGATORS.build("flag", lam=FLAG_LAMBDA)
        label = f"flag lam={FLAG_LAMBDA:g}"
        rules.append(Rule("flag:lam", label, lambda u, info: stage.update(u, None, info)[0]))
        if d <= svd_max_d:
            rules.append(Rule("flag:svd", SVD_FORM, lambda u, info: _flag_svd_reference(u)))
    return rules


def seconds_per_call(
    call: Callable[[], Tensor],
    device: torch.device,
    repeat: int,
    slow: float,
    budget: float = FAST_BUDGET_S,
) -> float:
    """Median seconds per call after a warm-up: of ``repeat`` calls (more for fast rules, enough
    to fill ``budget`` seconds; one only if the warm-up took over ``slow`` seconds)."""

    def once() -> float:
        gram_cache.clear()  # each call pays for its own Gram matrix
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    warm_up = once()
    if warm_up > slow:
        return once()
    # millisecond calls are at the mercy of the scheduler: take more of them (up to ~budget)
    calls = max(repeat, min(MAX_FAST_CALLS, int(budget / max(warm_up, 1e-6))))
    return statistics.median(once() for _ in range(calls))


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def size_label(n: int, d: int) -> str:
    return f"n={n} d={d:.2g}".replace("e+0", "e")


def measure(
    devices: list[torch.device], sizes: list[tuple[int, int]], args: argparse.Namespace
) -> list[Timing]:
    """Seconds per call of every rule at every size on every device; skips are printed."""
    timings = []
    for device in devices:
        for n, d in sizes:
            size = size_label(n, d)
            need = n * d * 4 * (1 + MEMORY_FACTOR)
            if need > free_bytes(device):
                print(f"{device} {size}: skipped, needs ~{need / 1e9:.1f} GB")
                continue
            print(f"{device} {size}:", flush=True)
            gen = torch.Generator(device=device).manual_seed(n * d)
            updates = torch.randn(n, d, generator=gen, device=device)
            info = RoundInfo.uniform(n)
            for rule in rules_for(n, d, args.svd_max_d):
                try:
                    seconds = seconds_per_call(
                        functools.partial(rule.call, updates, info),
                        device,
                        args.repeat,
                        args.slow,
                        0.0 if args.smoke else FAST_BUDGET_S,
                    )
                except (ValueError, RuntimeError) as err:
                    print(f"  {rule.label}: failed: {err}")
                    continue
                timings.append(Timing(str(device), size, rule, seconds))
                print(f"  {rule.label:<24} {seconds:9.4f} s", flush=True)
            if d > args.svd_max_d and "flag" in AGGREGATORS:
                print(f"  {SVD_FORM}: skipped at d > {args.svd_max_d:.2g} (--svd-max-d)")
            del updates
    return timings


# (name, numerator key, denominator key, target, sense, only at this d or None)
RATIOS = [
    ("flag / krum", "flag", "krum", 2.0, "<=", None),
    ("SVD form / flag", "flag:svd", "flag", 20.0, ">=", 1_000_000),
]


def report(timings: list[Timing], sizes: list[tuple[int, int]]) -> None:
    """The table (rules × sizes, seconds per call) and the target ratios, per device."""
    for device in dict.fromkeys(t.device for t in timings):
        mine = {(t.size, t.rule.key): t for t in timings if t.device == device}
        columns = [
            c
            for c in dict.fromkeys(size_label(n, d) for n, d in sizes)
            if any(size == c for size, _ in mine)
        ]
        rows = {t.rule.key: t.rule.label for t in mine.values()}
        width = max(len(label) for label in rows.values())
        print(
            f"\nseconds per call, {device}, float32, median of calls after a warm-up "
            "(* = pre-aggregator)"
        )
        print(f"{'rule':<{width}} " + " ".join(f"{c:>13}" for c in columns))
        for key, label in rows.items():
            cells = [mine.get((c, key)) for c in columns]
            print(
                f"{label:<{width}} "
                + " ".join(f"{t.seconds:>13.4f}" if t else f"{'-':>13}" for t in cells)
            )
        for name, num, den, target, sense, only_d in RATIOS:
            for n, d in sizes:
                col = size_label(n, d)
                if (
                    (only_d is not None and d != only_d)
                    or (col, num) not in mine
                    or (col, den) not in mine
                ):
                    continue
                ratio = mine[(col, num)].seconds / mine[(col, den)].seconds
                met = ratio <= target if sense == "<=" else ratio >= target
                print(
                    f"{name:>16} at {col:<13}: {ratio:7.2f}  "
                    f"(target {sense} {target:g}: {'met' if met else 'MISSED'})"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a quick look")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"seconds: size {SMOKE_SIZES[0][0]}x{SMOKE_SIZES[0][1]}, one timed call per rule",
    )
    parser.add_argument("--sizes", help="comma-separated NxD, e.g. 15x1e6,60x1.1e7")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per rule and size")
    parser.add_argument(
        "--slow", type=float, default=2.0, help="warm-up seconds above which a rule is timed once"
    )
    parser.add_argument("--svd-max-d", type=float, default=1e6, help="largest d for the SVD form")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--csv", help="also write device,size,rule,seconds rows here")
    args = parser.parse_args()
    if args.sizes:
        sizes = []
        for item in args.sizes.split(","):
            n, d = item.lower().split("x")
            sizes.append((int(n), int(float(d))))
    else:
        sizes = SMOKE_SIZES if args.smoke else QUICK_SIZES if args.quick else FULL_SIZES
    if args.smoke:
        args.repeat = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"{psutil.cpu_count()} CPUs, load average {psutil.getloadavg()[0]:.1f}, "
        f"{psutil.virtual_memory().available / 1e9:.1f} GB free; "
        f"rules: {', '.join(AGGREGATORS.names() + [p + '*' for p in PREAGGREGATORS.names()])}"
    )
    started = time.perf_counter()
    times = measure(devices, sizes, args)
    report(times, sizes)
    print(
        f"\nbenchmark wall time {time.perf_counter() - started:.0f} s, "
        f"load average at the end {psutil.getloadavg()[0]:.1f}"
    )
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["device", "size", "rule", "seconds"])
            writer.writerows([t.device, t.size, t.rule.label, f"{t.seconds:.6g}"] for t in times)


if __name__ == "__main__":
    assert strategies  # imported for its side effect: every rule is registered
    main()
