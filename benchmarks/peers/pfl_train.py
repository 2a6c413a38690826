"""The benchmark's work as pfl-research trains it (run in pfl's own environment by run.py).

Written as pfl's benchmarks/image_classification/pytorch/train.py sets it up: the whole data set
as tensors once, each user a slice of it (``FederatedDataset.from_slices``), ``PyTorchModel`` with
a local SGD optimiser and a central SGD step (lr 1), ``FederatedAveraging`` over a
``SimulatedBackend`` weighting by data points, central evaluation by a callback. Two workers are
pfl's own way: ``torchrun --nproc-per-node 2`` this module, and pfl shards each cohort and the
evaluation over the processes and sums the updates with torch.distributed (gloo).

Two things differ from pfl's script, so that every implementation does the same work: the users
of each round are fedsim's (the sampler replays run.py's list, which pfl draws identically on
every worker), and central evaluation follows fedsim's schedule (after rounds 10, 20, … and the
last, none before training). Imports pfl, torch, numpy and cnn.py only.

    python -c "import pfl_train; pfl_train.main()" --data DIR --init INIT.pt --users USERS.npy \
        --rounds R --cohort 50 --result RESULT.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from cnn import simple_cnn
from torch import nn

EVAL_BATCH_SIZE = 64  # as fedsim's classification workload on a CPU, and the plain loop


def loss(self: nn.Module, x: torch.Tensor, y: torch.Tensor, eval: bool = False) -> torch.Tensor:
    """pfl's model contract: the mean cross-entropy of a batch."""
    self.eval() if eval else self.train()
    return F.cross_entropy(self(x), y)


@torch.no_grad()
def metrics(self: nn.Module, x: torch.Tensor, y: torch.Tensor, eval: bool = True) -> dict:
    """pfl's model contract: summed loss and correct predictions, weighted by the batch size."""
    from pfl.metrics import Weighted

    self.eval() if eval else self.train()
    logits = self(x)
    return {
        "loss": Weighted(F.cross_entropy(logits, y, reduction="sum").item(), len(x)),
        "accuracy": Weighted((logits.argmax(1) == y).sum().item(), len(x)),
    }


def main() -> None:
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.central_evaluation import CentralEvaluationCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.internal.ops.selector import get_default_framework_module as get_ops
    from pfl.metrics import Metrics
    from pfl.model.pytorch import PyTorchModel

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--init", type=Path, required=True)
    parser.add_argument("--users", type=Path, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--cohort", type=int, required=True)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread per process, as every implementation here
    rounds = args.rounds
    accuracy: dict[int, float] = {}  # central accuracy by round

    class FedsimSchedule(CentralEvaluationCallback):
        """pfl's central evaluation after rounds every, 2·every, … and the last (fedsim's)."""

        def on_train_begin(self, *, model):  # type: ignore[no-untyped-def]
            return Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):  # type: ignore[no-untyped-def]
            done = central_iteration + 1
            if done % args.eval_every and done != rounds:
                return False, Metrics()
            stop, measured = self._eval(model)
            for name, value in measured:
                if str(name) == "Central val | accuracy":
                    accuracy[done] = float(value.overall_value)
            return stop, measured

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(np.load(args.data / f"{name}.npy"))

    x, y, owner = tensor("x_train"), tensor("y_train"), np.load(args.data / "client_train.npy")
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])  # users' rows are consecutive
    ends = np.r_[starts[1:], len(owner)]
    users = {int(owner[s]): (x[s:e], y[s:e]) for s, e in zip(starts, ends, strict=True)}
    replay = iter(np.load(args.users).tolist())  # fedsim's users, round after round
    federated = FederatedDataset.from_slices(users, lambda: next(replay))
    central = Dataset(raw_data=[tensor("x_test"), tensor("y_test")])

    network = simple_cnn()
    network.load_state_dict(torch.load(args.init))
    network.loss = loss.__get__(network)
    network.metrics = metrics.__get__(network)
    model = PyTorchModel(
        model=network,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(network.parameters(), lr=1.0),
    )
    backend = SimulatedBackend(
        training_data=federated, val_data=None, postprocessors=[WeightByDatapoints()]
    )
    evaluation = FedsimSchedule(
        central, model_eval_params=NNEvalHyperParams(local_batch_size=EVAL_BATCH_SIZE)
    )
    started = time.perf_counter()
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=rounds,
            evaluation_frequency=args.eval_every,
            train_cohort_size=args.cohort,
            val_cohort_size=0,
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=0.1, local_num_epochs=1, local_batch_size=10
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=EVAL_BATCH_SIZE),
        callbacks=[evaluation],
    )
    if get_ops().distributed.global_rank == 0:
        args.result.write_text(
            json.dumps({"rounds_s": time.perf_counter() - started, "accuracy": accuracy})
        )
