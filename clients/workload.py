"""The contract between a workload (model, local training, its exchanges) and the rest of fedsim.

One round, as the core runs it for every workload: the clients train (skipped when nothing is
shared) -> the server aggregates the shared entries -> each of the workload's exchanges in
declared order (clients report, the server reduces, every client receives the broadcast) ->
federated ``evaluate`` -> ``evaluate_central`` on the server. Before every call the core loads a
client's model with the shared entries it was sent and the local entries of its state; after
the call it keeps the local entries and replies with the shared ones only. A client's first call
draws its local entries from ``build_model(dataset, seeded(seed, client))``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fedsim.data import Labelled as Labelled  # a client's labelled data


class LocalTraining(Protocol):
    """Where a workload's local loop gets its minibatches and how its optimiser steps.

    A workload calls ``setup`` once with its model and optimiser and trains with what it returns,
    on the index batches of ``passes``. ``PlainTraining`` (the default) shuffles the data each
    pass; local DP-SGD (``clients/privacy.py``) draws Poisson batches and clips and noises
    per-sample gradients. A workload that does both is trained privately when a scenario asks.
    """

    private: bool  # the optimiser replaces the gradients (DP-SGD): add nothing to .grad

    def setup(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        n: int,
        batch_size: int,
        generator: torch.Generator,
    ) -> tuple[nn.Module, Optimizer]: ...

    def passes(
        self, epochs: int, steps: int | None, device: torch.device
    ) -> Iterator[list[Tensor]]: ...


class PlainTraining:
    """Minibatch SGD: each pass a fresh permutation of the ``n`` samples, cut into batches."""

    private = False

    def __init__(self) -> None:
        self.n, self.batch_size = 0, 1
        self.generator: torch.Generator | None = None

    def setup(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        n: int,
        batch_size: int,
        generator: torch.Generator,
    ) -> tuple[nn.Module, Optimizer]:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        return model, optimizer

    def passes(
        self, epochs: int, steps: int | None, device: torch.device
    ) -> Iterator[list[Tensor]]:
        """``epochs`` whole passes, or with ``steps`` just enough passes for that many batches."""
        if self.generator is None:
            raise RuntimeError("PlainTraining.passes called before setup")
        return shuffled_passes(self.n, self.batch_size, epochs, steps, self.generator, device)


def shuffled_passes(
    n: int,
    batch_size: int,
    epochs: int,
    steps: int | None,
    generator: torch.Generator,
    device: torch.device,
) -> Iterator[list[Tensor]]:
    """Index batches, one list per pass over a fresh permutation of ``range(n)``."""
    remaining = steps if steps is not None else epochs * math.ceil(n / batch_size)
    while remaining > 0:
        perm = torch.randperm(n, generator=generator).to(device)
        batches = list(perm.split(batch_size))[:remaining]
        remaining -= len(batches)
        yield batches


Arrays = dict[
    str, Tensor
]  # named tensors: what an exchange sends (an ArrayRecord at Flower's edge)
State = dict[
    str, Tensor
]  # one client's own tensors: kept across rounds and checkpoints, never sent
Metrics = dict[str, float]

SERVER = -1  # the ``client`` of a TrainConfig on the server (central evaluation)
# A metric ``fit`` may return: the samples it trained on, its update's weight in the aggregate
# (default: the client's training set size). 0 says the client has no update this round (e.g. a
# target domain whose clustering found nothing): the server leaves it out of the aggregate.
TRAINED = "trained_examples"


@dataclass(frozen=True)
class TrainConfig:
    """What one call of a workload needs besides the model, the data and the client's state."""

    round: int
    client: int  # the client's id (its partition), for workloads whose clients differ
    # Seeded by the caller from (seed, client, round); drives batch order. Must live on the CPU.
    generator: torch.Generator
    device: torch.device
    # How minibatches are drawn and the optimiser steps: plain SGD, or DP-SGD under local DP.
    training: LocalTraining = field(default_factory=PlainTraining)
    # Each exchange's latest broadcast, by exchange name (empty before its first round).
    received: Mapping[str, Arrays] = field(default_factory=dict)


@dataclass(frozen=True)
class Member:
    """One client's training call in a cohort (``fit_cohort``): what ``fit`` would be given,
    the model as the state dict loaded for this client (shared entries sent, its local ones)."""

    start: dict[str, Tensor]
    data: Any
    state: State
    config: TrainConfig


@dataclass(frozen=True)
class Fitted:
    """A cohort member's result: the model's state dict after its training, and the metrics
    its ``fit`` would have returned."""

    entries: dict[str, Tensor]
    metrics: Metrics


# The scenario's attack -> pre-aggregators -> aggregator -> server optimiser on rows (n, d) sent
# by ``clients``, from pipeline state ``state`` (None: a fresh one); ``objectives`` (n,) for rules
# such as ``min``. Returns (step, new state); raises ValueError when the rule cannot hold.
Aggregate = Callable[[Tensor, Sequence[int], Any, "Tensor | None"], tuple[Tensor, Any]]


@runtime_checkable
class Exchange(Protocol):
    """An extra round trip after aggregation: clients report, the server reduces, all receive.

    The core sends it every round, after the model's aggregation, as a Message of its own; the
    broadcast reaches every client's next calls (``config.received[name]``) and the central
    evaluation. Failed reports, and reports holding NaN or Inf, are dropped and recorded.
    Optional attributes (``due``, ``scope``, ``round_only``) change when it runs, where its
    metrics go and how far its broadcast travels: see ``fedsim.exchanges``. ``keeps_model``
    (true) promises that ``report`` leaves the model's entries as it found them (it only reads
    them): a client's next call sent the same model then need not copy it in again.
    """

    @property
    def name(self) -> str: ...

    @property
    def everyone(self) -> bool:
        """Every client reports, or only the clients that trained this round."""
        ...

    def report(
        self, model: nn.Module, data: Any, state: State, config: TrainConfig
    ) -> tuple[Arrays, Metrics]:
        """Client side, with the new global model and this client's local entries loaded."""
        ...

    def reduce(
        self, reports: Mapping[int, Arrays], memory: Any, aggregate: Aggregate, round: int
    ) -> tuple[Arrays, Any, Metrics]:
        """Server side: (broadcast, new memory, server metrics). ``memory`` (None at first) is
        checkpointed; it must be tensors and plain containers."""
        ...


@runtime_checkable
class Workload(Protocol):
    """Builds a model, trains it locally and evaluates it; knows nothing of Flower.

    ``reads`` names the kind of data it trains on (a dataset's ``kind``: ``samples``, ``graph``,
    ``mbo_task``, …). State-dict entries whose names match a pattern of ``local`` never leave a
    client (``("*.bn*",)`` is FedBN, ``("*",)`` shares nothing); integer buffers never do either.
    Optionally, ``check(scenario) -> list[str]`` names what the workload cannot run with in a
    resolved scenario (one line per problem), so that ``fedsim validate`` refuses it too.

    Optionally, ``fit_cohort(model, members) -> list[Fitted | None]`` trains several clients'
    calls of one round at once (``resources.vectorize``): each result must equal, to float
    rounding, what ``fit`` does from ``member.start``; None leaves a member to ``fit``. It may
    use ``model`` (loaded with anything) as a template, and must change no member's state.
    """

    reads: ClassVar[str]
    headline: ClassVar[str]  # the central metric a progress bar shows
    local: tuple[str, ...]
    exchanges: tuple[Exchange, ...]

    def build_model(self, dataset: Any, generator: torch.Generator) -> nn.Module:
        """A fresh CPU model whose parameters are drawn from ``generator`` only."""
        ...

    def fit(self, model: nn.Module, data: Any, state: State, config: TrainConfig) -> Metrics:
        """Train ``model`` in place on ``data`` (already on ``config.device``); return metrics.

        ``state`` is the client's own, and the one argument a workload may change in place.
        The metric ``TRAINED`` (optional) is the update's weight; 0 abstains from the round."""
        ...

    def evaluate(self, model: nn.Module, data: Any, state: State, config: TrainConfig) -> Metrics:
        """Metrics of ``model`` on ``data`` (e.g. ``loss`` and ``accuracy``), without grad."""
        ...

    def evaluate_central(
        self, model: nn.Module, test: Any, config: TrainConfig, memory: Mapping[str, Any]
    ) -> Metrics:
        """The server's own metrics of the global model on the federation's ``test`` data, with
        the exchanges' latest broadcasts (``config.received``) and memories; {} for none."""
        ...


class WorkloadBase:
    """The defaults of the contract: everything shared, no exchange, and the central
    evaluation that of a client on the test data."""

    reads: ClassVar[str] = "samples"
    headline: ClassVar[str] = "accuracy"
    local: tuple[str, ...] = ()
    exchanges: tuple[Exchange, ...] = ()

    def evaluate(self, model: nn.Module, data: Any, state: State, config: TrainConfig) -> Metrics:
        raise NotImplementedError

    def evaluate_central(
        self, model: nn.Module, test: Any, config: TrainConfig, memory: Mapping[str, Any]
    ) -> Metrics:
        return self.evaluate(model, test, {}, config)


def is_local(name: str, tensor: Tensor, patterns: Sequence[str]) -> bool:
    """Whether a state-dict entry stays on its client: it matches ``patterns``, or it is an
    integer buffer (a count such as BatchNorm's ``num_batches_tracked``, never averaged)."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def split_state(
    state: Mapping[str, Tensor], patterns: Sequence[str]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A model's state dict as (shared entries, local entries), each in the model's order."""
    shared: dict[str, Tensor] = {}
    local: dict[str, Tensor] = {}
    for name, tensor in state.items():
        (local if is_local(name, tensor, patterns) else shared)[name] = tensor
    return shared, local


# Evaluation batches. On a CPU a convolutional model's batch is small enough that its
# activations stay in the caches (a 1.6M-parameter CIFAR CNN evaluates 1.9x faster at 64 than at
# 1024, Fashion-MNIST's small CNN 1.6x), while a dense model's activations are small and a large
# batch is faster (a 784-input MLP: 1.6x slower at 64). On an accelerator, large for throughput.
# Measured by benchmarks/eval_batch.py.
EVAL_BATCH_CONV_CPU, EVAL_BATCH = 64, 1024


def eval_batch_size(model: nn.Module, device: torch.device) -> int:
    convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return EVAL_BATCH_CONV_CPU if convolutional and device.type == "cpu" else EVAL_BATCH


_INITIALISED = (nn.Linear, nn.modules.conv._ConvNd)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@torch.no_grad()
def init_parameters(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise every parameter as PyTorch's defaults do, drawing from ``generator``.

    Linear / Conv weights: ``kaiming_uniform_(a=sqrt(5))``, i.e. U(-1/sqrt(fan_in),
    1/sqrt(fan_in)); their biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Normalisation layers
    (BatchNorm, InstanceNorm, LayerNorm, GroupNorm): weight 1, bias 0, running statistics reset.
    Embeddings: N(0, 1). A module of one's own initialises its own parameters (not its
    children's) by defining ``init_parameters(generator)``. Modules are visited in
    ``model.modules()`` order, so the same generator state gives the same parameters. Any other
    module that owns parameters is refused, so that no parameter is left with values from the
    global RNG (or uninitialised memory).
    """
    for name, module in model.named_modules():
        own_init = getattr(module, "init_parameters", None)
        if callable(own_init):
            own_init(generator)
        elif isinstance(module, _INITIALISED):
            weight: Tensor = module.weight
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
            bias: Tensor | None = module.bias
            if bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(bias, -bound, bound, generator=generator)
        elif isinstance(module, _NORMS):
            _reset_norm(module)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, generator=generator)
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(
                f"init_parameters does not know how to initialise {name or 'the model'!s} "
                f"({type(module).__name__}); give it a method init_parameters(generator) that "
                "fills its own parameters from the generator"
            )
    return model


def _reset_norm(module: nn.Module) -> None:
    """A normalisation layer as constructed: identity affine map, fresh running statistics."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if weight is not None:
        nn.init.ones_(weight)
    if bias is not None:
        nn.init.zeros_(bias)
    reset = getattr(module, "reset_running_stats", None)
    if callable(reset):
        reset()
