"""``image_folder``: ``root/train/<class>/*.png`` and ``root/test/<class>/…``, read with Pillow.

Images are converted to ``channels`` (1: greyscale, 3: RGB), resized to ``size`` and kept as
(N, C, H, W). The first read is cached as arrays in ``root/.fedsim_cache/``, keyed by a hash of
the file list (names, sizes, modification times) and the options, so later runs read one file;
any change to the images reads them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import PositiveInt

from fedsim.data import Dataset
from fedsim.errors import UserError
from fedsim.files.checks import SPLITS, checked_dataset, missing
from fedsim.registry import DATASETS, DatasetParams, UserPath

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
CACHE = ".fedsim_cache"


class ImageFolderParams(DatasetParams):
    # The folder holding train/<class>/ and test/<class>/; relative to the scenario's folder.
    root: Annotated[str, UserPath()]
    size: PositiveInt | tuple[PositiveInt, PositiveInt]  # every image is resized to (H, W)
    channels: Literal[1, 3] = 3  # 1: greyscale, 3: RGB
    standardize: bool = True  # scale each channel to mean 0, std 1 over the training images
    cache: bool = True  # keep the decoded images as arrays in root/.fedsim_cache/

    def check(self) -> list[str]:
        try:
            _classes(Path(self.root))
        except UserError as err:
            return [f"root: {err}"]
        return []


@DATASETS.register("image_folder", ImageFolderParams)
def image_folder(p: ImageFolderParams) -> Dataset:
    """Your images: root/train/<class>/*.png|jpg and root/test/<class>/…, resized to size."""
    root = Path(p.root)
    classes = _classes(root)
    files = {split: _files(root, split, classes) for split in SPLITS}
    height, width = (p.size, p.size) if isinstance(p.size, int) else p.size
    key = _cache_key(root, files, (height, width, p.channels))
    cached = root / CACHE / f"images-{key}.npz"
    loaded = _load_cache(cached) if p.cache else None
    if loaded is None:
        loaded = {}
        for split in SPLITS:
            x, y = _decode(root, files[split], (height, width), p.channels)
            loaded[f"x_{split}"], loaded[f"y_{split}"] = x, y
        if p.cache:
            _save_cache(cached, loaded)
    # Pixels to [0, 1] in one pass and one array (astype, then a division, made two).
    x_train, x_test = (
        np.divide(loaded[f"x_{split}"], np.float32(255.0), dtype=np.float32) for split in SPLITS
    )
    if p.standardize:  # per channel, over the training images' pixels
        mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
        std = x_train.std(axis=(0, 2, 3), keepdims=True)
        std[std == 0] = 1.0
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    arrays = {"x_train": x_train, "x_test": x_test, **{f"y_{s}": loaded[f"y_{s}"] for s in SPLITS}}
    return checked_dataset("image_folder", root, arrays, len(classes), standardize=False)


def _classes(root: Path) -> list[str]:
    """The class names, sorted: the sub-folders of train/, which test/ needs to match."""
    if not root.is_dir():
        raise UserError(missing(root, "image folder"))
    found = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise UserError(
                f"image_folder {root} has no {split}/ folder; it needs train/<class>/*.png and "
                "test/<class>/*.png (or .jpg)"
            )
        found[split] = {d.name for d in folder.iterdir() if d.is_dir() and d.name[0] != "."}
    train, test = found["train"], found["test"]
    if not train:
        raise UserError(
            f"image_folder {root}/train has no class folders; put each class's "
            "images in train/<class>/"
        )
    if train != test:
        only = [
            f"only in {split}/: {', '.join(sorted(names))}"
            for split, names in (("train", train - test), ("test", test - train))
            if names
        ]
        raise UserError(
            f"image_folder {root}: train and test have different classes ({'; '.join(only)}); "
            "give both the same class folders"
        )
    return sorted(train)


def _files(root: Path, split: str, classes: list[str]) -> list[tuple[str, int]]:
    """(path relative to root, class index) of every image of ``split``, in a fixed order."""
    out = []
    for label, name in enumerate(classes):
        images = sorted(
            f.relative_to(root).as_posix()
            for f in (root / split / name).iterdir()
            if f.is_file() and f.suffix.lower() in EXTENSIONS
        )
        if not images:
            raise UserError(
                f"image_folder {root}/{split}/{name} has no .png or .jpg images; add some or "
                "remove the class from train and test"
            )
        out += [(image, label) for image in images]
    return out


def _decode(
    root: Path, files: list[tuple[str, int]], size: tuple[int, int], channels: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    from PIL import Image, UnidentifiedImageError  # only this dataset needs Pillow

    height, width = size
    x = np.empty((len(files), channels, height, width), dtype=np.uint8)
    for i, (name, _) in enumerate(files):
        try:
            with Image.open(root / name) as image:
                pixels = image.convert("L" if channels == 1 else "RGB").resize(
                    (width, height), Image.Resampling.BILINEAR
                )
        except (OSError, UnidentifiedImageError) as err:
            raise UserError(
                f"image_folder {root}: cannot read {name} ({err}); remove or replace it"
            ) from None
        array = np.asarray(pixels, dtype=np.uint8)
        x[i] = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return x, np.array([label for _, label in files], dtype=np.int64)


def _cache_key(root: Path, files: dict[str, list[tuple[str, int]]], options: Any) -> str:
    listing = []
    for split in SPLITS:
        for name, label in files[split]:
            stat = (root / name).stat()
            listing.append([name, label, stat.st_size, stat.st_mtime_ns])
    text = json.dumps([options, listing])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_cache(path: Path) -> dict[str, npt.NDArray[Any]] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError):  # absent, or unreadable: read the images again
        return None


def _save_cache(path: Path, arrays: dict[str, npt.NDArray[Any]]) -> None:
    """Written under a temporary name and renamed, so that parallel runs never read half."""
    tmp: str | None = None
    try:
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            payload: dict[str, Any] = dict(arrays)  # numpy's stub would type them as its options
            np.savez(f, **payload)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        warnings.warn(
            f"image_folder: cannot cache the decoded images in {path.parent} ({err}); they "
            "will be read again next time (cache: false skips caching)",
            stacklevel=2,
        )
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
