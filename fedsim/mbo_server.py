"""The server's side of the mbo workload: gradient ascent on designs against the clients' proxies.

Round 0 asks every client to train its proxy on its own offline data (``train.proxy``) and to
name its best designs; the server starts from the best ``designs`` of those (design-baselines
starts from the dataset's top designs). Each later round is one ascent step: the server sends
the designs (``query.gradients``), each client returns its proxy's values and gradients at them,
and the scenario's strategy pipeline (attack → pre-aggregators → aggregator → server optimiser)
combines the clients' gradients design by design, each design with its own pipeline state. The
step is added to the design, so ``strategy.server_opt.lr`` is the ascent step size. Proxies never
leave the clients; the oracle is only consulted to report scores.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch import Tensor

from clients.mbo import MboFederation, MboWorkload, mbo_federation
from fedsim import results, wire
from fedsim.errors import UserError
from fedsim.grid import restore_client_states, saved_client_states
from fedsim.progress import RoundProgress
from fedsim.registry import WORKLOADS
from fedsim.scenario import Scenario
from strategies.flower import PipelineStrategy
from strategies.pipeline import RoundInfo

TRAIN_PROXY = "train.proxy"  # message type: fit the client's proxy, reply its best designs
GRADIENTS = "query.gradients"  # message type: the proxy's values and gradients at the designs


def is_mbo(scenario: Scenario) -> bool:
    return scenario.workload.name == "mbo"


def federation(scenario: Scenario) -> MboFederation:
    return mbo_federation(
        scenario.data.dataset,
        scenario.data.partition,
        scenario.clients.num,
        scenario.seed,
        scenario.data.val_fraction,
    )


def check(scenario: Scenario) -> None:
    """What an mbo scenario must satisfy besides its schema (preflight)."""
    clients = scenario.clients
    if clients.per_round != clients.num or clients.availability.name != "always":
        raise UserError(
            "workload mbo asks every client for its gradients at every ascent step; set "
            f"clients.per_round = clients.num ({clients.num}) and leave clients.availability "
            f"at always (got per_round={clients.per_round}, "
            f"availability={clients.availability.name})"
        )
    federation(scenario)


def serve_designs(
    grid: Grid,
    scenario: Scenario,
    writer: results.RunWriter,
    checkpoint: results.Checkpoint | None,
    show_progress: bool,
    client_ids: dict[int, int],
    strategy: PipelineStrategy,
) -> None:
    """Train the proxies (round 0), then ascend the designs for ``scenario.rounds`` steps."""
    workload: MboWorkload = WORKLOADS.build(scenario.workload)
    fed = federation(scenario)
    config = ConfigRecord({"scenario": scenario.to_yaml()})
    if checkpoint is None:
        writer.event("run_started", clients=scenario.clients.num, rounds=scenario.rounds)
        members, designs = _train_proxies(grid, client_ids, config, writer, workload, fed)
        states = [strategy.pipeline.init(designs.shape[1]) for _ in range(len(designs))]
        first = 1
        best = float(fed.task.normalised(fed.task.best_offline))
        writer.metrics(
            0, results.SERVER, None, {**workload.scores(fed.task, designs), "best_offline": best}
        )
        writer.flush()
    else:
        first = checkpoint["round"] + 1
        designs = checkpoint["model"]["designs"]
        members, states = checkpoint["strategy"]["members"], checkpoint["strategy"]["states"]
        restore_client_states(grid, checkpoint["clients"])
        writer.event("run_resumed", after_round=checkpoint["round"])
    sizes = fed.client_sizes()
    node_of = {client: node for node, client in client_ids.items()}

    with RoundProgress(scenario.rounds, first - 1, show_progress, metric="p100") as progress:
        for rnd in range(first, scenario.rounds + 1):
            started = time.perf_counter()
            nodes = [node_of[c] for c in members]
            messages = _messages(nodes, GRADIENTS, config, designs)
            replies = list(grid.send_and_receive(messages))
            down, up = wire.traffic(messages, replies)  # measured as Flower serialises them
            answered = time.perf_counter()
            clients, values, grads = _gradients(rnd, replies, client_ids, designs, writer)
            if not clients:
                writer.event("round_skipped", round=rnd, reason="no valid replies")
            else:
                designs, states = _ascend(
                    rnd, strategy, designs, states, clients, values, grads, sizes, writer
                )
            combined = time.perf_counter()
            scores: dict[str, float] = {}
            if rnd % scenario.eval.every == 0 or rnd == scenario.rounds:
                scores = workload.scores(fed.task, designs)
            writer.metrics(
                rnd,
                results.SERVER,
                None,
                {
                    **scores,
                    **_ensemble_metrics(values, grads),
                    # the clients' gradients, transport included
                    "train_time_s": answered - started,
                    "aggregate_time_s": combined - answered,
                    "round_time_s": time.perf_counter() - started,
                    "bytes_down": float(down),
                    "bytes_up": float(up),
                },
            )
            writer.flush()
            every = scenario.checkpoint_every
            if every and (rnd % every == 0 or rnd == scenario.rounds):
                writer.save_checkpoint(_checkpoint(rnd, designs, members, states, grid))
            progress.advance(scores.get("p100"))
    writer.save_model({"designs": designs})


def _messages(
    nodes: list[int], kind: str, config: ConfigRecord, designs: Tensor | None
) -> list[Message]:
    content: dict[str, Any] = {"config": config}
    if designs is not None:
        content["designs"] = ArrayRecord({"designs": designs.contiguous()})
    return [Message(RecordDict(content), message_type=kind, dst_node_id=node) for node in nodes]


def _train_proxies(
    grid: Grid,
    client_ids: dict[int, int],
    config: ConfigRecord,
    writer: results.RunWriter,
    workload: MboWorkload,
    fed: MboFederation,
) -> tuple[list[int], Tensor]:
    """Every client fits its proxy; the clients whose proxies are ready, and the start designs."""
    nodes = sorted(client_ids, key=client_ids.__getitem__)
    members, best_x, best_y = [], [], []
    replies = grid.send_and_receive(_messages(nodes, TRAIN_PROXY, config, None))
    # Arrival order depends on the engine: by client, the records and the start designs (ties
    # among equal scores) are the same on every engine.
    for reply in sorted(replies, key=lambda r: client_ids[r.metadata.src_node_id]):
        node = reply.metadata.src_node_id
        client = client_ids[node]
        if reply.has_error():
            writer.event(
                "client_failed", round=0, phase="proxy", client=client, reason=reply.error.reason
            )
            continue
        metrics = reply.content.metric_records["metrics"]
        writer.metrics(0, results.CLIENT, client, {k: float(v) for k, v in metrics.items()})  # type: ignore[arg-type]
        top = reply.content.array_records["top"].to_torch_state_dict()
        members.append(client)
        best_x.append(top["designs"])
        best_y.append(top["scores"])
    if not members:
        raise RuntimeError("no client could train its proxy (see client_failed in events.jsonl)")
    x, y = torch.cat(best_x), torch.cat(best_y)
    order = torch.argsort(y, descending=True, stable=True)[: workload.params.designs]
    writer.event("proxies_trained", clients=members, designs=len(order))
    return members, x[order].clone()


def _gradients(
    rnd: int,
    replies: Any,
    client_ids: dict[int, int],
    designs: Tensor,
    writer: results.RunWriter,
) -> tuple[list[int], Tensor, Tensor]:
    """The clients that answered usably, their values (k, m) and gradients (k, m, D)."""
    rows: list[tuple[int, Tensor, Tensor]] = []
    for reply in replies:
        client = client_ids[reply.metadata.src_node_id]
        reason = None
        if reply.has_error():
            reason = reply.error.reason
        else:
            arrays = reply.content.array_records["gradients"].to_torch_state_dict()
            values, grads = arrays["values"], arrays["gradients"]
            if tuple(grads.shape) != tuple(designs.shape) or values.shape != (len(designs),):
                reason = f"gradients of shape {tuple(grads.shape)}, expected {tuple(designs.shape)}"
            elif not (torch.isfinite(values).all() and torch.isfinite(grads).all()):
                reason = "proxy values or gradients contain NaN or Inf"
        if reason is not None:
            writer.event(
                "client_failed", round=rnd, phase="gradients", client=client, reason=reason
            )
            continue
        rows.append((client, values, grads))
    rows.sort(key=lambda row: row[0])  # arrival order depends on the engine
    if not rows:
        return [], torch.empty(0), torch.empty(0)
    clients = [c for c, _, _ in rows]
    return clients, torch.stack([v for _, v, _ in rows]), torch.stack([g for _, _, g in rows])


def _ascend(
    rnd: int,
    strategy: PipelineStrategy,
    designs: Tensor,
    states: list[Any],
    clients: list[int],
    values: Tensor,
    grads: Tensor,
    sizes: list[int],
    writer: results.RunWriter,
) -> tuple[Tensor, list[Any]]:
    """One ascent step: each design moves by its own pipeline's combination of the gradients."""
    counts = torch.tensor([sizes[c] for c in clients], dtype=torch.float32)
    byzantine = torch.tensor([c in strategy.byzantine for c in clients], dtype=torch.bool)
    moved, new_states = designs.clone(), list(states)
    for j in range(len(designs)):
        info = RoundInfo(rnd, tuple(clients), counts, byzantine, objectives=values[:, j])
        rows = grads[:, j]
        if strategy.attack is not None:  # what the byzantine clients send instead
            rows, _ = strategy.attack.update(rows, strategy.attack.init(rows.shape[1]), info)
        try:
            step, new_states[j] = strategy.pipeline.update(rows, states[j], info)
        except ValueError as err:  # e.g. too few answers for the rule's f: the designs stay
            writer.event("round_skipped", round=rnd, reason=str(err))
            return designs, states
        moved[j] += step
    return moved, new_states


def _ensemble_metrics(values: Tensor, grads: Tensor) -> dict[str, float]:
    """How much the proxies agree: their mean and worst prediction, and gradient conflict."""
    if values.numel() == 0:
        return {}
    out = {"proxy_mean": float(values.mean()), "proxy_min": float(values.min(dim=0).values.mean())}
    k = grads.shape[0]
    if k > 1:
        unit = torch.nn.functional.normalize(grads, dim=2)  # (k, m, D)
        cos = torch.einsum("imd,jmd->mij", unit, unit)
        pairs = torch.triu_indices(k, k, offset=1)
        # share of client pairs whose gradients point against each other, over all designs
        out["gradient_conflict"] = float((cos[:, pairs[0], pairs[1]] < 0).float().mean())
    return out


def _checkpoint(
    rnd: int, designs: Tensor, members: list[int], states: list[Any], grid: Grid
) -> results.Checkpoint:
    return {
        "round": rnd,
        "model": {"designs": designs},
        "strategy": {"members": members, "states": states},
        "clients": saved_client_states(grid),
    }
