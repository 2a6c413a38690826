"""Person re-identification data with domains, offline: people seen by cameras in several domains.

A dataset of kind ``domains`` holds ``sources + 1`` domains; the last is the target. Each domain has
its own people (identities are disjoint across domains), its own cameras (a fixed geometric and
photometric transform each) and its own visual style. Every person is seen ``views`` times, the
views dealt round-robin over the cameras from a random first camera, so every person is seen by at
least two cameras. The target's training people come without labels: no client-facing object holds
them. The target's test people form a query/gallery split on the Market-1501 protocol: one query
view per person, the other views in the gallery; a gallery entry of the query's identity seen by
the query's camera is not a valid match (the metric excludes it, with the cameras given here).

``reid_synthetic`` draws people procedurally (head, torso with a pattern, legs); ``reid_fmnist``
makes each person one Fashion-MNIST item (the Debian package). Pure torch and numpy; no Flower.
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
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import Tensor

from fedsim.data import FASHION_MNIST_DIR, RowSplit, _find_idx, _read_idx, federates
from fedsim.errors import UserError
from fedsim.registry import DATASETS, DOMAIN_PARTITIONERS, Component, DomainDatasetParams, Params

IntArray = npt.NDArray[np.int64]

TRAIN, QUERY, GALLERY = 0, 1, 2  # DomainDataset.split
UNLABELLED = -1  # DomainDataset.identities of the target's training rows
# Pixels are in [0, 1] before normalisation; one affine map for every domain keeps the styles'
# differences in the data.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25
STYLES = ("palette", "invert_gamma", "edges", "blur_texture")  # domain d has STYLES[d % 4]


class TargetLabelsError(RuntimeError):
    """Training code asked for the target domain's identities, which it never receives."""


@dataclass(frozen=True, eq=False)  # tensors have no boolean equality; compare by identity
class RetrievalSet:
    """A query/gallery split for retrieval (Market-1501 protocol).

    A gallery entry with the query's identity *and* the query's camera is not a valid match; every
    query has at least one valid match on another camera. Identities are global ids.
    """

    query_images: Tensor  # float32 (Q, 3, H, W), normalised
    query_identities: Tensor  # int64 (Q,)
    query_cameras: Tensor  # int64 (Q,)
    gallery_images: Tensor  # float32 (G, 3, H, W)
    gallery_identities: Tensor  # int64 (G,)
    gallery_cameras: Tensor  # int64 (G,)

    def to(self, device: torch.device) -> RetrievalSet:
        return RetrievalSet(*(t.to(device) for t in dataclasses.astuple(self)))


@dataclass(frozen=True, eq=False)
class DomainDataset:
    """Every image of every domain, in memory; shared by a process's clients, so never mutate it.

    ``identities`` are global ids (disjoint across domains), ``UNLABELLED`` on the target's
    training rows; ``target_train_identities`` are the true ids of those rows (in row order), kept
    for partitioning the target's people among its clients and for tests, never handed to a client.
    """

    name: str
    images: Tensor  # float32 (N, 3, H, W), normalised
    identities: Tensor  # int64 (N,)
    cameras: Tensor  # int64 (N,), 0..cameras-1 within the row's domain
    domains: Tensor  # int64 (N,), 0..num_domains-1; the last is the target
    split: Tensor  # int64 (N,): TRAIN, QUERY or GALLERY (only the target has QUERY/GALLERY)
    num_domains: int
    num_cameras: int
    styles: tuple[str, ...]  # of each domain
    target_train_identities: Tensor  # int64, the true ids of the target's TRAIN rows

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def target(self) -> int:
        return self.num_domains - 1

    @property
    def num_sources(self) -> int:
        return self.num_domains - 1

    def train_rows(self, domain: int) -> Tensor:
        """Rows of ``domain``'s training images, ascending."""
        keep = (self.domains == domain) & (self.split == TRAIN)
        return torch.nonzero(keep).flatten()

    def test_set(self) -> RetrievalSet:
        """The target's query/gallery split."""
        q = torch.nonzero(self.split == QUERY).flatten()
        g = torch.nonzero(self.split == GALLERY).flatten()
        return RetrievalSet(
            self.images[q],
            self.identities[q],
            self.cameras[q],
            self.images[g],
            self.identities[g],
            self.cameras[g],
        )

    def to(self, device: torch.device) -> DomainDataset:
        return dataclasses.replace(
            self,
            images=self.images.to(device),
            identities=self.identities.to(device),
            cameras=self.cameras.to(device),
            domains=self.domains.to(device),
            split=self.split.to(device),
            target_train_identities=self.target_train_identities.to(device),
        )


@dataclass(frozen=True, eq=False)
class DomainClientData:
    """What a client of a ``domains`` federation trains and evaluates on: one domain's people.

    ``identities`` are local ids 0..num_identities-1 (the client's own classifier's classes); the
    target's client has none, and reading them raises ``TargetLabelsError``. ``retrieval`` is the
    client's held-out people as a query/gallery split (source clients with ``val_fraction > 0``),
    None otherwise.
    """

    images: Tensor  # float32 (n, 3, H, W)
    cameras: Tensor  # int64 (n,)
    domain: int
    is_target: bool
    num_domains: int
    num_identities: int  # 0 for the target: its people are unknown
    retrieval: RetrievalSet | None
    _identities: Tensor | None  # int64 (n,); None for the target

    @property
    def identities(self) -> Tensor:
        if self._identities is None:
            raise TargetLabelsError(
                f"domain {self.domain} is the target: its training images are unlabelled, and "
                "training code never reads identities there (cluster its features for pseudo-"
                "labels instead)"
            )
        return self._identities

    @property
    def labels(self) -> Tensor:
        """The identities (also for code that reads ``labels``); raises on the target."""
        return self.identities

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device) -> DomainClientData:
        return dataclasses.replace(
            self,
            images=self.images.to(device),
            cameras=self.cameras.to(device),
            retrieval=None if self.retrieval is None else self.retrieval.to(device),
            _identities=None if self._identities is None else self._identities.to(device),
        )


# ---- the datasets ----------------------------------------------------------------------------


Side = Annotated[int, Field(ge=8, le=256)]


class ReidParams(DomainDatasetParams):
    sources: int = Field(default=3, ge=1, le=16)  # source domains; one target domain follows
    identities: PositiveInt = 32  # people per domain (the target's: its unlabelled train people)
    test_identities: PositiveInt = 32  # the target's query/gallery people
    views: int = Field(default=8, ge=2)  # images per person
    cameras: int = Field(default=4, ge=2)  # per domain
    image_size: tuple[Side, Side] = (32, 16)  # (H, W)
    seed: NonNegativeInt = 0  # of the data itself; independent of the scenario's seed


class ReidFmnistParams(ReidParams):
    root: str | None = None  # folder of the Fashion-MNIST IDX files; default: the Debian package's


@DATASETS.register("reid_synthetic", ReidParams)
def reid_synthetic(p: ReidParams) -> DomainDataset:
    """Re-ID with domains (workload reid): procedural people, camera views, a style per domain."""
    rng = np.random.default_rng([p.seed, 1])
    return _build("reid_synthetic", p, _synthetic_people(rng, _people(p), p.image_size))


@DATASETS.register("reid_fmnist", ReidFmnistParams)
def reid_fmnist(p: ReidFmnistParams) -> DomainDataset:
    """Re-ID with domains (workload reid): each person a Fashion-MNIST item, seen by cameras."""
    root = Path(p.root).expanduser() if p.root is not None else FASHION_MNIST_DIR
    path = _find_idx(root, "train-images-idx3-ubyte")
    if path is None:
        raise UserError(
            f"reid_fmnist: train-images-idx3-ubyte(.gz) not found in {root}; install it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or set data.root, or use "
            "data: {name: reid_synthetic}, which needs no files"
        )
    items = _read_idx(path)
    n = _people(p)
    if n > len(items):
        raise UserError(
            f"reid_fmnist needs (sources + 1) * identities + test_identities <= {len(items)} "
            f"items, got {n}; lower identities or test_identities"
        )
    rng = np.random.default_rng([p.seed, 1])
    chosen = np.sort(rng.choice(len(items), size=n, replace=False))[rng.permutation(n)]
    grey = torch.from_numpy(items[chosen].astype(np.float32) / 255.0)[:, None]
    grey = F.interpolate(grey, size=p.image_size, mode="bilinear", align_corners=False)
    return _build("reid_fmnist", p, grey.clamp(0, 1).expand(-1, 3, -1, -1).contiguous())


def _people(p: ReidParams) -> int:
    return (p.sources + 1) * p.identities + p.test_identities


def _synthetic_people(rng: np.random.Generator, n: int, size: tuple[int, int]) -> Tensor:
    """``n`` people in [0, 1], (n, 3, H, W): hair and face, a patterned torso, two legs."""
    h, w = size
    y = (torch.arange(h, dtype=torch.float32) + 0.5)[:, None] / h
    x = (torch.arange(w, dtype=torch.float32) + 0.5)[None, :] / w

    def colours(low: float = 0.0, high: float = 1.0) -> Tensor:
        return torch.from_numpy(rng.uniform(low, high, (n, 3, 1, 1)).astype(np.float32))

    skin_tone = rng.uniform(0.45, 0.95, (n, 1))
    skin = torch.from_numpy(
        (skin_tone * np.array([[1.0, 0.75, 0.55]]) * rng.uniform(0.9, 1.1, (n, 3))).astype(
            np.float32
        )
    )[:, :, None, None]
    hair, torso, second, legs = colours(0, 0.6), colours(), colours(), colours()
    pattern = torch.from_numpy(rng.integers(0, 4, n))[:, None, None, None]  # plain/h/v/checks
    freq = torch.from_numpy(rng.integers(2, 5, n).astype(np.float32))[:, None, None, None]
    out = torch.full((n, 3, h, w), 0.45)
    head = (y < 0.22) & ((x - 0.5).abs() < 0.2)
    out = torch.where(head, skin, out)
    out = torch.where(head & (y < 0.08), hair, out)
    body = (y >= 0.22) & (y < 0.6) & ((x - 0.5).abs() < 0.38)
    rows = torch.floor((y - 0.22) / 0.38 * 2 * freq) % 2 == 1
    cols = torch.floor(x * 2 * freq) % 2 == 1
    second_on = torch.where(
        pattern == 1, rows, torch.where(pattern == 2, cols, (pattern == 3) & (rows ^ cols))
    )
    out = torch.where(body, torch.where(second_on, second, torso), out)
    leg = (y >= 0.6) & (((x - 0.35).abs() < 0.12) | ((x - 0.65).abs() < 0.12))
    return torch.where(leg, legs, out)


def _build(name: str, p: ReidParams, people: Tensor) -> DomainDataset:
    """Views of ``people`` (one per person, [0, 1]) by each domain's cameras, in its style.

    People ``d * identities ...`` belong to domain d; the last ``test_identities`` are the
    target's query/gallery people.
    """
    num_domains = p.sources + 1
    target = num_domains - 1
    images, identities, cameras, domains, split, hidden = [], [], [], [], [], []
    for d in range(num_domains):
        rng = np.random.default_rng([p.seed, 2, d])
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        first = d * p.identities
        ids = np.arange(first, first + p.identities)
        if d == target:
            ids = np.concatenate([ids, np.arange(first + p.identities, len(people))])
        person = np.repeat(ids, p.views)
        view = np.tile(np.arange(p.views), len(ids))
        camera = (np.repeat(rng.integers(0, p.cameras, len(ids)), p.views) + view) % p.cameras
        x = _views(people[torch.from_numpy(person)], camera, d, p, rng, gen)
        role = np.full(len(person), TRAIN)
        if d == target:
            test = person >= first + p.identities
            role[test] = np.where(view[test] == 0, QUERY, GALLERY)
            hidden.append(person[~test])
            person = np.where(test, person, UNLABELLED)
        images.append(x)
        identities.append(person)
        cameras.append(camera)
        domains.append(np.full(len(person), d))
        split.append(role)

    def i64(parts: Sequence[npt.NDArray[np.integer]]) -> Tensor:
        return torch.from_numpy(np.concatenate(parts).astype(np.int64))

    return DomainDataset(
        name,
        (torch.cat(images) - PIXEL_MEAN) / PIXEL_STD,
        i64(identities),
        i64(cameras),
        i64(domains),
        i64(split),
        num_domains,
        p.cameras,
        tuple(STYLES[d % len(STYLES)] for d in range(num_domains)),
        i64(hidden),
    )


def _views(
    people: Tensor,
    camera: npt.NDArray[np.int64],
    domain: int,
    p: ReidParams,
    rng: np.random.Generator,
    gen: torch.Generator,
) -> Tensor:
    """One view per row: the camera's geometry (zoom, shift) with a small per-view jitter and a
    random mirror, the domain's style, then the camera's photometry (contrast, brightness, colour
    cast) and sensor noise; in [0, 1]."""
    n, c = len(people), p.cameras

    def per_camera(low: float, high: float, shape: tuple[int, ...] = ()) -> Tensor:
        values = torch.from_numpy(rng.uniform(low, high, (c, *shape)).astype(np.float32))
        return values[torch.from_numpy(camera)]

    def per_view(low: float, high: float) -> Tensor:
        return torch.from_numpy(rng.uniform(low, high, n).astype(np.float32))

    zoom = per_camera(0.85, 1.15) * per_view(0.96, 1.04)
    shift_x = per_camera(-0.12, 0.12) + per_view(-0.04, 0.04)
    shift_y = per_camera(-0.08, 0.08) + per_view(-0.04, 0.04)
    mirror = torch.from_numpy(np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32))
    contrast, brightness = per_camera(0.75, 1.25), per_camera(0.75, 1.25)
    cast, noise = per_camera(0.85, 1.15, (3,)), per_camera(0.01, 0.05)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = mirror / zoom
    theta[:, 1, 1] = 1 / zoom
    theta[:, 0, 2] = shift_x
    theta[:, 1, 2] = shift_y
    grid = F.affine_grid(theta, list(people.shape), align_corners=False)
    x = F.grid_sample(people, grid, padding_mode="border", align_corners=False)
    x = _style(x, domain, np.random.default_rng([p.seed, 3, domain]))
    x = ((x - 0.5) * contrast[:, None, None, None] + 0.5) * brightness[:, None, None, None]
    x = x * cast[:, :, None, None]
    x = x + noise[:, None, None, None] * torch.randn(x.shape, generator=gen)
    return x.clamp(0.0, 1.0)


def _style(x: Tensor, domain: int, rng: np.random.Generator) -> Tensor:
    """Domain ``domain``'s look, ``STYLES[domain % 4]`` with parameters of its own."""
    style = STYLES[domain % len(STYLES)]
    if style == "palette":  # mix the channels: colourises grey, recolours colour
        mix = rng.uniform(0.0, 1.0, (3, 3))
        mix *= (rng.uniform(0.5, 1.2, 3) / mix.sum(axis=1))[:, None]
        return torch.einsum("oc,nchw->nohw", torch.from_numpy(mix.astype(np.float32)), x)
    if style == "invert_gamma":
        return (1.0 - x).clamp(0, 1) ** float(rng.uniform(0.5, 0.8))
    luminance = x.mean(dim=1, keepdim=True)
    if style == "edges":  # Sobel magnitude, tinted
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        kernels = torch.stack([sobel, sobel.T])[:, None]
        grad = F.conv2d(F.pad(luminance, (1, 1, 1, 1), mode="replicate"), kernels)
        magnitude = grad.norm(dim=1, keepdim=True)
        magnitude = magnitude / magnitude.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        tint = torch.from_numpy(rng.uniform(0.6, 1.0, 3).astype(np.float32))[None, :, None, None]
        return 0.1 + 0.9 * magnitude * tint
    # blur_texture: a Gaussian blur, over a fixed stripe texture of the domain
    taps = torch.exp(-0.5 * (torch.arange(5, dtype=torch.float32) - 2) ** 2 / 1.2**2)
    kernel = (taps[:, None] * taps[None, :] / taps.sum() ** 2).expand(3, 1, 5, 5)
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), kernel.contiguous(), groups=3)
    h, w = x.shape[2:]
    fy, fx = rng.uniform(1.0, 3.0, 2)
    y = torch.arange(h, dtype=torch.float32)[:, None] / h
    xs = torch.arange(w, dtype=torch.float32)[None, :] / w
    texture = 0.5 + 0.5 * torch.sin(2 * math.pi * (fy * y + fx * xs))
    return 0.8 * blurred + 0.2 * texture


# ---- the partitioner and the federation ------------------------------------------------------

# (people of each domain, clients, rng) -> each client's (domain, its people), sources first
Assign = Callable[[list[IntArray], int, np.random.Generator], list[tuple[int, IntArray]]]


class DomainsParams(Params):
    # The source domains that take part (default: all); the others get no client, so that a
    # single-source run adapts to the same target as the multi-source one.
    sources: list[NonNegativeInt] | None = Field(default=None, min_length=1)


@DOMAIN_PARTITIONERS.register("domains", DomainsParams)
def domains(p: DomainsParams) -> Assign:
    """One client per domain (the target last); extra clients split a domain's people."""

    def assign(
        people: list[IntArray], num_clients: int, rng: np.random.Generator
    ) -> list[tuple[int, IntArray]]:
        target = len(people) - 1
        taking_part = [*sorted(set(p.sources)), target] if p.sources else list(range(len(people)))
        if p.sources and max(p.sources) >= target:
            raise UserError(
                f"partition domains: sources {p.sources} name a domain that is not a source; the "
                f"data has sources 0..{target - 1} (domain {target} is the target)"
            )
        d = len(taking_part)
        if num_clients < d:
            raise UserError(
                f"partition domains needs clients.num >= the {d} domains ({d - 1} sources + 1 "
                f"target), got clients.num={num_clients}; raise clients.num or lower data.sources"
            )
        per_domain = [num_clients // d + (i < num_clients % d) for i in range(d)]
        out = []
        chosen = [people[domain] for domain in taking_part]
        for domain, ids, k in zip(taking_part, chosen, per_domain, strict=True):
            if len(ids) < k:
                raise UserError(
                    f"partition domains gives domain {domain} {k} clients, which needs at least "
                    f"{k} people there, got {len(ids)}; raise data.identities or lower clients.num"
                )
            out += [(domain, np.sort(part)) for part in np.array_split(rng.permutation(ids), k)]
        return out

    return assign


@dataclass(frozen=True, eq=False)
class DomainFederation(RowSplit):
    """Which domain's people each client holds: rows of ``dataset`` to train on and held out."""

    kind: ClassVar[str] = "domains"
    dataset: DomainDataset
    client_domains: list[int]
    train: list[Tensor]  # per client: int64 rows of dataset used for training
    val: list[Tensor]  # per client: held-out rows (a source client's held-out people)

    def class_counts(self) -> IntArray:
        """Training images of each client as one class (clients' identities are disjoint)."""
        return self.one_class_counts()

    def train_data(self, client: int) -> DomainClientData:
        d, rows = self.dataset, self.train[client]
        domain = self.client_domains[client]
        is_target = domain == d.target
        local = None
        if not is_target:
            _, local = torch.unique(d.identities[rows], return_inverse=True)
        return DomainClientData(
            images=d.images[rows],
            cameras=d.cameras[rows],
            domain=domain,
            is_target=is_target,
            num_domains=d.num_domains,
            num_identities=0 if local is None else int(local.max()) + 1,
            retrieval=self._retrieval(client),
            _identities=local,
        )

    def val_data(self, client: int) -> DomainClientData:
        """The same as ``train_data``: its ``retrieval`` holds the client's held-out people."""
        return self.train_data(client)

    def test_data(self) -> RetrievalSet:
        """The target's query/gallery split, for the central evaluation."""
        return self.dataset.test_set()

    def _retrieval(self, client: int) -> RetrievalSet | None:
        rows = self.val[client]
        if len(rows) == 0:
            return None
        d = self.dataset
        ids = d.identities[rows]
        first = torch.ones(len(rows), dtype=torch.bool)
        first[1:] = ids[1:] != ids[:-1]  # rows are grouped by person: its first view is the query
        q, g = rows[first], rows[~first]
        return RetrievalSet(
            d.images[q], d.identities[q], d.cameras[q], d.images[g], d.identities[g], d.cameras[g]
        )

    def to(self, device: torch.device) -> DomainFederation:
        return DomainFederation(
            self.dataset.to(device),
            self.client_domains,
            [t.to(device) for t in self.train],
            [v.to(device) for v in self.val],
        )


@federates("domains")
def federate_domains(
    dataset: DomainDataset, partitioner: Component, num_clients: int, seed: int, val_fraction: float
) -> DomainFederation:
    """Each client one domain's people (``data.partition``); a source client holds out
    ``floor(val_fraction * people)`` of its people (at most all but one) for its own retrieval.
    The target's client holds nothing out: its evaluation is the server's."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction needs to be in [0, 1), got {val_fraction}")
    if seed < 0:
        raise UserError(f"seed needs to be >= 0, got {seed}")
    rows = [dataset.train_rows(d).numpy() for d in range(dataset.num_domains)]
    people = [np.unique(_true_ids(dataset, d, r)) for d, r in enumerate(rows)]
    rng = np.random.default_rng([seed, 0])
    assign: Assign = DOMAIN_PARTITIONERS.build(partitioner)
    client_domains, train, val = [], [], []
    for domain, mine in assign(people, num_clients, rng):
        ids = _true_ids(dataset, domain, rows[domain])
        n_val = 0 if domain == dataset.target else min(int(val_fraction * len(mine)), len(mine) - 1)
        held = rng.choice(mine, size=n_val, replace=False)
        client_domains.append(domain)
        train.append(torch.from_numpy(rows[domain][np.isin(ids, mine) & ~np.isin(ids, held)]))
        val.append(torch.from_numpy(rows[domain][np.isin(ids, held)]))
    return DomainFederation(dataset, client_domains, train, val)


def _true_ids(dataset: DomainDataset, domain: int, rows: IntArray) -> IntArray:
    """The people of ``rows`` (training rows of ``domain``): the target's hidden ones there."""
    if domain == dataset.target:
        return dataset.target_train_identities.numpy()
    return dataset.identities[torch.from_numpy(rows)].numpy()
