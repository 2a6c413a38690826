"""The two-phase federated meta step (exchanges meta_train, meta_update) equals centralised
first-order DAML, worked out here with plain autograd on a tiny model, to float precision."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from clients import TrainConfig
from clients.daml.exchanges import GRAD, META_TRAIN, META_UPDATE, STEP
from clients.daml.workload import DamlParams, DamlWorkload, Experts
from fedsim.opendg_data import OpenDGClientData

SOURCES, CLASSES, BATCH = 3, 4, 5
PARAMS = DamlParams(
    mixup="off", batch_size=BATCH, hidden=5, features=3, lr=0.1, weight_decay=0.01, meta_step=0.3
)


def tiny_data() -> OpenDGClientData:
    gen = torch.Generator().manual_seed(0)
    n = 8  # per domain
    return OpenDGClientData(
        x=torch.randn(SOURCES * n, 1, 2, 2, generator=gen),
        y=torch.randint(0, CLASSES, (SOURCES * n,), generator=gen),
        domain=torch.arange(SOURCES).repeat_interleave(n),
        num_sources=SOURCES,
        num_known=CLASSES,
    )


def only(data: OpenDGClientData, d: int) -> OpenDGClientData:
    keep = data.domain == d
    return OpenDGClientData(data.x[keep], data.y[keep], data.domain[keep], SOURCES, CLASSES)


def config(received: Mapping[str, Any]) -> TrainConfig:
    # every client draws the same two seeds, so each domain's draws match the centralised run
    return TrainConfig(
        1, 0, torch.Generator().manual_seed(7), torch.device("cpu"), received=received
    )


def federated_step(
    workload: DamlWorkload, model: Experts, clients: list[OpenDGClientData]
) -> dict[str, Tensor]:
    """One round of the two exchanges over ``clients``; the server's step."""
    train, update = workload.exchanges
    states: list[dict[str, Tensor]] = [{} for _ in clients]
    reports = {
        c: train.report(model, data, states[c], config({}))[0] for c, data in enumerate(clients)
    }
    first, _, _ = train.reduce(reports, None, None, 1)  # type: ignore[arg-type]
    reports = {
        c: update.report(model, data, states[c], config({META_TRAIN: first}))[0]
        for c, data in enumerate(clients)
    }
    step, _, _ = update.reduce(reports, None, None, 1)  # type: ignore[arg-type]
    return {k[len(STEP) :]: v for k, v in step.items() if k.startswith(STEP)}


def centralised_step(
    workload: DamlWorkload, model: Experts, data: OpenDGClientData
) -> dict[str, Tensor]:
    """First-order DAML (CE + KD at θ, other experts' CE at θ' = θ − α∇L_tr), written out."""
    p = workload.params
    seeds = [
        int(s) for s in torch.randint(0, 2**62, (2,), generator=torch.Generator().manual_seed(7))
    ]
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}

    def logits(params: dict[str, Tensor], x: Tensor, m: int) -> Tensor:
        h = F.relu(
            F.linear(
                x.flatten(1),
                params[f"experts.{m}.body.1.weight"],
                params[f"experts.{m}.body.1.bias"],
            )
        )
        h = F.relu(
            F.linear(h, params[f"experts.{m}.body.3.weight"], params[f"experts.{m}.body.3.bias"])
        )
        return F.linear(h, params[f"experts.{m}.head.weight"], params[f"experts.{m}.head.bias"])

    def batches(seed: int) -> list[tuple[int, Tensor, Tensor]]:
        out = []
        for d in range(SOURCES):
            rows = torch.nonzero(data.domain == d).flatten().numpy()
            idx = torch.from_numpy(
                np.random.default_rng([seed, 1, d]).choice(rows, BATCH, replace=False)
            )
            out.append((d, data.x[idx], data.y[idx]))
        return out

    loss_tr = torch.zeros(())
    for d, x, y in batches(seeds[0]):
        z = [logits(theta, x, m) for m in range(SOURCES)]
        loss_tr = loss_tr + F.cross_entropy(z[d], y)
        pi = torch.from_numpy(
            np.random.default_rng([seeds[0], 2, d]).dirichlet([1.0, 1.0], BATCH)
        ).float()
        others = [F.softmax(z[m].detach() / 2.0, 1) for m in range(SOURCES) if m != d]
        q = pi[:, :1] * others[0] + pi[:, 1:] * others[1]
        kl = (q * (q.log() - F.log_softmax(z[d] / 2.0, 1))).sum(1).mean()
        loss_tr = loss_tr + p.trade2 * 4.0 * kl
    g_tr = torch.autograd.grad(loss_tr, list(theta.values()))
    fast = {
        k: (v - p.meta_step * g).detach().requires_grad_(True)
        for (k, v), g in zip(theta.items(), g_tr, strict=True)
    }
    loss_obj = torch.zeros(())
    for d, x, y in batches(seeds[1]):
        for m in range(SOURCES):
            if m != d:
                loss_obj = loss_obj + p.trade3 * F.cross_entropy(logits(fast, x, m), y)
    g_obj = torch.autograd.grad(loss_obj, list(fast.values()))
    return {
        k: -p.lr * (a + b + p.weight_decay * v.detach())
        for (k, v), a, b in zip(theta.items(), g_tr, g_obj, strict=True)
    }


def test_two_phase_federated_step_equals_the_centralised_first_order_step() -> None:
    # Prepare
    workload = DamlWorkload(params=PARAMS)
    model = Experts(SOURCES, 4, 5, 3, CLASSES)
    gen = torch.Generator().manual_seed(0)
    for param in model.parameters():  # experts that differ, with confident outputs
        torch.nn.init.normal_(param, std=0.7, generator=gen)
    data = tiny_data()

    # Execute: one client per domain; one client holding every domain; the reference
    per_domain = federated_step(workload, model, [only(data, d) for d in range(SOURCES)])
    one_client = federated_step(workload, model, [data])
    reference = centralised_step(workload, model, data)

    # Assert
    assert reference.keys() == per_domain.keys() == one_client.keys()
    for k in reference:
        assert torch.allclose(per_domain[k], reference[k], atol=1e-6, rtol=1e-5), k
        assert torch.allclose(one_client[k], reference[k], atol=1e-6, rtol=1e-5), k
    assert any(float(v.abs().max()) > 1e-3 for v in reference.values())  # a real step
    _, losses = workload.train_gradient(model, dict(model.named_parameters()), data, None, 7)
    assert losses["loss_kd"] > 1e-3  # the distillation term takes part


def test_meta_update_without_this_rounds_meta_train_fails_the_client() -> None:
    workload = DamlWorkload(params=PARAMS)
    model = Experts(SOURCES, 4, 5, 3, CLASSES)
    _, update = workload.exchanges
    with pytest.raises(RuntimeError, match="no meta_train gradient"):
        update.report(model, tiny_data(), {}, config({}))
    assert GRAD and META_UPDATE  # the names the exchanges send under
