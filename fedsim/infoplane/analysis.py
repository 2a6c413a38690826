"""The ``information_plane`` analysis: I(X;T) and I(T;Y) of a model's layers over the rounds.

Attached to any workload that trains a model on sample tensors (scenario section ``analysis``).
On each scheduled round it adds two exchanges after the workload's own (``fedsim.analyses``):

1. ``<id>_levels`` — every client sends, per layer, what the global bin edges need: its
   distinct activity levels (``federated: exact``; adaptive bins from the union's levels), a
   quantile sketch of them (``sketch``; approximate edges) or its maximum (fixed bins); the
   server, which knows the layers from its own model, broadcasts the edges, to this round's
   counts only (``round_only``).
2. ``<id>_counts`` — every client sends its (code, label) histogram under those edges; the
   server sums them and computes I(X;T), I(T;Y) of the union (scope ``federated``). With
   ``client_planes``, each client also reports its own data's plane under the global edges and
   under adaptive edges of its own (``<exchange>_mi_xt_global.<layer>``,
   ``<exchange>_mi_xt_own.<layer>``, scope client).

Besides, the server estimates on a probe set it holds (``central``, scope ``server``): the test
data, or every input of the dataset (``central_probe: all``, e.g. SZT's 4,096 patterns). KDE
bounds run there only. Metrics are in bits, layers numbered from 1, the output last.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator
from torch import Tensor, nn

from fedsim.infoplane import estimators as est
from fedsim.infoplane.probe import Layer, activity, layers, select
from fedsim.registry import ANALYSES, Params

BINNED = ("adaptive_binning", "fixed_binning")
# A round's client activity kept between the two exchanges, for all the clients a process
# serves; past it, the counts phase runs the probe again.
KEEP_ACTIVITY_BYTES = 64 * 2**20
# Report entries besides the layers' own (named by their numbers): every layer's maximum
# (fixed bins), how many levels each layer's sketch stands for, every layer's histogram counts.
MAXIMA, SIZES, COUNTS = "maxima", "sizes", "counts"


class InformationPlaneParams(Params):
    estimator: Literal["adaptive_binning", "fixed_binning", "kde_upper", "kde_lower"] = (
        "adaptive_binning"
    )
    bins: int = 30
    layers: Literal["all"] | list[int | str] = "all"
    schedule: Literal["every", "log"] = "every"
    every: PositiveInt = 1  # schedule every: rounds divisible by it, and the last
    points: PositiveInt = 50  # schedule log: log-spaced rounds from 1 to the last, deduplicated
    # Global edges from the clients: exact (union of levels), sketch (quantile sketches), none.
    # Default: exact for binning, none for KDE (which federated estimation cannot do).
    federated: Literal["exact", "sketch", "none"] | None = None
    sketch_size: int = Field(64, ge=2)  # points per layer and client under federated: sketch
    central: bool = True  # the server's own estimate on its probe set
    # Each client also reports its own data's plane under the global and under its own edges
    # (what global bins change), at about twice the clients' cost.
    client_planes: bool = False
    central_probe: Literal["test", "all"] = "test"
    kde_variance: PositiveFloat | None = None  # None: adaptive, (0.1·max|T|)² per layer
    tag: str = Field("", pattern=r"^[A-Za-z0-9_]*$")  # tells two analyses' metrics apart

    @field_validator("bins")
    @classmethod
    def _two_bins(cls, bins: int) -> int:
        if bins < 2:
            raise ValueError(f"bins must be at least 2 (got {bins}): one bin measures nothing")
        return bins

    @model_validator(mode="after")
    def _federated_fits(self) -> InformationPlaneParams:
        if self.federated is None:
            fed = "exact" if self.estimator in BINNED else "none"
            object.__setattr__(self, "federated", fed)
        if self.estimator not in BINNED and self.federated != "none":
            raise ValueError(
                f"federated: {self.federated} cannot estimate {self.estimator}: KDE bounds need "
                "the distance between every pair of samples across clients; set federated: "
                "none (the server's probe set only) or use a binning estimator"
            )
        if self.federated == "none" and not self.central:
            raise ValueError("federated: none and central: false estimate nothing; enable one")
        return self


def rounds_due(params: InformationPlaneParams, rounds: int) -> frozenset[int]:
    """The rounds the analysis measures."""
    if params.schedule == "log":
        spaced = np.logspace(0, math.log10(rounds), params.points)
        return frozenset(int(r) for r in np.unique(np.floor(spaced)) if 1 <= r <= rounds)
    return frozenset(r for r in range(1, rounds + 1) if r % params.every == 0 or r == rounds)


class InformationPlane:
    """The analysis on a run of ``rounds`` rounds: its exchanges and its central estimate."""

    def __init__(self, params: InformationPlaneParams) -> None:
        self.params = params
        self.rounds: frozenset[int] = frozenset()
        self._activity: dict[tuple[int, int], dict[int, np.ndarray]] = {}
        self._found: weakref.WeakKeyDictionary[nn.Module, list[Layer]] = weakref.WeakKeyDictionary()
        # The layers probed, as ``layers`` last chose them: every model of a run has the same.
        # The server's reduces read them from its own model (checked when it was built), so
        # that reports need not describe the layers.
        self.probed: list[Layer] = []
        suffix = f"_{params.tag}" if params.tag else ""
        self.prefix = ("mi_xt" + suffix, "mi_ty" + suffix)
        self.exchanges: tuple[Any, ...] = ()
        if params.federated != "none":
            levels = Levels(self, f"infoplane{suffix}_levels")
            self.exchanges = (levels, Counts(self, f"infoplane{suffix}_counts", levels.name))

    def attach(self, rounds: int) -> None:
        self.rounds = rounds_due(self.params, rounds)

    def due(self, round: int) -> bool:
        return round in self.rounds

    def central_rounds(self) -> frozenset[int]:
        """The rounds of the server's own estimate (made when the server evaluates)."""
        return self.rounds if self.params.central else frozenset()

    def layers(self, model: nn.Module, x: Tensor) -> list[Layer]:
        """The layers asked for (ValueError for a model with none, or a name it lacks)."""
        found = self._found.get(model)
        if found is None:  # a forward pass finds them; a model keeps its modules for the run
            found = self._found[model] = layers(model, x)
        if len(found) < 2:
            raise ValueError(
                "information_plane: the model has no activation module to probe (only its "
                "output); build it from nn.ReLU / nn.Tanh / ... modules, not functional calls"
            )
        self.probed = select(found, self.params.layers)
        return self.probed

    def client_activity(
        self, model: nn.Module, x: Tensor, chosen: list[Layer], client: int, round: int
    ) -> dict[int, np.ndarray]:
        """A client's activity this round: the edges phase computes it, the counts phase of
        the same round (same model, same data) reuses it when this process still holds it."""
        key = (client, round)
        if key in self._activity:
            return self._activity.pop(key)
        acts = activity(model, x, chosen)
        if any(k[1] != round for k in self._activity):  # a new round: last round's are stale
            self._activity.clear()
        held = sum(a.nbytes for kept in self._activity.values() for a in kept.values())
        if held + sum(a.nbytes for a in acts.values()) <= KEEP_ACTIVITY_BYTES:
            self._activity[key] = acts
        return acts

    def metrics(self, number: int, mi: tuple[float, float]) -> dict[str, float]:
        return {f"{self.prefix[0]}.{number}": mi[0], f"{self.prefix[1]}.{number}": mi[1]}

    def central_metrics(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
        """The estimate on a probe set the server holds, all of it in one place."""
        chosen = self.layers(model, x)
        return self.estimate(chosen, activity(model, x, chosen), y.cpu().numpy())

    def estimate(
        self, chosen: list[Layer], acts: Mapping[int, np.ndarray], labels: np.ndarray
    ) -> dict[str, float]:
        """The plane of the layers' activity ``acts`` (by layer number) with ``labels``."""
        out: dict[str, float] = {}
        p = self.params
        for layer in chosen:
            t = acts[layer.number]
            if p.estimator in BINNED:
                unique = est.levels(t, layer.low) if p.estimator == "adaptive_binning" else None
                edges = self.edges(layer, high=float(t.max()), unique=unique)
                rows, counts = est.code_counts(est.codes(t, edges), labels)
                out |= self.metrics(layer.number, est.binned_mi(rows, counts))
            else:
                variance = p.kde_variance or max((0.1 * float(np.abs(t).max())) ** 2, 1e-12)
                upper = p.estimator == "kde_upper"
                out |= self.metrics(layer.number, est.kde_mi(t, labels, variance, upper))
        return out

    def edges(
        self,
        layer: Layer,
        *,
        high: float = -math.inf,
        unique: np.ndarray | None = None,
        sketches: tuple[list[np.ndarray], list[int]] | None = None,
    ) -> np.ndarray:
        """A layer's edges: fixed bins up to ``high`` (the largest activity seen), or adaptive
        bins from the distinct levels seen (``unique``, sorted) or from sketches of them
        (with how many levels each sketch stands for)."""
        p = self.params
        if p.estimator == "fixed_binning":
            return est.fixed_edges(
                -1.0 if layer.low < 0 else 0.0, 1.0 if layer.bounded else high, p.bins
            )
        if sketches is not None:
            return est.sketched_edges(*sketches, layer.low, p.bins)
        assert unique is not None, "adaptive bins need the distinct levels or sketches of them"
        return est.adaptive_edges(unique, layer.low, p.bins)


def _f32(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


class Levels:
    """Exchange 1: what each client's activity tells the global edges; the server fixes them."""

    everyone = True
    scope = None  # its reduce's metrics: the server's
    round_only = True  # the edges serve this round's counts, not the run's training
    keeps_model = True  # it only reads the model

    def __init__(self, plane: InformationPlane, name: str) -> None:
        self.plane, self.name = plane, name

    def due(self, round: int) -> bool:
        return self.plane.due(round)

    def report(
        self, model: nn.Module, data: Any, state: Any, config: Any
    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        x, _ = data
        chosen = self.plane.layers(model, x)
        acts = self.plane.client_activity(model, x, chosen, config.client, config.round)
        p = self.plane.params
        # Per layer, one array: each array costs its own framing, encoding and decoding.
        if p.estimator == "fixed_binning":  # the maxima, which the bins span
            maxima = [float(acts[layer.number].max()) for layer in chosen]
            return {MAXIMA: torch.tensor(maxima, dtype=torch.float64)}, {}
        out: dict[str, Tensor] = {}
        sizes = []
        for layer in chosen:
            u = est.levels(acts[layer.number], layer.low)
            if p.federated == "sketch":
                out[str(layer.number)] = _f32(est.sketch(u, p.sketch_size))
                sizes.append(len(u))
            else:
                out[str(layer.number)] = _f32(u)
        if sizes:  # how many levels each sketch stands for
            out[SIZES] = torch.tensor(sizes, dtype=torch.int64)
        return out, {}

    def reduce(
        self, reports: Mapping[int, dict[str, Tensor]], memory: Any, aggregate: Any, round: int
    ) -> tuple[dict[str, Tensor], Any, dict[str, float]]:
        memory = dict(memory or {})  # layer -> the running maximum (fixed bins, as the reference)
        fixed = self.plane.params.estimator == "fixed_binning"
        broadcast: dict[str, Tensor] = {}
        for i, layer in enumerate(self.plane.probed):
            key = str(layer.number)
            if fixed:
                high = max(float(r[MAXIMA][i]) for r in reports.values())
                high = max(high, float(memory.get(key, torch.tensor(-math.inf))))
                memory[key] = torch.tensor(high)
                edges = self.plane.edges(layer, high=high)
            else:
                levels = [r[key].numpy() for r in reports.values() if key in r]
                sizes = [int(r[SIZES][i]) for r in reports.values() if SIZES in r]
                if sizes:
                    edges = self.plane.edges(layer, sketches=(levels, sizes))
                else:  # exact: the union's distinct levels
                    edges = self.plane.edges(layer, unique=est.distinct(np.concatenate(levels)))
            broadcast[key] = _f32(edges)
        return broadcast, memory, {}


class Counts:
    """Exchange 2: each client's (code, label) histogram under the global edges; the server
    sums them and estimates the union's plane."""

    everyone = True
    scope = "federated"
    round_only = True  # its broadcast, the estimate, is for no client
    keeps_model = True

    def __init__(self, plane: InformationPlane, name: str, levels: str) -> None:
        self.plane, self.name, self.levels = plane, name, levels

    def due(self, round: int) -> bool:
        return self.plane.due(round)

    def report(
        self, model: nn.Module, data: Any, state: Any, config: Any
    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        x, y = data
        edges = config.received[self.levels]
        chosen = self.plane.layers(model, x)
        acts = self.plane.client_activity(model, x, chosen, config.client, config.round)
        labels = y.cpu().numpy()
        out: dict[str, Tensor] = {}
        all_counts: list[np.ndarray] = []  # by layer, as one array (its rows say how to split)
        own: dict[str, float] = {}
        for layer in chosen:
            t, key = acts[layer.number], str(layer.number)
            rows, counts = est.code_counts(est.codes(t, edges[key].cpu().numpy()), labels)
            out[key] = torch.from_numpy(rows)
            all_counts.append(counts)
            if (
                self.plane.params.client_planes
                and self.plane.params.estimator == "adaptive_binning"
            ):
                # This client's own plane under the global edges and under edges of its own:
                # on the same data, their difference is what the global bins change.
                mine = est.adaptive_edges(
                    est.levels(t, layer.low), layer.low, self.plane.params.bins
                )
                own_rows, own_counts = est.code_counts(est.codes(t, mine), labels)
                xt_x, ty_x = self.plane.prefix
                own[f"{xt_x}_global.{key}"], own[f"{ty_x}_global.{key}"] = est.binned_mi(
                    rows, counts
                )
                own[f"{xt_x}_own.{key}"], own[f"{ty_x}_own.{key}"] = est.binned_mi(
                    own_rows, own_counts
                )
        out[COUNTS] = torch.from_numpy(np.concatenate(all_counts))
        return out, own

    def reduce(
        self, reports: Mapping[int, dict[str, Tensor]], memory: Any, aggregate: Any, round: int
    ) -> tuple[dict[str, Tensor], Any, dict[str, float]]:
        keys = [str(layer.number) for layer in self.plane.probed]
        parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {key: [] for key in keys}
        for client, r in reports.items():
            counts, start = r[COUNTS].numpy(), 0
            for key in keys:  # each layer's counts follow the last's
                rows = r[key].numpy()
                parts[key].append((rows, counts[start : start + len(rows)]))
                start += len(rows)
            if start != len(counts):
                raise ValueError(f"client {client}'s counts do not match its histogram's rows")
        metrics: dict[str, float] = {}
        for key in keys:
            metrics |= self.plane.metrics(int(key), est.binned_mi(*est.merge_counts(parts[key])))
        values = torch.tensor([metrics[k] for k in sorted(metrics)], dtype=torch.float64)
        return {"mi": values}, None, metrics


@ANALYSES.register("information_plane", InformationPlaneParams)
def information_plane(params: InformationPlaneParams) -> InformationPlane:
    """I(X;T), I(T;Y) per layer (Chelombiev et al., 2019): adaptive/fixed binning, KDE bounds."""
    return InformationPlane(params)
