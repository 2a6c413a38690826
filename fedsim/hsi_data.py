"""Hyperspectral scenes, offline: one band cube with a ground-truth map, dealt out as tiles.

A dataset of kind ``scene`` is one ``Scene``: a (bands, H, W) cube, each band standardised over
the scene, and a label map (``UNLABELLED`` where the ground truth has no class). Training pixels
are drawn as small square blocks (``block``), so that labelled neighbour pairs exist for the
CRF's pairwise term (the labelled-pairs pitfall of ``notes/workloads-precise.md`` §4.3: random
single pixels leave almost no edge with both ends labelled); every other labelled pixel is a test
pixel. The scene records how many labelled pairs (8-neighbourhood, unordered) it has.

``hsi_synthetic`` draws an Indian-Pines-like scene from a seed; ``hsi_file`` reads a user's:
MATLAB ``.mat`` (scipy) or ENVI (``.hdr`` + raw data: the ``spectral`` package when it is
installed, else the small reader here, which handles uncompressed bsq/bil/bip files).

The ``tiles`` federation gives each client a rectangle of the scene (a grid or horizontal
stripes) and, with ``halo`` = h, the features (never the labels) of the h pixels around it, so
that its patches and CRF edges at the border see what the whole scene would. Pure numpy/torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import Tensor

from fedsim.data import federates
from fedsim.errors import UserError
from fedsim.registry import (
    DATASETS,
    SCENE_PARTITIONERS,
    Component,
    Params,
    SceneDatasetParams,
)

UNLABELLED = -1
# The 8-neighbourhood as 4 offsets (dy, dx): each unordered edge once.
HALF_NEIGHBOURHOOD = ((0, 1), (1, -1), (1, 0), (1, 1))
FLOAT_BYTES = 4


@dataclass(frozen=True, eq=False)  # tensors have no boolean equality; compare by identity
class Scene:
    """A whole scene in memory; shared by a process's clients, so never mutate it."""

    name: str
    cube: Tensor  # float32 (B, H, W), each band standardised over the scene
    labels: Tensor  # int64 (H, W): 0..C-1, UNLABELLED where the ground truth has no class
    train: Tensor  # bool (H, W): training pixels (blocks)
    test: Tensor  # bool (H, W): the other labelled pixels
    num_classes: int

    @property
    def bands(self) -> int:
        return int(self.cube.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.cube.shape[1]), int(self.cube.shape[2])

    @property
    def labelled_pairs(self) -> int:
        """Unordered 8-neighbour pairs with both ends training pixels."""
        return edge_count(self.train.cpu().numpy())

    def window(self, r0: int, r1: int, c0: int, c1: int, halo: int = 0) -> SceneWindow:
        """Rows r0:r1, columns c0:c1 (the core) and ``halo`` pixels around them, clipped to the
        scene; labels and masks outside the core are withheld."""
        h, w = self.shape
        R0, R1, C0, C1 = max(r0 - halo, 0), min(r1 + halo, h), max(c0 - halo, 0), min(c1 + halo, w)
        core = torch.zeros(R1 - R0, C1 - C0, dtype=torch.bool, device=self.cube.device)
        core[r0 - R0 : r1 - R0, c0 - C0 : c1 - C0] = True
        labels = self.labels[R0:R1, C0:C1]
        return SceneWindow(
            cube=self.cube[:, R0:R1, C0:C1],
            labels=torch.where(core, labels, torch.full_like(labels, UNLABELLED)),
            train=self.train[R0:R1, C0:C1] & core,
            test=self.test[R0:R1, C0:C1] & core,
            core=core,
            num_classes=self.num_classes,
            origin=(R0, C0),
        )

    def whole(self) -> SceneWindow:
        h, w = self.shape
        return self.window(0, h, 0, w)

    def to(self, device: torch.device) -> Scene:
        return dataclasses.replace(
            self,
            cube=self.cube.to(device),
            labels=self.labels.to(device),
            train=self.train.to(device),
            test=self.test.to(device),
        )


@dataclass(frozen=True, eq=False)
class SceneWindow:
    """What a client holds (its tile and halo) or the server evaluates on (the whole scene).

    Pixels outside the window are unknown: patches there are zero-padded, as the whole scene's
    are outside the scene. ``labels``, ``train`` and ``test`` are the core's only.
    """

    cube: Tensor  # float32 (B, h, w)
    labels: Tensor  # int64 (h, w), UNLABELLED outside the core
    train: Tensor  # bool (h, w)
    test: Tensor  # bool (h, w)
    core: Tensor  # bool (h, w): the tile itself (the rest is halo)
    num_classes: int
    origin: tuple[int, int]  # the scene's coordinates of the window's top-left pixel

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.cube.shape[1]), int(self.cube.shape[2])

    def to(self, device: torch.device) -> SceneWindow:
        return dataclasses.replace(
            self,
            cube=self.cube.to(device),
            labels=self.labels.to(device),
            train=self.train.to(device),
            test=self.test.to(device),
            core=self.core.to(device),
        )


def edge_count(mask: npt.NDArray[np.bool_]) -> int:
    """Unordered 8-neighbour pairs of pixels with both ends in ``mask``."""
    h, w = mask.shape
    total = 0
    for dy, dx in HALF_NEIGHBOURHOOD:
        a = mask[0 : h - dy, max(-dx, 0) : w - max(dx, 0)]
        b = mask[dy:h, max(dx, 0) : w - max(-dx, 0)]
        total += int((a & b).sum())
    return total


# ---- the datasets ----------------------------------------------------------------------------


class SplitParams(SceneDatasetParams):
    train_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)  # of each class's labelled pixels
    block: PositiveInt = 3  # training pixels come as block x block squares (1: single pixels)
    split_seed: NonNegativeInt = 0  # of the training blocks (hsi_synthetic: with its seed)


class HsiSyntheticParams(SplitParams):
    height: int = Field(default=48, ge=4, le=1024)
    width: int = Field(default=48, ge=4, le=1024)
    bands: int = Field(default=32, ge=2, le=1024)
    classes: int = Field(default=6, ge=2, le=32)
    similar_pairs: NonNegativeInt = 2  # class pairs (0,1), (2,3), ... whose spectra nearly match
    similarity: float = Field(default=0.03, ge=0.0)  # how far such a pair's spectra lie apart
    region_scale: float = Field(default=0.12, gt=0.0, le=1.0)  # regions' size / the scene's
    noise: float = Field(default=0.04, ge=0.0)  # band-correlated noise (reflectance units)
    seed: NonNegativeInt = 0  # of the scene itself; independent of the scenario's seed


@DATASETS.register("hsi_synthetic", HsiSyntheticParams)
def hsi_synthetic(p: HsiSyntheticParams) -> Scene:
    """A seeded Indian-Pines-like scene (workload hsi): smooth regions of classes whose spectra
    carry absorption features, mixed at region borders, under smooth illumination and
    band-correlated noise; ``similar_pairs`` class pairs differ only slightly in spectrum."""
    if 2 * p.similar_pairs > p.classes:
        raise UserError(
            f"hsi_synthetic: similar_pairs={p.similar_pairs} needs classes >= "
            f"{2 * p.similar_pairs}, got {p.classes}"
        )
    # Imported here: only this scene needs scipy.ndimage (~0.2 s of start-up when nothing else,
    # e.g. scikit-learn, has loaded it).
    from scipy import ndimage

    rng = np.random.default_rng([p.seed, 19])
    h, w, b, c = p.height, p.width, p.bands, p.classes
    sigma = p.region_scale * max(h, w)
    scores = np.stack([ndimage.gaussian_filter(rng.normal(size=(h, w)), sigma) for _ in range(c)])
    scores /= scores.std(axis=(1, 2), keepdims=True)
    labels = scores.argmax(axis=0)
    # Mixing at boundaries: a sharp softmax of the same scores, ~pure inside a region.
    abundance = np.exp((scores - scores.max(axis=0)) / 0.15)
    abundance /= abundance.sum(axis=0)
    spectra = _spectra(rng, c, b, p.similar_pairs, p.similarity)
    mixed = np.einsum("chw,cb->bhw", abundance, spectra)
    illumination = 1.0 + 0.15 * _unit(ndimage.gaussian_filter(rng.normal(size=(h, w)), h / 3))
    noise = ndimage.gaussian_filter1d(rng.normal(size=(b, h, w)), 1.5, axis=0)
    noise *= p.noise / noise.std()
    cube = mixed * illumination + noise
    return _scene("hsi_synthetic", cube, labels, c, p, [p.seed, p.split_seed, 7])


def _unit(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return (x - x.mean()) / max(float(x.std()), 1e-12)


def _spectra(
    rng: np.random.Generator, classes: int, bands: int, pairs: int, similarity: float
) -> npt.NDArray[np.float64]:
    """(classes, bands) reflectances in ~[0.1, 0.9]: smooth continua with absorption dips;
    class 2k+1 (k < pairs) is class 2k plus one small dip and a ``similarity`` offset."""
    lam = np.linspace(0.0, 1.0, bands)
    out = np.empty((classes, bands))
    for k in range(classes):
        bumps = sum(
            rng.uniform(0.1, 0.3)
            * np.exp(-0.5 * ((lam - rng.uniform()) / rng.uniform(0.15, 0.4)) ** 2)
            for _ in range(3)
        )
        continuum = 0.25 + rng.uniform(-0.15, 0.15) * lam + bumps
        dips = sum(
            rng.uniform(0.05, 0.2)
            * np.exp(-0.5 * ((lam - rng.uniform()) / rng.uniform(0.02, 0.06)) ** 2)
            for _ in range(2)
        )
        out[k] = continuum - dips
    for k in range(pairs):
        dip = np.exp(-0.5 * ((lam - rng.uniform(0.2, 0.8)) / 0.05) ** 2)
        out[2 * k + 1] = out[2 * k] + similarity * (1.0 - 2.0 * dip)
    return out


def _scene(
    name: str,
    cube: npt.NDArray[Any],
    labels: npt.NDArray[np.integer[Any]],
    classes: int,
    p: SplitParams,
    split_seed: list[int],
) -> Scene:
    """Standardised bands, and training blocks drawn class by class."""
    cube = np.asarray(cube, dtype=np.float64)
    cube = (cube - cube.mean(axis=(1, 2), keepdims=True)) / np.maximum(
        cube.std(axis=(1, 2), keepdims=True), 1e-12
    )
    train = _blocks(labels, classes, p.train_fraction, p.block, np.random.default_rng(split_seed))
    labelled = labels != UNLABELLED
    return Scene(
        name,
        torch.from_numpy(cube.astype(np.float32)),
        torch.from_numpy(labels.astype(np.int64)),
        torch.from_numpy(train),
        torch.from_numpy(labelled & ~train),
        classes,
    )


def _blocks(
    labels: npt.NDArray[np.integer[Any]],
    classes: int,
    fraction: float,
    block: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.bool_]:
    """Training pixels: for each class, ``block``² squares centred on random pixels of that
    class until ``fraction`` of the class is labelled (at least one square); a square's pixels
    of other classes are labelled too, with their own class."""
    h, w = labels.shape
    train = np.zeros((h, w), dtype=bool)
    labelled = labels != UNLABELLED
    lo, hi = block // 2, block - block // 2
    for c in range(classes):
        ys, xs = np.nonzero(labels == c)
        want = max(1, math.ceil(fraction * len(ys)))
        for i in rng.permutation(len(ys)):
            if (train & (labels == c)).sum() >= want:
                break
            y, x = ys[i], xs[i]
            if train[y, x]:
                continue
            square = np.s_[max(y - lo, 0) : y + hi, max(x - lo, 0) : x + hi]
            train[square] |= labelled[square]
    return train


class HsiFileParams(SplitParams):
    path: str  # the cube: .mat (H, W, bands) or ENVI .hdr (its data file beside it)
    ground_truth: str  # the class map (H, W): .mat or ENVI; 0 = no class, 1..C the classes
    key: str | None = None  # the .mat variable of the cube (default: its only 3-D array)
    ground_truth_key: str | None = None  # the .mat variable of the map (its only 2-D array)

    def check(self) -> list[str]:
        return [
            f"data.{field}: no file {value}"
            for field, value in (("path", self.path), ("ground_truth", self.ground_truth))
            if not Path(value).expanduser().is_file()
        ]


@DATASETS.register("hsi_file", HsiFileParams)
def hsi_file(p: HsiFileParams) -> Scene:
    """A user's scene (workload hsi): a .mat or ENVI cube and a ground-truth map (0 = none)."""
    cube = _read(Path(p.path).expanduser(), p.key, 3, "path")
    gt = _read(Path(p.ground_truth).expanduser(), p.ground_truth_key, 2, "ground_truth")
    if gt.ndim == 3 and gt.shape[2] == 1:
        gt = gt[:, :, 0]
    if cube.shape[:2] != gt.shape:
        raise UserError(
            f"hsi_file: the ground truth's shape {tuple(gt.shape)} differs from the cube's "
            f"(height, width) {tuple(cube.shape[:2])} ({p.path}: {tuple(cube.shape)} as height, "
            "width, bands); give the map of this cube"
        )
    if not np.all(np.equal(np.mod(gt, 1), 0)) or gt.min() < 0:
        raise UserError(
            "hsi_file: the ground truth holds classes 0 (none), 1, 2, ...: got "
            "negative or fractional values"
        )
    gt = gt.astype(np.int64)
    classes = int(gt.max())
    if classes < 2:
        raise UserError(f"hsi_file: the ground truth needs at least 2 classes, got {classes}")
    return _scene(Path(p.path).stem, np.moveaxis(cube, 2, 0), gt - 1, classes, p, [p.split_seed, 7])


def _read(path: Path, key: str | None, ndim: int, field: str) -> npt.NDArray[Any]:
    if not path.is_file():
        raise UserError(f"hsi_file: data.{field}: no file {path}")
    if path.suffix.lower() == ".mat":
        from scipy.io import loadmat

        arrays = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
        if key is None:
            found = [k for k, v in arrays.items() if getattr(v, "ndim", 0) == ndim]
            if len(found) != 1:
                raise UserError(
                    f"hsi_file: {path} holds {len(found)} {ndim}-D arrays ({found}); name the "
                    f"one to read with data.{'key' if field == 'path' else 'ground_truth_key'}"
                )
            key = found[0]
        if key not in arrays:
            raise UserError(f"hsi_file: {path} has no variable {key!r}; it has {sorted(arrays)}")
        return np.asarray(arrays[key])
    if path.suffix.lower() == ".hdr":
        return read_envi(path)
    raise UserError(f"hsi_file: data.{field} {path} is neither .mat nor an ENVI .hdr")


_ENVI_TYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}


def read_envi(header: Path) -> npt.NDArray[Any]:
    """An ENVI image as (lines, samples, bands): with ``spectral`` when installed, else a plain
    reader of uncompressed bsq/bil/bip data."""
    try:
        import spectral
    except ImportError:
        pass
    else:
        return np.asarray(spectral.envi.open(str(header)).load())
    text = header.read_text(errors="replace")
    if not text.lstrip().startswith("ENVI"):
        raise UserError(f"hsi_file: {header} is not an ENVI header (it must start with ENVI)")
    fields = {
        k.strip().lower(): v.strip()
        for k, v in re.findall(r"^\s*([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)", text, re.M)
    }
    try:
        lines, samples, bands = (int(fields[k]) for k in ("lines", "samples", "bands"))
        dtype = np.dtype(_ENVI_TYPES[int(fields["data type"])])
    except (KeyError, ValueError) as e:
        raise UserError(
            f"hsi_file: {header} lacks or misstates {e} (lines, samples, bands, data type)"
        ) from None
    dtype = dtype.newbyteorder(">" if fields.get("byte order", "0") == "1" else "<")
    data = next(
        (
            header.with_suffix(s)
            for s in ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip")
            if header.with_suffix(s).is_file() and header.with_suffix(s) != header
        ),
        None,
    )
    if data is None:
        raise UserError(f"hsi_file: no data file beside {header} (same name, no suffix or .img)")
    raw = np.fromfile(data, dtype=dtype, offset=int(fields.get("header offset", "0")))
    if raw.size != lines * samples * bands:
        raise UserError(
            f"hsi_file: {data} holds {raw.size} values, the header says "
            f"{lines} x {samples} x {bands}"
        )
    interleave = fields.get("interleave", "bsq").lower()
    order = {
        "bsq": (bands, lines, samples),
        "bil": (lines, bands, samples),
        "bip": (lines, samples, bands),
    }
    if interleave not in order:
        raise UserError(f"hsi_file: {header}: unknown interleave {interleave!r}")
    cube = raw.reshape(order[interleave])
    axes = {"bsq": (1, 2, 0), "bil": (0, 2, 1), "bip": (0, 1, 2)}[interleave]
    return np.transpose(cube, axes).astype(np.float64)


# ---- the tiles federation --------------------------------------------------------------------

Rect = tuple[int, int, int, int]  # r0, r1, c0, c1


class TilesParams(Params):
    layout: Literal["grid", "stripes"] = "grid"  # stripes: horizontal bands of rows
    rows: PositiveInt | None = None  # grid rows (default: the squarest grid of clients.num)
    halo: NonNegativeInt = 0  # pixels of the neighbours' features around each tile


@dataclass(frozen=True)
class Tiling:
    layout: str
    rows: int | None
    halo: int

    def rectangles(self, height: int, width: int, num_clients: int) -> list[Rect]:
        rows, cols = self.grid(num_clients)
        if rows > height or cols > width:
            raise UserError(
                f"partition tiles: a {rows} x {cols} grid of {num_clients} clients does not fit a "
                f"{height} x {width} scene; lower clients.num"
            )
        ys = np.linspace(0, height, rows + 1).round().astype(int)
        xs = np.linspace(0, width, cols + 1).round().astype(int)
        return [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(rows) for j in range(cols)]

    def grid(self, num_clients: int) -> tuple[int, int]:
        if self.layout == "stripes":
            return num_clients, 1
        rows = self.rows or max(
            d for d in range(1, math.isqrt(num_clients) + 1) if num_clients % d == 0
        )
        if num_clients % rows:
            raise UserError(
                f"partition tiles: rows={rows} does not divide clients.num={num_clients}; "
                "give rows that divide it (rows x columns = clients)"
            )
        return rows, num_clients // rows


@SCENE_PARTITIONERS.register("tiles", TilesParams)
def tiles(p: TilesParams) -> Tiling:
    """Clients as rectangles of the scene (a grid, or stripes), each with a halo of features."""
    return Tiling(p.layout, p.rows, p.halo)


@dataclass(frozen=True, eq=False)
class SceneFederation:
    """Which tile of the scene each client holds."""

    kind: ClassVar[str] = "scene"
    dataset: Scene
    tiles: list[Rect]
    halo: int
    stats: dict[str, float]  # crf_edges_cut, crf_edges_lost, halo_bytes, labelled pairs

    @property
    def num_clients(self) -> int:
        return len(self.tiles)

    def client_sizes(self) -> list[int]:
        """Training pixels of each tile."""
        train = self.dataset.train
        return [int(train[r0:r1, c0:c1].sum()) for r0, r1, c0, c1 in self.tiles]

    def class_counts(self) -> npt.NDArray[np.int64]:
        labels, train = self.dataset.labels.cpu().numpy(), self.dataset.train.cpu().numpy()
        return np.stack(
            [
                np.bincount(
                    labels[r0:r1, c0:c1][train[r0:r1, c0:c1]], minlength=self.dataset.num_classes
                )
                for r0, r1, c0, c1 in self.tiles
            ]
        ).astype(np.int64)

    def train_data(self, client: int) -> SceneWindow:
        return self.dataset.window(*self.tiles[client], halo=self.halo)

    def val_data(self, client: int) -> SceneWindow:
        """The same window: its ``test`` pixels are the tile's evaluation pixels."""
        return self.train_data(client)

    def test_data(self) -> SceneWindow:
        """The whole scene, for the central evaluation."""
        return self.dataset.whole()

    def to(self, device: torch.device) -> SceneFederation:
        return dataclasses.replace(self, dataset=self.dataset.to(device))


@federates("scene")
def federate_scene(
    dataset: Scene, partitioner: Component, num_clients: int, seed: int, val_fraction: float
) -> SceneFederation:
    """Tiles of the scene (``data.partition``, ``tiles``). Every tile evaluates on its own test
    pixels, so ``val_fraction`` is not used; the tiling is fixed, so neither is ``seed``."""
    tiling: Tiling = SCENE_PARTITIONERS.build(partitioner)
    h, w = dataset.shape
    rects = tiling.rectangles(h, w, num_clients)
    owner = np.empty((h, w), dtype=np.int64)
    for i, (r0, r1, c0, c1) in enumerate(rects):
        owner[r0:r1, c0:c1] = i
    everywhere = np.ones((h, w), dtype=bool)
    edges, cut = edge_count(everywhere), _cut_edges(owner)
    train = dataset.train.cpu().numpy()
    halo_pixels = sum(
        (min(r1 + tiling.halo, h) - max(r0 - tiling.halo, 0))
        * (min(c1 + tiling.halo, w) - max(c0 - tiling.halo, 0))
        - (r1 - r0) * (c1 - c0)
        for r0, r1, c0, c1 in rects
    )
    kept_pairs = sum(edge_count(train[r0:r1, c0:c1]) for r0, r1, c0, c1 in rects)
    stats = {
        "crf_edges_cut": cut / edges,  # 8-neighbour edges whose ends lie in different tiles
        "crf_edges_lost": 0.0 if tiling.halo > 0 else cut / edges,  # and that no halo restores
        "halo_bytes": float(halo_pixels * dataset.bands * FLOAT_BYTES),
        "labelled_pairs": float(dataset.labelled_pairs),
        "labelled_pairs_in_tiles": float(kept_pairs),
        "tiles_without_labels": float(
            sum(train[r0:r1, c0:c1].sum() == 0 for r0, r1, c0, c1 in rects)
        ),
    }
    return SceneFederation(dataset, rects, tiling.halo, stats)


def _cut_edges(owner: npt.NDArray[np.int64]) -> int:
    h, w = owner.shape
    total = 0
    for dy, dx in HALF_NEIGHBOURHOOD:
        a = owner[0 : h - dy, max(-dx, 0) : w - max(dx, 0)]
        b = owner[dy:h, max(dx, 0) : w - max(-dx, 0)]
        total += int((a != b).sum())
    return total
