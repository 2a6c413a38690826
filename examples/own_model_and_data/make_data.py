"""Write ``scans.npz`` in the lab's own layout (images, labels, is_test) from scikit-learn's
bundled 8x8 digits, so that the example needs no download."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def make_data(path: Path) -> Path:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8), pixels in 0..1
    is_test = np.random.default_rng(0).random(len(images)) < 0.2
    np.savez(path, images=images, labels=digits.target, is_test=is_test)
    return path


if __name__ == "__main__":
    default = Path(__file__).with_name("scans.npz")
    print(make_data(Path(sys.argv[1]) if len(sys.argv) > 1 else default))
