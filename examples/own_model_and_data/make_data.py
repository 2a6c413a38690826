"""Write ``digits.npz``: scikit-learn's bundled 8x8 digits as the arrays a lab would have on disk
(x_train, y_train, x_test, y_test), images shaped (N, 1, 8, 8). Nothing is downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def make_data(path: Path) -> Path:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[:360], order[360:]
    np.savez(
        path,
        x_train=x[train],
        y_train=digits.target[train],
        x_test=x[test],
        y_test=digits.target[test],
    )
    return path


if __name__ == "__main__":
    print(
        make_data(
            Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("digits.npz"))
        )
    )
