"""Synthetic offline model-based optimisation (MBO) tasks: an oracle, a pool and the offline data.

Modelled on Design-Bench (Trabucco et al. 2022, "Design-Bench: Benchmarks for Data-Driven Offline
Model-Based Optimization"): the oracle scores every design, clients only see the designs scoring
below a percentile of the pool, and results are reported as ``(y - y_min) / (y_max - y_min)`` with
``y_min`` / ``y_max`` taken over the whole pool (hidden designs included), so 1.0 is the best design
of the pool, not of the offline data. Pure numpy (plus a torch twin of each oracle); no Flower.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import Tensor

from fedsim.data import RowSplit, federates, split_among_clients
from fedsim.registry import DATASETS, Component, DatasetParams

FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.int64]

SEQUENCE_LENGTH = 8
NUM_BASES = 4


@dataclass(frozen=True, eq=False)  # arrays have no boolean equality; compare by identity
class MboTask:
    """An offline MBO task: oracle, full pool, and the offline slice of it the clients may see.

    ``pool_x`` / ``pool_y`` are every design the task knows (all 4^8 sequences for the discrete
    task, the sampled pool for the continuous one); ``offline_x`` / ``offline_y`` are the rows of
    the pool scoring below ``max_percentile``. ``y_min`` / ``y_max`` are the pool's extremes, the
    normalisation constants of Design-Bench. Never mutate the arrays: tasks are shared.
    """

    name: str
    dim: tuple[int, ...]  # shape of one design: (8, 4) one-hot, or (D,)
    oracle: Callable[[FloatArray], npt.NDArray[np.float64]]  # (n, *dim) -> (n,) true scores
    torch_oracle: Callable[[Tensor], Tensor]  # differentiable twin, (n, *dim) -> (n,)
    pool_x: npt.NDArray[np.float32]
    pool_y: npt.NDArray[np.float64]
    offline_index: IntArray  # rows of the pool that form the offline data, ascending
    max_percentile: float
    y_min: float
    y_max: float

    @property
    def offline_x(self) -> npt.NDArray[np.float32]:
        return self.pool_x[self.offline_index]

    @property
    def offline_y(self) -> npt.NDArray[np.float64]:
        return self.pool_y[self.offline_index]

    @property
    def hidden_y(self) -> npt.NDArray[np.float64]:
        """Scores of the pool rows the clients never see (the top of the pool)."""
        mask = np.ones(len(self.pool_y), dtype=bool)
        mask[self.offline_index] = False
        return self.pool_y[mask]

    @property
    def best_offline(self) -> float:
        return float(self.offline_y.max())

    @property
    def worst(self) -> float:
        return self.y_min

    def normalised(self, scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``(scores - y_min) / (y_max - y_min)``: 0 is the pool's worst design, 1 its best."""
        return (np.asarray(scores, dtype=np.float64) - self.y_min) / (self.y_max - self.y_min)


def _offline_rows(y: npt.NDArray[np.float64], max_percentile: float) -> IntArray:
    """Rows of the lowest ``max_percentile`` % of ``y`` by rank (exactly that many), ascending."""
    if not 0.0 < max_percentile < 100.0:
        raise ValueError(f"max_percentile must lie in (0, 100), got {max_percentile}")
    k = int(len(y) * max_percentile / 100.0)
    if k < 1:
        raise ValueError(f"max_percentile={max_percentile} of {len(y)} designs keeps none")
    return np.sort(np.argsort(y, kind="stable")[:k]).astype(np.int64)


def _task(
    name: str,
    oracle: Callable[[FloatArray], npt.NDArray[np.float64]],
    torch_oracle: Callable[[Tensor], Tensor],
    pool_x: npt.NDArray[np.float32],
    max_percentile: float,
) -> MboTask:
    pool_y = oracle(pool_x)
    return MboTask(
        name=name,
        dim=tuple(pool_x.shape[1:]),
        oracle=oracle,
        torch_oracle=torch_oracle,
        pool_x=pool_x,
        pool_y=pool_y,
        offline_index=_offline_rows(pool_y, max_percentile),
        max_percentile=max_percentile,
        y_min=float(pool_y.min()),
        y_max=float(pool_y.max()),
    )


# ---- discrete: TFBind8-like ------------------------------------------------------------------


def all_sequences() -> IntArray:
    """Every length-8 sequence over 4 bases, (4^8, 8) int64, in lexicographic order."""
    grid = itertools.product(range(NUM_BASES), repeat=SEQUENCE_LENGTH)
    return np.array(list(grid), dtype=np.int64)


def one_hot(sequences: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(n, 8) base indices -> (n, 8, 4) float32 one-hot designs."""
    return np.eye(NUM_BASES, dtype=np.float32)[np.asarray(sequences, dtype=np.int64)]


def decode_logits(logits: npt.ArrayLike) -> IntArray:
    """(n, 8, 4) logits, probabilities or one-hot -> (n, 8) sequences by argmax (first on ties)."""
    return np.asarray(logits).argmax(axis=-1).astype(np.int64)


def to_logits(designs: npt.ArrayLike, soft: float = 0.6) -> npt.NDArray[np.float32]:
    """One-hot designs -> log-probabilities, smoothing ``soft`` of the mass onto the chosen base.

    As Design-Bench's ``to_logits`` (without dropping the redundant first logit): probabilities
    ``soft * one_hot + (1 - soft) / 4``, so the argmax (and the oracle's score) is unchanged.
    """
    probs = soft * np.asarray(designs, dtype=np.float32) + (1.0 - soft) / NUM_BASES
    return np.log(probs).astype(np.float32)


@dataclass(frozen=True, eq=False)
class SequenceOracle:
    """Position weights plus sparse pairwise epistasis over length-8, 4-base sequences.

    ``f(s) = Σ_p w[p, s_p] + Σ_k e[k, s_{i_k}, s_{j_k}]`` over the pairs ``(i_k, j_k)``.
    """

    weights: npt.NDArray[np.float64]  # (8, 4)
    pairs: IntArray  # (K, 2), i < j
    epistasis: npt.NDArray[np.float64]  # (K, 4, 4)

    def score_sequences(self, sequences: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """(n, 8) base indices -> (n,) scores."""
        s = np.asarray(sequences, dtype=np.int64)
        total = self.weights[np.arange(SEQUENCE_LENGTH), s].sum(axis=1)
        for k, (i, j) in enumerate(self.pairs):
            total += self.epistasis[k, s[:, i], s[:, j]]
        return total

    def __call__(self, designs: FloatArray) -> npt.NDArray[np.float64]:
        """(n, 8, 4) one-hot / logits -> (n,) scores of their argmax sequences."""
        return self.score_sequences(decode_logits(designs))

    def relaxed(self, probs: Tensor) -> Tensor:
        """Multilinear extension on (n, 8, 4) per-position probabilities; equals the oracle on
        one-hot designs and is differentiable (feed it ``softmax(logits, -1)``)."""
        w = torch.as_tensor(self.weights, dtype=probs.dtype, device=probs.device)
        e = torch.as_tensor(self.epistasis, dtype=probs.dtype, device=probs.device)
        total = (probs * w).sum(dim=(1, 2))
        for k, (i, j) in enumerate(self.pairs.tolist()):
            total = total + torch.einsum("na,ab,nb->n", probs[:, i], e[k], probs[:, j])
        return total


def sequence_oracle(seed: int, num_pairs: int = 12, epistasis_scale: float = 0.5) -> SequenceOracle:
    """Seeded oracle: ``w ~ N(0, 1)``, ``num_pairs`` distinct position pairs of the 28, each with a
    4x4 table ``e ~ N(0, epistasis_scale²)``."""
    all_pairs = np.array(list(itertools.combinations(range(SEQUENCE_LENGTH), 2)), dtype=np.int64)
    if not 0 <= num_pairs <= len(all_pairs):
        raise ValueError(f"num_pairs must lie in [0, {len(all_pairs)}], got {num_pairs}")
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((SEQUENCE_LENGTH, NUM_BASES))
    chosen = np.sort(rng.choice(len(all_pairs), size=num_pairs, replace=False))
    epistasis = epistasis_scale * rng.standard_normal((num_pairs, NUM_BASES, NUM_BASES))
    return SequenceOracle(weights, all_pairs[chosen], epistasis)


def tfbind8_like(
    seed: int, num_pairs: int = 12, epistasis_scale: float = 0.5, max_percentile: float = 50.0
) -> MboTask:
    """TFBind8-like task: all 4^8 one-hot sequences; clients see those below the median.

    As Design-Bench's TFBind8 (exhaustive pool, ``max_percentile=50``), with a synthetic oracle.
    Designs are (8, 4) one-hot; optimise them in logit space (``to_logits``), score by argmax.
    ``y_min`` / ``y_max`` are over all 4^8 sequences. The torch oracle is the multilinear
    relaxation on probabilities (``SequenceOracle.relaxed``).
    """
    oracle = sequence_oracle(seed, num_pairs, epistasis_scale)
    return _task("tfbind8_like", oracle, oracle.relaxed, one_hot(all_sequences()), max_percentile)


# ---- continuous: random-MLP oracle ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MlpOracle:
    """``f(x) = v·tanh(W2 tanh(W1 x + b1) + b2) − penalty · ‖x − c‖² / D``.

    A random tanh MLP gives a rugged landscape; the quadratic penalty around a seeded centre ``c``
    bounds the maximum and puts the high scores in one region near ``c``.
    """

    layers: tuple[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]], ...]  # (W, b), tanh
    head: npt.NDArray[np.float64]  # (hidden,)
    centre: npt.NDArray[np.float64]  # (D,)
    penalty: float

    def __call__(self, designs: FloatArray) -> npt.NDArray[np.float64]:
        x = np.asarray(designs, dtype=np.float64)
        h = x
        for w, b in self.layers:
            h = np.tanh(h @ w.T + b)
        quad = ((x - self.centre) ** 2).mean(axis=1)
        return np.asarray(h @ self.head - self.penalty * quad, dtype=np.float64)

    def torch(self, designs: Tensor) -> Tensor:
        """The same function in torch (dtype / device of ``designs``), differentiable in x."""

        def t(a: npt.NDArray[np.float64]) -> Tensor:
            return torch.as_tensor(a, dtype=designs.dtype, device=designs.device)

        h = designs
        for w, b in self.layers:
            h = torch.tanh(h @ t(w).T + t(b))
        quad = ((designs - t(self.centre)) ** 2).mean(dim=1)
        return h @ t(self.head) - self.penalty * quad


def mlp_oracle(
    seed: int, dim: int, hidden: int = 64, depth: int = 2, penalty: float = 1.0
) -> MlpOracle:
    """Seeded oracle: weights ``N(0, 1/fan_in)``, biases ``N(0, 0.1²)``, centre ``N(0, 0.5² I)``."""
    if dim < 1 or hidden < 1 or depth < 1:
        raise ValueError(f"dim, hidden and depth must be >= 1, got {dim}, {hidden}, {depth}")
    rng = np.random.default_rng(seed)
    layers = []
    fan_in = dim
    for _ in range(depth):
        w = rng.standard_normal((hidden, fan_in)) / np.sqrt(fan_in)
        layers.append((w, 0.1 * rng.standard_normal(hidden)))
        fan_in = hidden
    head = rng.standard_normal(hidden) / np.sqrt(hidden)
    centre = 0.5 * rng.standard_normal(dim)
    return MlpOracle(tuple(layers), head, centre, penalty)


def continuous(
    seed: int, dim: int = 32, pool: int = 20000, max_percentile: float = 40.0
) -> MboTask:
    """Continuous task: a random-MLP oracle on R^dim, a pool of ``x ~ N(0, I)``, offline data the
    pool's designs below ``max_percentile`` (as Design-Bench truncates its continuous tasks).

    ``y_min`` / ``y_max`` are over the sampled pool, so designs outside it may score beyond [0, 1].
    """
    if pool < 2:
        raise ValueError(f"pool must hold at least 2 designs, got {pool}")
    oracle = mlp_oracle(seed, dim)
    # A stream separate from the oracle's, so changing ``pool`` leaves the oracle alone.
    rng = np.random.default_rng([seed, 1])
    pool_x = rng.standard_normal((pool, dim)).astype(np.float32)
    return _task("continuous", oracle, oracle.torch, pool_x, max_percentile)


# ---- metrics -------------------------------------------------------------------


def percentile_scores(task: MboTask, designs: FloatArray) -> dict[str, float]:
    """Normalised oracle scores of a batch: ``p100`` (best) and ``p50`` (median), Design-Bench's
    reporting; compare with ``task.normalised(task.best_offline)``."""
    scores = task.normalised(task.oracle(designs))
    return {"p100": float(np.max(scores)), "p50": float(np.percentile(scores, 50))}


# ---- as datasets of a scenario (``data: {name: tfbind8_like}``), for the mbo workload ----------


class MboTaskParams(DatasetParams):
    """An offline MBO task: its clients split the offline rows by score (``iid``, ``sorted``)."""

    kind: ClassVar[str] = "mbo_task"


class Tfbind8LikeParams(MboTaskParams):
    # The task is fixed by its own seed, as a benchmark task is: the scenario's seed varies the
    # clients' splits and proxies, not the landscape.
    task_seed: NonNegativeInt = 0
    num_pairs: int = Field(12, ge=0, le=28)
    epistasis_scale: float = Field(0.5, ge=0)
    max_percentile: float = Field(50.0, gt=0, lt=100)


@DATASETS.register("tfbind8_like", Tfbind8LikeParams)
def tfbind8_like_data(p: Tfbind8LikeParams) -> MboTask:
    """Offline MBO task (workload mbo): all 4^8 DNA 8-mers, seeded TFBind8-like oracle."""
    return tfbind8_like(p.task_seed, p.num_pairs, p.epistasis_scale, p.max_percentile)


class MboContinuousParams(MboTaskParams):
    task_seed: NonNegativeInt = 0
    dim: PositiveInt = 32
    pool: int = Field(20000, ge=2)
    max_percentile: float = Field(40.0, gt=0, lt=100)


@DATASETS.register("mbo_continuous", MboContinuousParams)
def mbo_continuous_data(p: MboContinuousParams) -> MboTask:
    """Offline MBO task (workload mbo): a seeded random-MLP landscape on R^dim."""
    return continuous(p.task_seed, p.dim, p.pool, p.max_percentile)


@dataclass(frozen=True, eq=False)
class MboClientData:
    """One client's offline rows of an MBO task: designs (n, *dim) and their true scores."""

    task: MboTask
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float64]
    x_val: npt.NDArray[np.float32]
    y_val: npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class MboFederation(RowSplit):
    """An MBO task and which offline rows each client holds (indices into ``task.offline_*``)."""

    kind: ClassVar[str] = "mbo_task"
    task: MboTask
    train: list[torch.Tensor]
    val: list[torch.Tensor]

    @property
    def dataset(self) -> MboTask:
        return self.task

    def class_counts(self) -> IntArray:
        """One class: every row is a design with a score."""
        return self.one_class_counts()

    def train_data(self, client: int) -> MboClientData:
        train, val = self.train[client].numpy(), self.val[client].numpy()
        x, y = self.task.offline_x, self.task.offline_y
        return MboClientData(self.task, x[train], y[train], x[val], y[val])

    def val_data(self, client: int) -> MboClientData:
        return self.train_data(client)

    def test_data(self) -> MboTask:
        """The task itself: its oracle scores the designs."""
        return self.task

    def to(self, device: torch.device) -> MboFederation:
        return self  # offline rows stay on the host: the proxies are small


@federates("mbo_task")
def federate_mbo(
    task: MboTask, partitioner: Component, num_clients: int, seed: int, val_fraction: float
) -> MboFederation:
    """The offline rows split among the clients by the (sample) partitioner, on their scores."""
    train, val = split_among_clients(task.offline_y, partitioner, num_clients, seed, val_fraction)
    return MboFederation(task, train, val)
