"""The server's side of a workload's exchanges: send, collect reports, reduce, broadcast.

After each round's aggregation the core runs the workload's exchanges in declared order. Each
is one Message to its clients (``query.exchange``, naming the exchange) carrying the new shared
model and every broadcast so far; the usable reports go to the exchange's ``reduce`` with the
scenario's aggregation pipeline, and its broadcast then rides on every later Message (records
``received.<name>``) and reaches the central evaluation. A failed report, or one holding NaN or
Inf, is dropped and recorded as ``client_failed``; a ``ValueError`` from ``reduce`` skips the
exchange this round (``round_skipped``) and keeps its memory. Optionally, an exchange's
``due(round)`` skips it on other rounds (an analysis's schedule), its ``scope`` names the
metrics.csv scope of its reduce's metrics (the server's by default), and ``round_only`` keeps
its broadcast to the same round's later exchanges (an analysis's bin edges): the round's
evaluation and later rounds' Messages go without it, as they would without the exchange.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from torch import Tensor

from clients import Aggregate, Arrays, Exchange
from fedsim import results, wire
from fedsim.traffic import bytes_each_way
from strategies.flower import with_phase

EXCHANGE_TYPE = f"{MessageType.QUERY}.{wire.EXCHANGE}"


class Exchanges:
    """A workload's exchanges over a run: their memories and latest broadcasts."""

    def __init__(
        self,
        exchanges: Sequence[Exchange],
        writer: results.RunWriter,
        sizes: Sequence[int],
        client_ids: Mapping[int, int],
    ) -> None:
        self.exchanges = list(exchanges)
        self.writer = writer
        self.sizes = list(sizes)
        self.client_ids = dict(client_ids)  # node id -> client id
        self.memory: dict[str, Any] = {}
        self.broadcasts: dict[str, Arrays] = {}
        self._records: dict[str, ArrayRecord] = {}  # the broadcasts as Messages carry them
        self._round_only = {e.name for e in self.exchanges if getattr(e, "round_only", False)}

    def carry(self, messages: Iterable[Message]) -> list[Message]:
        """``messages`` with the latest broadcasts added to their content."""
        out = list(messages)
        for name, record in self._records.items():
            for msg in out:
                msg.content[wire.RECEIVED + name] = record
        return out

    def _broadcast(self, name: str, arrays: Arrays) -> None:
        self.broadcasts[name] = {k: v.detach().cpu() for k, v in arrays.items()}
        self._records[name] = ArrayRecord(
            {k: v.contiguous() for k, v in self.broadcasts[name].items()}
        )

    def _round_over(self) -> None:
        """The round's exchanges are done: broadcasts meant for them alone go no further."""
        for name in self._round_only:
            self._records.pop(name, None)

    def received(self, device: torch.device) -> dict[str, Arrays]:
        return {
            name: {k: v.to(device) for k, v in arrays.items()}
            for name, arrays in self.broadcasts.items()
            if name not in self._round_only
        }

    def run(
        self,
        rnd: int,
        grid: Grid,
        arrays: ArrayRecord,
        config: ConfigRecord,
        trained: list[int] | None,
        strategy: Any,
    ) -> dict[str, float]:
        """Every exchange once, in order; server metrics (the reduces' and the traffic)."""
        metrics: dict[str, float] = {}
        node_of = {client: node for node, client in self.client_ids.items()}
        for exchange in self.exchanges:
            due = getattr(exchange, "due", None)  # an analysis measures on scheduled rounds only
            if due is not None and not due(rnd):
                continue
            started = time.perf_counter()
            clients = sorted(node_of if exchange.everyone or trained is None else trained)
            exchange_config = ConfigRecord(
                {**config, "server-round": rnd, wire.EXCHANGE: exchange.name}
            )
            content = RecordDict({wire.ARRAYS: arrays, "config": exchange_config})
            messages = self.carry(
                Message(content, node_of[c], EXCHANGE_TYPE, group_id=str(rnd)) for c in clients
            )
            replies = list(grid.send_and_receive(messages))
            down, up = bytes_each_way(messages, replies)
            reports = self._reports(rnd, exchange.name, replies)
            name = exchange.name
            metrics[f"{name}_bytes_down"], metrics[f"{name}_bytes_up"] = float(down), float(up)
            if not reports:
                self.writer.event("round_skipped", round=rnd, exchange=name, reason="no reports")
            else:
                try:
                    broadcast, memory, reduced = exchange.reduce(
                        reports, self.memory.get(name), self._aggregate(rnd, strategy), rnd
                    )
                except ValueError as err:  # the rule cannot hold this round: memory kept
                    self.writer.event("round_skipped", round=rnd, exchange=name, reason=str(err))
                else:
                    self._broadcast(name, broadcast)
                    self.memory[name] = memory
                    scope = getattr(exchange, "scope", None)  # e.g. a federated estimate
                    if scope:
                        self.writer.metrics(rnd, scope, None, reduced)
                    else:
                        metrics.update(reduced)
            metrics[f"{name}_time_s"] = time.perf_counter() - started
        self._round_over()
        return metrics

    def _reports(self, rnd: int, name: str, replies: list[Message]) -> dict[int, Arrays]:
        """The usable reports by client; the others recorded as failures."""
        reports: dict[int, Arrays] = {}
        for reply in sorted(replies, key=lambda r: self.client_ids[r.metadata.src_node_id]):
            client = self.client_ids[reply.metadata.src_node_id]
            reason, report = _problem(reply)
            if reason is not None:
                self.writer.event(
                    "client_failed", round=rnd, phase=name, client=client, reason=reason
                )
                continue
            metrics = reply.content.get("metrics")  # item access: metric_records is rebuilt
            if isinstance(metrics, MetricRecord):
                values = with_phase(metrics, name)
                values.pop(f"{name}_examples", None)  # the client's size, not a measurement
                if values:
                    self.writer.metrics(rnd, results.CLIENT, client, values)
            reports[client] = report
        return reports

    def _aggregate(self, rnd: int, strategy: Any) -> Aggregate:
        """The scenario's attack and pipeline on an exchange's rows, weighted by sample counts."""
        pipeline = getattr(strategy, "inner", strategy)  # under a wrapper, the strategy inside

        def aggregate(
            rows: Tensor, clients: Sequence[int], state: Any, objectives: Tensor | None
        ) -> tuple[Tensor, Any]:
            counts = torch.tensor([self.sizes[c] for c in clients], dtype=torch.float32)
            step, state = pipeline.aggregate_rows(rnd, rows, clients, state, counts, objectives)
            return step, state

        return aggregate

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            name: {"memory": self.memory.get(name), "broadcast": self.broadcasts.get(name)}
            for name in {e.name for e in self.exchanges}
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, saved in state.items():
            if saved.get("memory") is not None:
                self.memory[name] = saved["memory"]
            if saved.get("broadcast") is not None:
                self._broadcast(name, saved["broadcast"])
        self._round_over()  # a checkpoint is taken between rounds


def _problem(reply: Message) -> tuple[str | None, Arrays]:
    if reply.has_error():
        return reply.error.reason or f"error code {reply.error.code}", {}
    record = reply.content.get(wire.REPORT)
    if not isinstance(record, ArrayRecord):
        return f"reply has no ArrayRecord {wire.REPORT!r}", {}
    report = wire.decode_record(record)
    for key, tensor in report.items():
        # numpy's check: torch's costs more than the rest of a small array's decoding
        if tensor.is_floating_point() and not np.isfinite(tensor.numpy()).all():
            return f"report {key!r} contains NaN or Inf", {}
    return None, report
