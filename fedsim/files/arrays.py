"""``arrays``: a dataset saved as NumPy arrays, one ``.npz`` or a folder of ``.npy`` files."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from fedsim.data import Dataset
from fedsim.errors import UserError
from fedsim.files.checks import checked_dataset, missing
from fedsim.registry import DATASETS, DatasetParams, UserPath

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
CLIENTS = "client_train"  # optional: the client of each training row (partition: natural)


class ArraysParams(DatasetParams):
    # A .npz holding x_train, y_train, x_test, y_test (and optionally client_train), or a
    # folder of x_train.npy, y_train.npy, … ; relative to the scenario file's folder.
    path: Annotated[str, UserPath()]
    num_classes: int | None = Field(default=None, ge=2)  # None: the largest label + 1
    standardize: bool = False  # scale each input entry to mean 0, std 1 over the training rows

    def check(self) -> list[str]:
        try:
            names = _names(Path(self.path))
        except UserError as err:
            return [f"path: {err}"]
        absent = [key for key in REQUIRED if key not in names]
        return [f"path: {_absent(Path(self.path), absent, names)}"] if absent else []


@DATASETS.register("arrays", ArraysParams)
def arrays(p: ArraysParams) -> Dataset:
    """Your NumPy arrays: x_train, y_train, x_test, y_test (+ client_train), any input shape."""
    path = Path(p.path)
    names = _names(path)
    absent = [key for key in REQUIRED if key not in names]
    if absent:
        raise UserError(_absent(path, absent, names))
    loaded = _read(path, [*REQUIRED, *([CLIENTS] if CLIENTS in names else [])])
    return checked_dataset(
        "arrays",
        path,
        {key: loaded[key] for key in REQUIRED},
        p.num_classes,
        p.standardize,
        loaded.get(CLIENTS),
    )


def _names(path: Path) -> list[str]:
    """The arrays a .npz or a folder of .npy files holds, without reading them."""
    if path.is_dir():
        return sorted(f.stem for f in path.glob("*.npy"))
    if not path.exists():
        raise UserError(missing(path, "arrays file"))
    try:
        with np.load(path, allow_pickle=False) as npz:
            return sorted(npz.files)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(
            f"arrays {path}: not a readable .npz ({err}); save it with np.savez(path, "
            "x_train=…, y_train=…, x_test=…, y_test=…) or give a folder of .npy files"
        ) from None


def _absent(path: Path, absent: list[str], names: list[str]) -> str:
    return (
        f"arrays {path} has no {', '.join(absent)} (it holds {', '.join(names) or 'nothing'}); "
        f"it needs {', '.join(REQUIRED)}: np.savez(path, x_train=…, y_train=…, x_test=…, "
        "y_test=…), or one .npy file per array in a folder"
    )


def _read(path: Path, keys: list[str]) -> dict[str, npt.NDArray[Any]]:
    try:
        if path.is_dir():
            return {key: np.load(path / f"{key}.npy", allow_pickle=False) for key in keys}
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in keys}
    except ValueError as err:  # object arrays need pickle, which would run code from the file
        raise UserError(
            f"arrays {path}: {err}; save numbers (or fixed-width strings for client ids), "
            "not Python objects"
        ) from None
    except (OSError, zipfile.BadZipFile) as err:
        raise UserError(f"arrays {path}: cannot read it ({err}); save it again") from None
