"""Open domain generalisation data, offline: three source domains, each with its own label set, and
an unseen target domain that also holds classes no source has.

The open split is DAML's (Shu et al., CVPR 2021; official code ``src/daml.py``, see
``notes/workloads-precise.md`` §2.2): class groups S123 (``n1`` classes in every source), S12, S13,
S23 (``n2`` each), S1, S2, S3 (``n3`` each), taken consecutively from the class list; source i gets
S_i ∪ S_ij ∪ S_ik ∪ S123; the target gets the first ``n4`` of S123, the first ``n5`` of each pair
set and the first ``n6`` of each single set (its known classes) plus ``n7`` unknown classes. The
classifier's classes are the union of the sources' (``n1 + 3 n2 + 3 n3``), in group order.

A domain is a rotation of the images (``angles``: three sources, then the target). Each class's
images are dealt among the domains that hold the class, so no image is in two domains.
``opendg_digits`` rotates scikit-learn's 8x8 digits, ``opendg_fmnist`` the Fashion-MNIST of the
Debian package (resized), ``opendg_synthetic`` seeded 8x8 images (class prototypes in a latent
space through a fixed random MLP). Pure torch and numpy; no Flower.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator
from torch import Tensor

from fedsim.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    RowSplit,
    _find_idx,
    _read_idx,
    federates,
)
from fedsim.errors import UserError
from fedsim.registry import DATASETS, OPENDG_PARTITIONERS, Component, OpenDGDatasetParams, Params

IntArray = npt.NDArray[np.int64]
SOURCES = 3  # the open split's groups are the three sources' subsets
CLASSES = 10  # of digits, Fashion-MNIST and the synthetic twin
UNKNOWN = -1  # OpenDGDataset.labels of a target sample whose class no source has


# ---- the open split ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenSplit:
    """Which classes each domain holds; ``known`` orders the classifier's outputs."""

    sources: tuple[tuple[int, ...], ...]  # each source's classes, ascending
    target_known: tuple[int, ...]
    unknown: tuple[int, ...]
    known: tuple[int, ...]  # the union of the sources' classes, in group order: label i = known[i]

    @property
    def num_known(self) -> int:
        return len(self.known)

    def domain_classes(self, domain: int) -> tuple[int, ...]:
        """The classes of ``domain`` (0..2 sources, 3 the target), ascending."""
        if domain < SOURCES:
            return self.sources[domain]
        return tuple(sorted(self.target_known + self.unknown))


Sizes = tuple[int, int, int, int, int, int, int]


def open_split(sizes: Sizes, num_classes: int) -> OpenSplit:
    """DAML's open split of classes ``0..num_classes-1`` with group sizes ``(n1, ..., n7)``."""
    n1, n2, n3, n4, n5, n6, n7 = sizes
    needed = n1 + 3 * n2 + 3 * n3 + n7
    if min(sizes) < 0 or needed > num_classes:
        raise UserError(
            f"open split {list(sizes)} needs n1 + 3 n2 + 3 n3 + n7 = {needed} <= {num_classes} "
            "classes and no negative size; lower the sizes"
        )
    if n1 + 2 * n2 + n3 == 0:
        raise UserError(
            f"open split {list(sizes)} leaves every source with no class (n1 + 2 n2 + n3 = 0); "
            "raise n1, n2 or n3"
        )
    if n4 > n1 or n5 > n2 or n6 > n3:
        raise UserError(
            f"open split {list(sizes)}: the target's known classes are taken from the sources' "
            "groups, so it needs n4 <= n1, n5 <= n2 and n6 <= n3"
        )
    if n7 == 0:
        raise UserError(f"open split {list(sizes)} has no unknown class (n7 = 0); raise n7")
    cursor = 0

    def take(n: int) -> list[int]:
        nonlocal cursor
        cursor += n
        return list(range(cursor - n, cursor))

    s123 = take(n1)
    s12, s13, s23 = take(n2), take(n2), take(n2)
    s1, s2, s3 = take(n3), take(n3), take(n3)
    unknown = take(n7)
    sources = (s1 + s12 + s13 + s123, s2 + s12 + s23 + s123, s3 + s13 + s23 + s123)
    target = s123[:n4] + s12[:n5] + s13[:n5] + s23[:n5] + s1[:n6] + s2[:n6] + s3[:n6]
    return OpenSplit(
        tuple(tuple(sorted(s)) for s in sources),
        tuple(sorted(target)),
        tuple(unknown),
        tuple(s123 + s12 + s13 + s23 + s1 + s2 + s3),
    )


# ---- the data --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # tensors have no boolean equality; compare by identity
class OpenDGDataset:
    """Every image of every domain, in memory; shared by a process's clients, so never mutate it.

    ``labels`` index the classifier's classes (``split.known``), ``UNKNOWN`` for a target sample
    of an unknown class; ``classes`` are the original class ids.
    """

    name: str
    images: Tensor  # float32 (N, 1, H, W), normalised
    labels: Tensor  # int64 (N,)
    classes: Tensor  # int64 (N,)
    domains: Tensor  # int64 (N,): 0..2 sources, 3 the target
    split: OpenSplit
    angles: tuple[float, ...]

    @property
    def num_sources(self) -> int:
        return SOURCES

    @property
    def target(self) -> int:
        return SOURCES

    @property
    def num_known(self) -> int:
        return self.split.num_known

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def rows(self, domain: int) -> Tensor:
        return torch.nonzero(self.domains == domain).flatten()


@dataclass(frozen=True, eq=False)
class OpenDGClientData:
    """A client's samples of the source domains it holds: labels index the known classes."""

    x: Tensor  # float32 (n, 1, H, W)
    y: Tensor  # int64 (n,)
    domain: Tensor  # int64 (n,)
    num_sources: int
    num_known: int

    @property
    def domains(self) -> tuple[int, ...]:
        """The source domains this client holds, ascending."""
        return tuple(int(d) for d in torch.unique(self.domain).tolist())

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> OpenDGClientData:
        return dataclasses.replace(
            self, x=self.x.to(device), y=self.y.to(device), domain=self.domain.to(device)
        )


@dataclass(frozen=True, eq=False)
class OpenDGTest:
    """The server's evaluation data: the unseen target domain (``UNKNOWN`` labels for classes no
    source has) and the held-out source samples of every client, from which the fair τ is set."""

    x: Tensor
    y: Tensor  # int64, UNKNOWN for unknown classes
    classes: Tensor  # int64, the original class ids (class-averaged accuracy)
    source_x: Tensor
    source_y: Tensor
    num_known: int

    def to(self, device: torch.device) -> OpenDGTest:
        return dataclasses.replace(
            self,
            x=self.x.to(device),
            y=self.y.to(device),
            classes=self.classes.to(device),
            source_x=self.source_x.to(device),
            source_y=self.source_y.to(device),
        )


Angle = Annotated[float, Field(ge=-180.0, le=180.0)]


class OpenDGParams(OpenDGDatasetParams):
    # (n1, ..., n7) of the open split; the default is the notes' 10-class split
    open_split: tuple[
        NonNegativeInt, NonNegativeInt, NonNegativeInt, NonNegativeInt, NonNegativeInt,
        NonNegativeInt, NonNegativeInt,
    ] = (1, 1, 1, 1, 1, 1, 3)  # fmt: skip
    angles: tuple[Angle, Angle, Angle, Angle] = (0.0, 30.0, 60.0, 45.0)  # 3 sources, the target
    per_class: PositiveInt | None = None  # images of a class in one domain, at most
    seed: NonNegativeInt = 0  # of the data itself; independent of the scenario's seed

    @model_validator(mode="after")
    def _target_is_new(self) -> OpenDGParams:
        target, sources = self.angles[3], self.angles[:3]
        if any(math.isclose(target, s) for s in sources):
            raise ValueError(
                f"angles: the target's rotation {target} equals a source's {list(sources)}, so "
                "the target domain overlaps a source; give the target an angle of its own"
            )
        if len(set(sources)) < SOURCES:
            raise ValueError(f"angles: the sources' rotations {list(sources)} need to differ")
        try:  # every dataset here has 10 classes: refuse a bad split when the scenario is parsed
            open_split(self.open_split, CLASSES)
        except UserError as err:
            raise ValueError(str(err)) from None
        return self


Side = Annotated[int, Field(ge=8, le=28)]


class OpenDGFmnistParams(OpenDGParams):
    per_class: PositiveInt | None = 200
    image_size: Side = 14
    root: str | None = None  # folder of the Fashion-MNIST IDX files; default: the Debian package's


class OpenDGSyntheticParams(OpenDGParams):
    per_class: PositiveInt | None = 100
    latent: PositiveInt = 8
    noise: float = Field(default=1.0, gt=0.0)  # spread of a class around its prototype


@DATASETS.register("opendg_digits", OpenDGParams)
def opendg_digits(p: OpenDGParams) -> OpenDGDataset:
    """Open DG (workload daml): scikit-learn's 8x8 digits, domains = rotations, open label split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32))[:, None]
    return _build("opendg_digits", p, x, bunch.target.astype(np.int64))


@DATASETS.register("opendg_fmnist", OpenDGFmnistParams)
def opendg_fmnist(p: OpenDGFmnistParams) -> OpenDGDataset:
    """Open DG (workload daml): Fashion-MNIST (Debian package), rotated domains, open split."""
    root = Path(p.root).expanduser() if p.root is not None else FASHION_MNIST_DIR
    images = _find_idx(root, FASHION_MNIST_FILES["x_train"])
    labels = _find_idx(root, FASHION_MNIST_FILES["y_train"])
    if images is None or labels is None:
        raise UserError(
            f"opendg_fmnist: the Fashion-MNIST training IDX files were not found in {root}; "
            "install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or set "
            "data.root, or use data: {name: opendg_digits}, which needs no files"
        )
    y = _read_idx(labels).astype(np.int64)
    x = _read_idx(images)
    rng = np.random.default_rng([p.seed, 4])
    per_class = 4 * (p.per_class or len(y))  # at most 4 domains take a class
    keep = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(10)])
    )
    grey = torch.from_numpy(x[keep].astype(np.float32) / 255.0)[:, None]
    if p.image_size != grey.shape[-1]:
        grey = F.interpolate(grey, size=(p.image_size,) * 2, mode="area")
    return _build("opendg_fmnist", p, grey, y[keep])


@DATASETS.register("opendg_synthetic", OpenDGSyntheticParams)
def opendg_synthetic(p: OpenDGSyntheticParams) -> OpenDGDataset:
    """Open DG (workload daml): seeded 8x8 images (prototypes -> random MLP), rotated domains."""
    rng = np.random.default_rng([p.seed, 5])
    classes, per_class = CLASSES, 4 * (p.per_class or 100)
    prototypes = rng.normal(0.0, 2.0, (classes, p.latent))
    y = np.repeat(np.arange(classes), per_class)
    z = prototypes[y] + p.noise * rng.normal(size=(len(y), p.latent))
    w1 = rng.normal(0.0, 1.0 / math.sqrt(p.latent), (p.latent, 32))
    w2 = rng.normal(0.0, 1.0 / math.sqrt(32), (32, 64))
    pixels = 1.0 / (1.0 + np.exp(-(np.tanh(z @ w1) @ w2) * 2.0))  # in (0, 1)
    x = torch.from_numpy(pixels.astype(np.float32)).reshape(-1, 1, 8, 8)
    return _build("opendg_synthetic", p, x, y.astype(np.int64))


def _build(
    name: str, p: OpenDGParams, images: Tensor, classes: npt.NDArray[np.int64]
) -> OpenDGDataset:
    """Deal each class's images among the domains that hold it, rotate each domain's share."""
    split = open_split(p.open_split, int(classes.max()) + 1)
    known_index = {c: i for i, c in enumerate(split.known)}
    rng = np.random.default_rng([p.seed, 6])
    parts: list[tuple[int, IntArray]] = []  # (domain, rows)
    for c in range(int(classes.max()) + 1):
        holders = [d for d in range(SOURCES + 1) if c in split.domain_classes(d)]
        if not holders:
            continue
        rows = rng.permutation(np.flatnonzero(classes == c))
        for d, share in zip(holders, np.array_split(rows, len(holders)), strict=True):
            parts.append((d, np.sort(share[: p.per_class])))
    xs, labels, cls, doms = [], [], [], []
    for d in range(SOURCES + 1):
        rows = np.concatenate([r for dom, r in parts if dom == d])
        xs.append(_rotate(images[torch.from_numpy(rows)], p.angles[d]))
        cls.append(classes[rows])
        labels.append(np.array([known_index.get(int(c), UNKNOWN) for c in classes[rows]]))
        doms.append(np.full(len(rows), d))
    x = torch.cat(xs)
    mean, std = float(x.mean()), float(x.std())
    return OpenDGDataset(
        name,
        (x - mean) / std,
        torch.from_numpy(np.concatenate(labels).astype(np.int64)),
        torch.from_numpy(np.concatenate(cls).astype(np.int64)),
        torch.from_numpy(np.concatenate(doms).astype(np.int64)),
        split,
        tuple(p.angles),
    )


def _rotate(images: Tensor, degrees: float) -> Tensor:
    """Images rotated by ``degrees`` about their centre (bilinear, zeros outside)."""
    if degrees == 0.0:
        return images.clone()
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="zeros", align_corners=False)


# ---- the partitioners and the federation -----------------------------------------------------

# (rows of each source domain, clients, rng) -> each client's rows (of any domains)
Assign = Callable[[list[IntArray], int, np.random.Generator], list[IntArray]]


@OPENDG_PARTITIONERS.register("domains", Params)
def domains(p: Params) -> Assign:
    """Client d holds source domain d (one client per source domain)."""

    def assign(rows: list[IntArray], num_clients: int, rng: np.random.Generator) -> list[IntArray]:
        if num_clients != len(rows):
            raise UserError(
                f"partition domains gives each of the {len(rows)} source domains one client, so "
                f"it needs clients.num = {len(rows)}, got {num_clients}; or use partition sites"
            )
        return list(rows)

    return assign


@OPENDG_PARTITIONERS.register("sites", Params)
def sites(p: Params) -> Assign:
    """Each client a site holding an equal random share of every source domain."""

    def assign(rows: list[IntArray], num_clients: int, rng: np.random.Generator) -> list[IntArray]:
        if any(len(r) < num_clients for r in rows):
            raise UserError(
                f"partition sites needs every source domain to have at least clients.num = "
                f"{num_clients} images; lower clients.num"
            )
        shares = [np.array_split(rng.permutation(r), num_clients) for r in rows]
        return [np.sort(np.concatenate([s[c] for s in shares])) for c in range(num_clients)]

    return assign


@dataclass(frozen=True, eq=False)
class OpenDGFederation(RowSplit):
    """Which source images each client holds (``train``) and holds out (``val``); the target
    domain is the server's only."""

    kind: ClassVar[str] = "opendg"
    dataset: OpenDGDataset
    train: list[Tensor]
    val: list[Tensor]

    def class_counts(self) -> IntArray:
        labels, k = self.dataset.labels.numpy(), self.dataset.num_known
        return np.stack([np.bincount(labels[t.numpy()], minlength=k) for t in self.train])

    def _data(self, rows: Tensor) -> OpenDGClientData:
        d = self.dataset
        return OpenDGClientData(
            d.images[rows], d.labels[rows], d.domains[rows], SOURCES, d.num_known
        )

    def train_data(self, client: int) -> OpenDGClientData:
        return self._data(self.train[client])

    def val_data(self, client: int) -> OpenDGClientData | None:
        return self._data(self.val[client]) if len(self.val[client]) else None

    def test_data(self) -> OpenDGTest:
        d = self.dataset
        target = d.rows(d.target)
        held = torch.cat(self.val)
        return OpenDGTest(
            d.images[target],
            d.labels[target],
            d.classes[target],
            d.images[held],
            d.labels[held],
            d.num_known,
        )

    def to(self, device: torch.device) -> OpenDGFederation:
        return OpenDGFederation(
            self.dataset, [t.to(device) for t in self.train], [v.to(device) for v in self.val]
        )


@federates("opendg")
def federate_opendg(
    dataset: OpenDGDataset, partitioner: Component, num_clients: int, seed: int, val_fraction: float
) -> OpenDGFederation:
    """The source domains dealt out by ``data.partition``; each client holds out
    ``floor(val_fraction * n)`` of its images, from which the server sets the fair τ."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(
            f"open DG data needs held-out source images for the fair rejection threshold, so "
            f"data.val_fraction needs to be in (0, 1), got {val_fraction}"
        )
    if seed < 0:
        raise UserError(f"seed needs to be >= 0, got {seed}")
    rng = np.random.default_rng([seed, 0])
    assign: Assign = OPENDG_PARTITIONERS.build(partitioner)
    per_source = [dataset.rows(d).numpy() for d in range(SOURCES)]
    train, val = [], []
    for rows in assign(per_source, num_clients, rng):
        n_val = min(max(math.floor(val_fraction * len(rows)), 1), len(rows) - 1)
        held = np.isin(rows, rng.choice(rows, size=n_val, replace=False))
        train.append(torch.from_numpy(rows[~held]))
        val.append(torch.from_numpy(rows[held]))
    return OpenDGFederation(dataset, train, val)


def source_classes(split: OpenSplit) -> Sequence[tuple[int, ...]]:
    """Each source's classes as classifier labels (indices into ``split.known``)."""
    index = {c: i for i, c in enumerate(split.known)}
    return [tuple(sorted(index[c] for c in s)) for s in split.sources]
