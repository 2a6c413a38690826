"""Evaluation batch size on a CPU: the classification workload's ``evaluate`` at several sizes.

A convolution's activations for a batch of 1024 images (128–260 MB for a CIFAR-shaped CNN)
spill every cache; a batch of 64 keeps them in L2/L3. Each model here is evaluated by the
workload's own ``evaluate`` with its CPU batch size set to each candidate in turn, the sizes
alternating in order from one repeat to the next, the fastest repeat kept:

    python benchmarks/eval_batch.py                # 4 models, batches 1024/256/64/32, 3 repeats
    python benchmarks/eval_batch.py --threads 2    # as fedsim's central evaluation on 2 cores
    python benchmarks/eval_batch.py --smoke        # seconds: 200 samples, 1 repeat
"""

from __future__ import annotations

import argparse
import sys
import time
from types import ModuleType

import pandas as pd
import torch
from command import ROOT, checkout_fedsim  # benchmarks/ is on sys.path when this script runs
from torch import nn

BATCHES = (1024, 256, 64, 32)
SMOKE_SAMPLES = 200


def cases() -> list[tuple[str, str, nn.Module, tuple[int, ...], int]]:
    """(name, what it is, model, one input's shape, samples evaluated) for each model."""
    checkout_fedsim()  # this checkout's fedsim and workloads, importable
    sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
    from cnn import simple_cnn

    from clients.models import MLP, SmallCNN

    image, fashion = (3, 32, 32), (1, 28, 28)
    return [
        ("pfl_cnn", "pfl's CIFAR CNN, 1.6M parameters", simple_cnn(), image, 5000),
        ("fmnist_cnn", "fedsim's small CNN, Fashion-MNIST", SmallCNN(fashion, 10), fashion, 10000),
        ("fmnist_mlp", "MLP 784-128-10", MLP(fashion, 10, hidden=128), fashion, 10000),
        ("digits_mlp", "quickstart MLP 64-128-10", MLP((64,), 10, hidden=128), (64,), 360),
    ]


def seconds(classification: ModuleType, model: nn.Module, data: tuple, batch: int) -> float:
    """One ``evaluate`` of the classification workload, its batch size set to ``batch``."""
    workload = classification.ClassificationWorkload(classification.ClassificationParams())
    chooses = classification.eval_batch_size
    classification.eval_batch_size = lambda model, device: batch
    try:
        start = time.perf_counter()
        workload.evaluate(model, data, {}, None)
        return time.perf_counter() - start
    finally:
        classification.eval_batch_size = chooses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--smoke", action="store_true", help=f"seconds: {SMOKE_SAMPLES} samples, 1 repeat"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeat = 1 if args.smoke else args.repeat
    models = cases()
    from clients import classification

    rows = []
    for name, what, model, shape, samples in models:
        n = SMOKE_SAMPLES if args.smoke else samples
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(n, *shape, generator=generator)
        data = (x, torch.randint(0, 10, (n,), generator=generator))
        model.eval()
        chosen = classification.eval_batch_size(model, x.device)
        best = {b: float("inf") for b in BATCHES}
        for r in range(repeat):
            for batch in BATCHES if r % 2 == 0 else BATCHES[::-1]:
                best[batch] = min(best[batch], seconds(classification, model, data, batch))
        row: dict[str, object] = {"model": name, "what": what, "samples": n}
        row.update({f"{b} ms": round(best[b] * 1e3, 1) for b in BATCHES})
        row["fedsim's batch"] = chosen
        row["1024 / fedsim's"] = round(best[1024] / best[chosen], 2)
        rows.append(row)
    print(f"evaluation batch on the CPU: {args.threads} thread(s), fastest of {repeat}")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
