"""Seeded synthetic CIFAR-shaped data for the side-by-side benchmark, as fedsim's ``arrays`` files.

No CIFAR-10 can be had offline, so each class is a smooth random colour pattern (a 3×8×8 grid
of Gaussian values, enlarged 4× to 32×32 and scaled to unit spread), and an image of the class
is that pattern moved by up to ``MAX_SHIFT`` pixels each way (cyclically), times ``SIGNAL``, plus
unit Gaussian noise. The shifts make a convolution the right tool; the noise keeps the task from
being solved in a round, so accuracy rises over tens of rounds, as on CIFAR-10.

Users hold ``per_user`` consecutive training rows each (labels drawn uniformly: IID users, as
pfl's ``cifar10_iid`` benchmark); ``client_train`` says whose each row is, which fedsim's
``natural`` partitioner reads and every other implementation slices the same way. The folder
holds one ``.npy`` per array, so readers can memory-map them. numpy only: pfl's environment
reads these files too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SIGNAL = 0.4  # pattern amplitude against unit noise: accuracy ~0.1 → ~0.8 in 10–20 rounds
MAX_SHIFT = 3  # pixels
CLASSES = 10
SHAPE = (3, 32, 32)
CHUNK = 5_000  # rows generated at a time, to bound memory


def _patterns(rng: np.random.Generator) -> np.ndarray:
    coarse = rng.standard_normal((CLASSES, SHAPE[0], 8, 8)).astype(np.float32)
    fine = coarse.repeat(4, axis=2).repeat(4, axis=3)
    return fine / fine.std(axis=(1, 2, 3), keepdims=True)


def _write_split(
    folder: Path, split: str, rows: int, patterns: np.ndarray, rng: np.random.Generator
) -> None:
    labels = rng.integers(0, CLASSES, size=rows)
    images = np.lib.format.open_memmap(
        folder / f"x_{split}.npy", mode="w+", dtype=np.float32, shape=(rows, *SHAPE)
    )
    for start in range(0, rows, CHUNK):
        y = labels[start : start + CHUNK]
        x = rng.standard_normal((len(y), *SHAPE), dtype=np.float32)
        shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(len(y), 2))
        for i, (dy, dx) in enumerate(shifts):
            x[i] += SIGNAL * np.roll(patterns[y[i]], (int(dy), int(dx)), axis=(1, 2))
        images[start : start + len(y)] = x
    images.flush()
    del images
    np.save(folder / f"y_{split}.npy", labels.astype(np.int64))


def make(folder: Path, users: int, per_user: int, test: int, seed: int) -> Path:
    """Write the data set into ``folder`` (once: an existing complete copy is reused)."""
    spec = {
        "users": users,
        "per_user": per_user,
        "test": test,
        "seed": seed,
        "signal": SIGNAL,
        "max_shift": MAX_SHIFT,
    }
    stamp = folder / "spec.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    patterns = _patterns(rng)
    _write_split(folder, "train", users * per_user, patterns, rng)
    _write_split(folder, "test", test, patterns, rng)
    np.save(folder / "client_train.npy", np.arange(users * per_user, dtype=np.int64) // per_user)
    stamp.write_text(json.dumps(spec))  # last: a folder without it is incomplete
    return folder
