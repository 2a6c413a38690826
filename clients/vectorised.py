"""A cohort of clients' local SGD trained as one batched model (``resources.vectorize``).

Each client's weights are one slice of stacked parameters (``torch.func``: ``functional_call``
under ``vmap`` for the forward pass, one backward pass for all), so one call per step trains
every client of the cohort. The result is each client's ``fit`` to float rounding: every client
draws its own minibatches from its own generator exactly as ``PlainTraining`` does, a batch
shorter than the others (a pass's last) is padded with samples of weight zero, and SGD
(momentum, weight decay, FedProx's proximal term) steps each client's slice with its own
momentum buffers, in ``torch.optim.SGD``'s order of operations. Clients with different numbers
of steps train together: ordered by steps, longest first, the clients that still have a batch
at any step are the first rows, and only those rows are computed and stepped.

Training all of a round's clients as one model replaces many small kernels by a few large ones,
which is where a GPU (or, for small models, Python's per-call overhead) leaves time. On a CPU the
cohort trains in groups, one after the other, each small enough that a step's largest layer
output stays within ``CPU_ACTIVATION_BYTES``: a whole cohort's activations at once (100 clients
of 32 Fashion-MNIST images through a CNN: 160 MB a layer) spill the caches, and its step ran
2.4x slower than the clients' one by one. A dense model's layers are small: one group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.utils.rnn import pad_sequence

from clients.workload import Fitted, Member, PlainTraining, shuffled_passes

# On a CPU, the most bytes a group's step may make in one layer's output (clients x batch x the
# largest output of one sample), so that the activations stay in the caches. Fashion-MNIST's CNN
# (50 kB a sample): 100 clients' rounds took 7.2 s in groups of 6-7 clients of 32 images, 13.3
# as one cohort, 6.7 in the loop (benchmarks/vectorise.py); pfl's CIFAR CNN (200 kB): 74 s in
# groups of 5-6 clients of 10 images, 83 in groups of 7-8, 104 of 25, 62 in the loop
# (benchmarks/peers/run.py --only fedsim1,vectorised).
CPU_ACTIVATION_BYTES = 12 * 2**20


class LocalSGD(Protocol):
    """The hyper-parameters of the local training that the cohort reproduces."""

    @property
    def epochs(self) -> int: ...
    @property
    def steps(self) -> int | None: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def momentum(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def mu(self) -> float: ...


def fit_cohort(model: nn.Module, members: Sequence[Member], p: LocalSGD) -> list[Fitted | None]:
    """Each member's training by minibatch SGD from its own start, all at once; None for a
    member that must be trained alone (no data, a private or unusual minibatch order, a
    non-finite loss, whose error its own ``fit`` reports)."""
    results: list[Fitted | None] = [None] * len(members)
    if any(True for _ in model.buffers()):  # running statistics (BatchNorm) update in place
        return results
    together = [i for i, member in enumerate(members) if _batchable(member)]
    if len(together) < 2:  # one client alone is as fast in the loop
        return results
    for i, fitted in zip(together, _train(model, [members[i] for i in together], p), strict=True):
        results[i] = fitted
    return results


def _batchable(member: Member) -> bool:
    x, y = member.data
    training = member.config.training
    plain = type(training) is PlainTraining  # DP-SGD or another order: its own loop
    return plain and x.shape[0] > 0 and y.shape[0] == x.shape[0]


def _train(model: nn.Module, members: list[Member], p: LocalSGD) -> list[Fitted | None]:
    """The members trained, longest first (so that the clients still training at any step are
    a prefix of the rows), in groups on a CPU; the results in the members' order."""
    # The same generator draws, in the same order, as each client's own PlainTraining.
    plans = [_batches(member, p) for member in members]
    order = sorted(range(len(members)), key=lambda c: -len(plans[c]))
    n, groups = len(order), 1
    x = members[0].data[0]
    if x.device.type == "cpu":
        per_client = _largest_output_bytes(model, x[:1]) * p.batch_size
        groups = math.ceil(n / max(2, CPU_ACTIVATION_BYTES // max(1, per_client)))
    results: list[Fitted | None] = [None] * len(members)
    for g in range(groups):  # sizes within one of each other (10 clients, 8 at most: 5 + 5)
        rows = order[g * n // groups : (g + 1) * n // groups]  # similar lengths: little padding
        fitted = _train_longest_first(
            model, [members[c] for c in rows], [plans[c] for c in rows], p
        )
        for c, one in zip(rows, fitted, strict=True):
            results[c] = one
    return results


def _train_longest_first(
    model: nn.Module, members: list[Member], plans: list[list[Tensor]], p: LocalSGD
) -> list[Fitted | None]:
    trainable = [name for name, q in model.named_parameters() if q.requires_grad]
    frozen_names = [name for name, q in model.named_parameters() if not q.requires_grad]
    params = {k: torch.stack([m.start[k] for m in members]).detach() for k in trainable}
    frozen = {k: torch.stack([m.start[k] for m in members]) for k in frozen_names}
    anchor = {k: v.clone() for k, v in params.items()} if p.mu > 0 else {}
    x, y, index, weight = _stacked(members, plans)
    steps = [len(plan) for plan in plans]  # descending

    def forward(params: dict[str, Tensor], frozen: dict[str, Tensor], xb: Tensor) -> Tensor:
        return functional_call(model, {**params, **frozen}, (xb,))

    # (clients, batch, ...) -> (clients, batch, classes). Random layers (dropout) draw each
    # client's own masks, from torch's global generator as a client trained alone does.
    logits_of = vmap(forward, randomness="different")
    momentum: dict[str, Tensor] = {}
    loss_sum = torch.zeros(len(members), device=x.device)
    correct = torch.zeros(len(members), device=x.device)
    model.train()
    for s in range(steps[0]):
        a = sum(1 for n in steps if n > s)  # the clients with a batch at this step: rows :a
        live = {k: v[:a].detach().requires_grad_() for k, v in params.items()}
        idx, wb = index[:a, s], weight[:a, s]
        xb, yb = x[idx], y[idx]
        logits = logits_of(live, {k: v[:a] for k, v in frozen.items()}, xb)
        per_sample = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
        # Each client's mean over its real samples (padding weighs nothing). The clients'
        # losses share no weights, so the gradient of their sum is each one's own gradient.
        batch_loss = (per_sample.view_as(wb) * wb).sum(dim=1) / wb.sum(dim=1)
        grads = torch.autograd.grad(batch_loss.sum(), list(live.values()))
        with torch.no_grad():
            _sgd_step(params, dict(zip(live, grads, strict=True)), momentum, anchor, a, p)
            loss_sum[:a] += batch_loss * wb.sum(dim=1)
            correct[:a] += ((logits.argmax(dim=-1) == yb) * wb).sum(dim=1)
    seen = weight.sum(dim=(1, 2)).double()  # as fit divides: Python floats
    losses = (loss_sum.double() / seen).tolist()
    accuracies = (correct.double() / seen).tolist()
    results: list[Fitted | None] = []
    for c, member in enumerate(members):
        if not math.isfinite(losses[c]):  # its own fit raises the error
            results.append(None)
            continue
        entries = {**member.start, **{k: v[c] for k, v in params.items()}}
        metrics = {"train_loss": losses[c], "train_accuracy": accuracies[c]}
        results.append(Fitted(entries, metrics))
    return results


def _largest_output_bytes(model: nn.Module, sample: Tensor) -> int:
    """The bytes of the largest tensor any of ``model``'s modules outputs for ``sample`` (one
    no-grad pass in eval mode, so that no dropout mask is drawn); 0 when none is a tensor."""
    sizes = [0]

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            sizes.append(output.numel() * output.element_size())

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
    return max(sizes)


def _batches(member: Member, p: LocalSGD) -> list[Tensor]:
    """The member's index batches, every pass's in turn, drawn as ``PlainTraining`` draws them."""
    n = member.data[0].shape[0]
    config = member.config
    passes = shuffled_passes(n, p.batch_size, p.epochs, p.steps, config.generator, config.device)
    return [batch for one_pass in passes for batch in one_pass]


def _stacked(
    members: list[Member], plans: list[list[Tensor]]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The members' data concatenated, and for each (client, step) the indices of its batch
    into it and their weights (1, and 0 for padding): shapes (clients, steps, batch)."""
    device = members[0].config.device
    rows: list[Tensor] = []
    owner: list[int] = []
    step: list[int] = []
    offset = 0
    for c, (member, plan) in enumerate(zip(members, plans, strict=True)):
        rows += [batch + offset for batch in plan]
        owner += [c] * len(plan)
        step += list(range(len(plan)))
        offset += member.data[0].shape[0]
    padded = pad_sequence(rows, batch_first=True)  # (all batches, longest)
    lengths = torch.tensor([len(row) for row in rows], device=device)
    real = (torch.arange(padded.shape[1], device=device) < lengths[:, None]).float()
    shape = (len(members), max(len(plan) for plan in plans), padded.shape[1])
    index = torch.zeros(shape, dtype=torch.long, device=device)
    weight = torch.zeros(shape, device=device)
    at = (torch.tensor(owner, device=device), torch.tensor(step, device=device))
    index[at], weight[at] = padded, real
    x = torch.cat([member.data[0] for member in members])
    y = torch.cat([member.data[1] for member in members])
    return x, y, index, weight


def _sgd_step(
    params: dict[str, Tensor],
    grads: dict[str, Tensor],
    momentum: dict[str, Tensor],
    anchor: dict[str, Tensor],
    a: int,
    p: LocalSGD,
) -> None:
    """One ``torch.optim.SGD`` step (dampening 0, no Nesterov) of the first ``a`` clients'
    slices, in place, the proximal gradient mu·(w − w₀) added first as ``fit`` adds it."""
    for k, g in grads.items():
        w = params[k][:a]
        if anchor:
            g = g.add(w - anchor[k][:a], alpha=p.mu)
        if p.weight_decay:
            g = g.add(w, alpha=p.weight_decay)
        if p.momentum:
            if k not in momentum:  # the first step: every client is at it
                momentum[k] = g.clone()
            else:
                momentum[k][:a].mul_(p.momentum).add_(g)
            g = momentum[k][:a]
        w.add_(g, alpha=-p.lr)
