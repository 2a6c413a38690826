"""Workload ``hsi``: hyperspectral segmentation, CNN unary + CNN pairwise CRF + deconvolution.

Alam et al. (IEEE TGRS 2019) as ``notes/workloads-precise.md`` §4.2 reconstructs it (Lin et
al.'s piecewise formulation), clients as tiles of one scene (§4.4):

- **Features**: the bands are cut into ``band_groups`` contiguous groups; each group's s×s patch
  cube goes through its own 3-D convolution (Conv3d(1→k, 3³) → ReLU → spectral max-pool 2); the
  groups' outputs are concatenated and mapped to φ (``features``-d). ``band_groups`` = 1 is the
  ungrouped ablation (the same feature size).
- **Unary** f_U(φ_p) (C logits); **pairwise** f_V([φ_p; φ_q]) (C² logits), one net for every
  direction of the 8-neighbourhood.
- **Piecewise training** (no inference in the loop): CE of the unaries on the tile's labelled
  pixels, plus (``crf``) CE over C² of the pairwise logits on a random batch of labelled ordered
  pairs of the same size. Then (``refine``) the CRF's map Q is computed without gradient on the
  whole window and the refinement net (conv+pool ×2 → transposed conv ×2, added to log Q) trains
  for ``refine_steps`` full-window steps on the labelled pixels.
- **Inference**: mean-field (``clients/hsi/crf.py``) with ``iterations`` parallel updates on
  the window's 8-neighbour graph (a tile's halo pixels take part; only the core is scored).
- **Metrics**: the exchange ``confusion`` has every tile report its C×C confusion matrices (of
  each stage) on its own test pixels; the server sums them and scores the sum (``tiles_oa``,
  ``tiles_aa``, ``tiles_kappa``, ``tiles_acc_class{c}``). The central evaluation scores the whole
  scene's test pixels (``oa``, ``aa``, ``kappa``, per class) and each stage (``oa_cnn``,
  ``oa_crf``, ``oa_refine``, …). No metric is ever an average of clients' scores.
- A tile with no labelled pixel trains on nothing and abstains (``TRAINED`` = 0, ``no_labels`` =
  1 in its metrics): the round goes on with the other tiles' updates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor, nn

from clients.hsi.crf import grid_edges, labelled_pairs, mean_field
from clients.hsi.scores import confusion, scores
from clients.workload import (
    TRAINED,
    Aggregate,
    Arrays,
    Exchange,
    Metrics,
    State,
    TrainConfig,
    init_parameters,
)
from fedsim.errors import UserError
from fedsim.hsi_data import Scene, SceneWindow, Tiling
from fedsim.registry import DATASETS, SCENE_PARTITIONERS, WORKLOADS, Params
from fedsim.scenario import Scenario

HSI = "hsi"
CONFUSION = "confusion"  # the exchange's name
STAGES = ("cnn", "crf", "refine")
BATCH = 1024  # pixels per feature-extraction batch


class HsiParams(Params):
    patch: int = Field(default=5, ge=1, le=31)  # s: patches are s×s, s odd
    band_groups: PositiveInt = 4  # G; 1: no grouping
    band_remainder: Literal["error", "spread"] = "error"  # spread: the first groups one band more
    channels: PositiveInt = 8  # 3-D conv channels per group
    features: PositiveInt = 64  # φ's size
    pairwise_hidden: PositiveInt = 64
    crf: bool = True  # train the pairwise net and run mean-field at inference
    refine: bool = True  # the deconvolution refinement net on the CRF's map
    iterations: int = Field(default=5, ge=0)  # mean-field T
    lr: PositiveFloat = 1e-3  # Adam
    epochs: PositiveInt = 2  # local passes over the tile's labelled pixels
    batch_size: PositiveInt = 64
    refine_steps: int = Field(default=20, ge=0)  # full-window steps of the refinement net
    # What mean-field uses of the pairwise net: ``pmi`` (default), log P(a,b) − log P(a) −
    # log P(b) of its C² softmax; ``logits``: the raw logits, Lin et al.'s potential, which
    # re-counts each neighbour's class evidence. Either is scaled by ``pairwise_weight``.
    pairwise_potential: Literal["pmi", "logits"] = "pmi"
    pairwise_weight: float = Field(default=0.05, ge=0.0)


def group_bounds(bands: int, groups: int, remainder: str) -> list[tuple[int, int]]:
    """Contiguous (start, stop) of each band group."""
    if groups > bands:
        raise UserError(f"workload.band_groups={groups} exceeds the data's {bands} bands")
    if bands % groups and remainder == "error":
        raise UserError(
            f"workload.band_groups={groups} does not divide the data's {bands} bands; choose a "
            "divisor or set workload.band_remainder=spread (the first groups one band more)"
        )
    sizes = [bands // groups + (g < bands % groups) for g in range(groups)]
    starts = [sum(sizes[:g]) for g in range(groups)]
    return [(s, s + n) for s, n in zip(starts, sizes, strict=True)]


class Refiner(nn.Module):
    """Encoder–decoder on the map (C, h, w): conv+pool ×2 → transposed conv ×2, added to log Q
    with a learnt ``gain`` that starts at 0 (the refinement starts as the CRF's map: a randomly
    initialised decoder would otherwise add noise that 20 steps on a few labelled pixels do not
    undo)."""

    def __init__(self, classes: int, width: int = 16) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(classes, width, 3, padding=1)
        self.enc2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.dec1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec2 = nn.ConvTranspose2d(width, classes, 2, stride=2)
        self.gain = nn.Parameter(torch.zeros(()))

    @torch.no_grad()
    def init_parameters(self, generator: torch.Generator) -> None:
        self.gain.zero_()

    def forward(self, q: Tensor) -> Tensor:
        h, w = q.shape[-2:]
        x = F.max_pool2d(F.relu(self.enc1(q)), 2, ceil_mode=True)
        x = F.max_pool2d(F.relu(self.enc2(x)), 2, ceil_mode=True)
        x = self.dec2(F.relu(self.dec1(x)))[..., :h, :w]
        return cast(Tensor, q.clamp_min(1e-8).log() + self.gain * x)


class HsiNet(nn.Module):
    def __init__(self, bands: int, classes: int, p: HsiParams) -> None:
        super().__init__()
        self.classes, self.patch = classes, p.patch
        self.bounds = group_bounds(bands, p.band_groups, p.band_remainder)
        self.branches = nn.ModuleList(nn.Conv3d(1, p.channels, 3, padding=1) for _ in self.bounds)
        flat = sum(p.channels * -(-(b - a) // 2) * p.patch**2 for a, b in self.bounds)
        self.embed = nn.Linear(flat, p.features)
        self.unary = nn.Linear(p.features, classes)
        self.pairwise = (
            nn.Sequential(
                nn.Linear(2 * p.features, p.pairwise_hidden),
                nn.ReLU(),
                nn.Linear(p.pairwise_hidden, classes * classes),
            )
            if p.crf
            else None
        )
        self.refiner = Refiner(classes) if p.refine else None
        self.pmi, self.pairwise_weight = p.pairwise_potential == "pmi", p.pairwise_weight

    def features(self, patches: Tensor) -> Tensor:
        """φ (n, features) of patch cubes (n, B, s, s)."""
        parts = []
        for conv, (a, b) in zip(self.branches, self.bounds, strict=True):
            x = F.relu(conv(patches[:, None, a:b]))
            parts.append(F.max_pool3d(x, (2, 1, 1), ceil_mode=True).flatten(1))
        return F.relu(self.embed(torch.cat(parts, dim=1)))

    def pair_logits(self, phi_p: Tensor, phi_q: Tensor) -> Tensor:
        assert self.pairwise is not None
        z = self.pairwise(torch.cat([phi_p, phi_q], dim=1))
        return z.view(-1, self.classes, self.classes)


def patches(cube: Tensor, size: int) -> Tensor:
    """The s×s patch cube (h·w, B, s, s) around every pixel of ``cube`` (B, h, w), row-major;
    zeros beyond the cube's edge."""
    b, h, w = cube.shape
    cols = F.unfold(cube[None], size, padding=size // 2)  # (1, B·s·s, h·w)
    return cols[0].T.reshape(h * w, b, size, size)


def potential(z: Tensor, pmi: bool, weight: float) -> Tensor:
    """The pairwise potentials (E, C, C) mean-field uses, from the pairwise logits ``z``.

    Piecewise training makes softmax_{C²}(z) a model of P(y_p, y_q | φ_p, φ_q), which holds each
    end's own class evidence; summing raw logits over 16 factors counts that evidence again and
    again (it lowered OA below the unaries' in our runs). The pointwise mutual information keeps
    only what the pair says beyond its ends. Scaled by ``weight`` (each edge is two factors)."""
    if not pmi:
        return weight * z
    e, c, _ = z.shape
    log_joint = torch.log_softmax(z.reshape(e, c * c), dim=1).reshape(e, c, c)
    rows = torch.logsumexp(log_joint, dim=2, keepdim=True)
    cols = torch.logsumexp(log_joint, dim=1, keepdim=True)
    return weight * (log_joint - rows - cols)


@torch.no_grad()
def predict(net: HsiNet, window: SceneWindow, iterations: int) -> dict[str, Tensor]:
    """Each stage's class scores (h·w, C) on the window: ``cnn`` (unary logits), ``crf``
    (log Q after mean-field), ``refine``."""
    was = net.training
    net.eval()
    h, w = window.shape
    cubes = patches(window.cube, net.patch)
    phi = torch.cat([net.features(b) for b in cubes.split(BATCH)])
    unary = net.unary(phi)
    out = {"cnn": unary}
    q = torch.softmax(unary, dim=1)
    if net.pairwise is not None:
        edges = grid_edges(h, w, unary.device)
        z = torch.cat([net.pair_logits(phi[e[:, 0]], phi[e[:, 1]]) for e in edges.split(8 * BATCH)])
        q = mean_field(unary, edges, potential(z, net.pmi, net.pairwise_weight), iterations)
        out["crf"] = q.clamp_min(1e-8).log()
    if net.refiner is not None:
        refined = net.refiner(q.T.reshape(1, -1, h, w))[0]
        out["refine"] = refined.reshape(refined.shape[0], -1).T
    net.train(was)
    return out


def stage_confusions(net: HsiNet, window: SceneWindow, iterations: int) -> dict[str, Tensor]:
    """Each stage's confusion matrix on the window's test pixels."""
    test = window.test.flatten()
    truth = window.labels.flatten()[test]
    return {
        stage: confusion(truth, s[test].argmax(dim=1), window.num_classes)
        for stage, s in predict(net, window, iterations).items()
    }


def stage_scores(matrices: Mapping[str, Tensor], prefix: str = "") -> Metrics:
    """The last stage's scores unsuffixed, every stage's oa/aa/kappa suffixed ``_stage``."""
    last = [s for s in STAGES if s in matrices][-1]
    out = scores(matrices[last], prefix)
    for stage, m in matrices.items():
        out.update(
            {
                k: v
                for k, v in scores(m, prefix, f"_{stage}").items()
                if not k.startswith(f"{prefix}acc")
            }
        )
    return out


@dataclass(frozen=True)
class Confusion:
    """Every tile reports its confusion matrices (one per stage) on its own test pixels; the
    server sums them and scores the sum. The broadcast is the summed matrices (nobody needs
    them: they are small, and a checkpointed record of what was scored)."""

    iterations: int
    name: str = CONFUSION
    everyone: bool = True

    def report(
        self, model: nn.Module, data: SceneWindow, state: State, config: TrainConfig
    ) -> tuple[Arrays, Metrics]:
        matrices = stage_confusions(cast(HsiNet, model), data, self.iterations)
        return matrices, {"test_pixels": float(data.test.sum())}

    def reduce(
        self, reports: Mapping[int, Arrays], memory: Any, aggregate: Aggregate, round: int
    ) -> tuple[Arrays, Any, Metrics]:
        clients = sorted(reports)
        summed = {k: sum(reports[c][k] for c in clients) for k in reports[clients[0]]}
        summed_t = {k: cast(Tensor, v) for k, v in summed.items()}
        return summed_t, None, stage_scores(summed_t, "tiles_")


@dataclass(frozen=True)
class HsiWorkload:
    params: HsiParams
    reads: ClassVar[str] = "scene"
    headline: ClassVar[str] = "oa"
    local: tuple[str, ...] = ()

    @property
    def exchanges(self) -> tuple[Exchange, ...]:
        return (Confusion(self.params.iterations),)

    def check(self, scenario: Scenario) -> list[str]:
        """Band groups that fit the bands, and a patch no larger than every tile plus halo."""
        p, problems = self.params, []
        if p.patch % 2 == 0:
            problems.append(f"workload.patch={p.patch} needs to be odd (centred on its pixel)")
        data = DATASETS.params(scenario.data.dataset)
        bands, height, width = (getattr(data, k, None) for k in ("bands", "height", "width"))
        if bands is not None:
            try:
                group_bounds(bands, p.band_groups, p.band_remainder)
            except UserError as e:
                problems.append(str(e))
        if height is not None and width is not None and scenario.data.partition.name == "tiles":
            try:
                tiling: Tiling = SCENE_PARTITIONERS.build(scenario.data.partition)
                rects = tiling.rectangles(height, width, scenario.clients.num)
            except UserError as e:
                return [*problems, str(e)]
            problems += _patch_fits(p.patch, rects, tiling.halo, height, width)
        return problems

    def build_model(self, dataset: Scene, generator: torch.Generator) -> nn.Module:
        with torch.device("meta"):
            model = HsiNet(dataset.bands, dataset.num_classes, self.params)
        return init_parameters(model.to_empty(device="cpu"), generator)

    def fit(
        self, model: nn.Module, data: SceneWindow, state: State, config: TrainConfig
    ) -> Metrics:
        p, net = self.params, cast(HsiNet, model)
        h, w = data.shape
        if p.patch > min(h, w):
            raise UserError(_patch_message(p.patch, h, w))
        rows = torch.nonzero(data.train.flatten()).flatten()
        if len(rows) == 0:  # a tile without labels: nothing to learn from, abstain
            return {TRAINED: 0.0, "no_labels": 1.0}
        labels = data.labels.flatten()
        cubes = patches(data.cube, p.patch)
        pairs = labelled_pairs(data.train) if net.pairwise is not None else rows.new_zeros(0, 2)
        net.train()
        optimizer: torch.optim.Optimizer = torch.optim.Adam(net.parameters(), lr=p.lr)
        model, optimizer = config.training.setup(
            net, optimizer, len(rows), p.batch_size, config.generator
        )
        total = pair_total = 0.0
        steps = 0
        for batches in config.training.passes(p.epochs, None, config.device):
            for idx in batches:
                pixels = rows[idx]
                loss = F.cross_entropy(net.unary(net.features(cubes[pixels])), labels[pixels])
                if len(pairs):
                    pick = torch.randint(len(pairs), (len(idx),), generator=config.generator)
                    e = pairs[pick.to(pairs.device)]
                    phi = net.features(cubes[e.flatten()]).view(len(e), 2, -1)
                    z = net.pair_logits(phi[:, 0], phi[:, 1]).flatten(1)
                    target = labels[e[:, 0]] * net.classes + labels[e[:, 1]]
                    pair_loss = F.cross_entropy(z, target)
                    loss = loss + pair_loss
                    pair_total += float(pair_loss.detach())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, steps = total + float(loss.detach()), steps + 1
        metrics = {
            "train_loss": total / max(steps, 1),
            "labelled_pairs": float(len(pairs) // 2),
            TRAINED: float(len(rows)),
        }
        if len(pairs):
            metrics["pairwise_loss"] = pair_total / max(steps, 1)
        if net.refiner is not None and p.refine_steps:
            metrics["refine_loss"] = self._refine(net, data, rows, labels)
        return metrics

    def _refine(self, net: HsiNet, data: SceneWindow, rows: Tensor, labels: Tensor) -> float:
        """Train the refinement net on the CRF's map of the window (its input has no gradient)."""
        assert net.refiner is not None
        h, w = data.shape
        scores_ = predict(net, data, self.params.iterations)
        q = scores_["crf"].exp() if "crf" in scores_ else torch.softmax(scores_["cnn"], 1)
        q_map = q.T.reshape(1, -1, h, w)
        optimizer = torch.optim.Adam(net.refiner.parameters(), lr=self.params.lr)
        loss = torch.zeros(())
        for _ in range(self.params.refine_steps):
            out = net.refiner(q_map)[0].reshape(net.classes, -1).T
            loss = F.cross_entropy(out[rows], labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return float(loss.detach())

    def evaluate(
        self, model: nn.Module, data: SceneWindow, state: State, config: TrainConfig
    ) -> Metrics:
        """Nothing: a tile's scores enter the server's summed matrix (exchange ``confusion``);
        an average of tiles' scores is not a score of the scene."""
        return {}

    def evaluate_central(
        self, model: nn.Module, test: SceneWindow, config: TrainConfig, memory: Mapping[str, Any]
    ) -> Metrics:
        """The whole scene's test pixels, every stage."""
        return stage_scores(stage_confusions(cast(HsiNet, model), test, self.params.iterations))


def _patch_message(patch: int, h: int, w: int) -> str:
    return (
        f"workload.patch={patch} exceeds a tile plus its halo ({h} x {w} pixels); lower "
        "workload.patch, raise data.partition.halo or use fewer clients"
    )


def _patch_fits(
    patch: int, rects: list[tuple[int, int, int, int]], halo: int, h: int, w: int
) -> list[str]:
    for r0, r1, c0, c1 in rects:
        wh = min(r1 + halo, h) - max(r0 - halo, 0)
        ww = min(c1 + halo, w) - max(c0 - halo, 0)
        if patch > min(wh, ww):
            return [_patch_message(patch, wh, ww)]
    return []


@WORKLOADS.register(HSI, HsiParams)
def hsi(p: HsiParams) -> HsiWorkload:
    """Hyperspectral segmentation: band-group 3-D CNN, deep CRF (mean-field), deconvolution."""
    return HsiWorkload(p)
