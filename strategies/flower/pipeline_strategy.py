"""A Flower strategy that aggregates client updates through a fedsim pipeline.

It speaks Flower's standard protocol (``arrays`` + ``config`` out; ``arrays`` + ``metrics`` with
``num-examples`` back), so any Flower ServerApp can use it with ``strategy.start(...)`` and any
Flower ClientApp can answer it. A reply carries either the client's model under ``arrays``
(Flower's way), from which the server takes the update ``x_i - x``, or the update itself under
``update`` (same names and shapes as the model), used as it is, so that an update never makes
the round trip update -> model -> update (not exact in float32). The updates are stacked as
``U`` of shape ``(n, d)`` and the pipeline applied; replies that failed, or that carry NaN/Inf or
wrongly shaped arrays, are left out and reported.

Flower's node ids are random unsigned 64-bit numbers; the strategy speaks of clients
``0..N-1`` instead: the ids the caller maps nodes to (``client_ids``), or else the nodes numbered
in increasing node-id order as they first appear.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any, Protocol, TypeGuard, cast

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from strategies.flower.arrays import view
from strategies.pipeline import RoundInfo, Stage

NUM_EXAMPLES = "num-examples"
ARRAYS = "arrays"  # a reply's model (Flower's standard protocol)
UPDATE = "update"  # a reply's update x_i - x, instead of its model
# A client's privacy spent so far (local DP): neither a train nor an eval quantity, so it keeps
# its name; the federation's value is the largest ε among the round's clients, not a mean.
EPSILON = "epsilon"
ONLINE_IDS_LIMIT = 2000  # events.jsonl lists the online clients' ids for federations up to this


class Recorder(Protocol):
    """Where a strategy reports per-client metrics and events (fedsim's run directory)."""

    def metrics(
        self, round: int, scope: str, client: int | None, values: Mapping[str, float]
    ) -> None: ...

    def event(self, kind: str, **fields: Any) -> None: ...


class FlowerLog:
    """The recorder when none is given: what went wrong goes to Flower's log as a WARNING
    (skipped rounds, failed clients, too few clients online); metrics are left to Flower's
    own summary of each round."""

    WARNINGS = frozenset(
        {"round_skipped", "client_failed", "few_clients_online", "no_clients_online"}
    )

    def metrics(
        self, round: int, scope: str, client: int | None, values: Mapping[str, float]
    ) -> None:
        pass

    def event(self, kind: str, **fields: Any) -> None:
        if kind in self.WARNINGS:
            details = ", ".join(f"{key}={value}" for key, value in fields.items())
            log(WARNING, "%s: %s", kind.replace("_", " "), details)


# Up to this size the update matrix is kept from one round to the next (reusing it saves its
# page faults); a larger one is freed after aggregating, not held while the clients train.
KEEP_ROWS_BYTES = 2**30


class PipelineStrategy(Strategy):
    """Sample clients, collect their updates, aggregate them with a pipeline stage.

    ``replies`` says what its clients send: their ``model`` (or its update, see the module).

    ``per_round`` clients train each round (all when None), ``fraction_evaluate`` of them evaluate.
    Sampling is drawn from ``seed`` and the round over clients ordered by ``client_ids`` (node id ->
    client id, so that runs with fresh random node ids sample the same clients); nodes it does not
    name are numbered after them (from 0 when it is not given) in increasing node-id order.
    Before each round it waits until ``min_available_nodes`` nodes are connected, as Flower's
    FedAvg does (Flower's simulation starts the ServerApp before its nodes). With ``online``
    (round -> bool mask over client ids) only clients online that round are sampled for training;
    evaluation measures the model on all clients, online or not. ``attack`` (a stage) replaces the
    updates of the ``byzantine`` client ids before the pipeline sees them. A round the pipeline
    refuses (e.g. fewer replies than its ``f`` needs) is skipped and the model kept. Skipped
    rounds, failed clients and per-client metrics go to ``recorder``; without one, skipped rounds
    and failures are logged through Flower's logger (WARNING).
    """

    def __init__(
        self,
        pipeline: Stage,
        *,
        per_round: int | None = None,
        fraction_evaluate: float = 1.0,
        seed: int = 0,
        client_ids: Mapping[int, int] | None = None,
        min_available_nodes: int = 1,
        recorder: Recorder | None = None,
        online: Callable[[int], np.ndarray] | None = None,
        byzantine: Collection[int] = (),
        attack: Stage | None = None,
        workdir: str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.per_round = per_round
        self.fraction_evaluate = fraction_evaluate
        self.seed = seed
        self.client_ids = dict(client_ids or {})
        self.min_available_nodes = min_available_nodes
        self.recorder: Recorder = recorder or FlowerLog()
        self.online = online
        self.byzantine = frozenset(byzantine)
        self.attack = attack
        self.workdir = workdir  # a folder the strategy may keep files in (the run directory)
        self.state: Any = None
        self._sent: ArrayRecord | None = None
        self._rows: Tensor | None = None  # last round's update matrix, written over if it fits

    replies: str = "model"

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What the strategy carries from round to round (the pipeline's state)."""
        return {"pipeline": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state["pipeline"]

    # -- Flower's five methods -------------------------------------------------------------------

    def summary(self) -> None:
        print(f"{type(self).__name__}: per_round={self.per_round}, seed={self.seed}")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self._sample(self._nodes(grid), self.per_round, server_round, phase=0)
        self._sent = arrays
        return self._messages(nodes, arrays, config, server_round, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._sent is None:
            raise RuntimeError("aggregate_train called before configure_train")
        template = self._sent
        global_flat = flatten(template)
        valid = self._accepted(server_round, replies, "train", template)
        failures = self._failures
        # A reply that trained on nothing (num-examples 0) abstains: valid, but not aggregated.
        ok = [msg for msg in valid if _num_examples(msg) > 0]
        if not ok:
            reason = "every client abstained" if valid else "no valid replies"
            self.recorder.event("round_skipped", round=server_round, reason=reason)
            return None, MetricRecord({"clients": 0, "failures": failures})
        updates = self._updates(ok, global_flat)
        clients = tuple(self._client(msg.metadata.src_node_id) for msg in ok)
        counts = torch.tensor([_num_examples(msg) for msg in ok], dtype=torch.float32)
        try:
            step, state = self.aggregate_rows(server_round, updates, clients, self.state, counts)
        except ValueError as err:  # e.g. too few replies for the rule's f: keep the model
            self.recorder.event("round_skipped", round=server_round, reason=str(err))
            return None, MetricRecord({"clients": 0, "failures": failures})
        if _holds_a_view(updates, step, state) or updates.nbytes > KEEP_ROWS_BYTES:
            self._rows = None  # a rule kept some rows (never write them over), or it is large
        self.state = state
        self._folded_in(server_round, clients)
        metrics = _weighted_means(ok)
        metrics.update(clients=len(ok), failures=failures)
        if len(valid) > len(ok):
            metrics["abstained"] = len(valid) - len(ok)
        return unflatten(global_flat + step, template), metrics

    def aggregate_rows(
        self,
        server_round: int,
        rows: Tensor,
        clients: Sequence[int],
        state: Any,
        num_examples: Tensor | None = None,
        objectives: Tensor | None = None,
    ) -> tuple[Tensor, Any]:
        """The pipeline on rows ``(n, d)`` sent by ``clients``: the byzantine ones' rows replaced
        by the attack, then pre-aggregators -> aggregator -> server optimiser, from ``state``
        (None: a fresh one). Returns (step, new state); a ValueError says the rule cannot hold.
        """
        info = RoundInfo(
            round=server_round,
            client_ids=tuple(clients),
            num_examples=num_examples if num_examples is not None else torch.ones(len(clients)),
            byzantine=torch.tensor([c in self.byzantine for c in clients], dtype=torch.bool),
            objectives=objectives,
        )
        if self.attack is not None:  # what the byzantine clients send instead
            rows, _ = self.attack.update(rows, self.attack.init(rows.shape[1]), info)
        if state is None:
            state = self.pipeline.init(rows.shape[1])
        return self.pipeline.update(rows, state, info)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_evaluate <= 0:
            return []
        every = self._nodes(grid)
        count = max(1, math.ceil(self.fraction_evaluate * len(every)))
        nodes = self._sample(every, count, server_round, phase=1)
        return self._messages(nodes, arrays, config, server_round, MessageType.EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        ok = self._accepted(server_round, replies, "eval", None)
        if not ok:
            return None
        metrics = _weighted_means(ok)
        metrics.update(clients=len(ok), failures=self._failures)
        return metrics

    # -- what subclasses change -----------------------------------------------------------------

    reply_records: tuple[str, ...] = (ARRAYS, UPDATE)  # what a train reply may carry

    def _updates(self, replies: Sequence[Message], global_flat: Tensor) -> Tensor:
        """The pipeline's input ``U`` (n, d): each reply's update (its model minus the global
        model, or the update it sent)."""
        rows = self._update_rows(len(replies), global_flat)
        for row, msg in zip(rows, replies, strict=True):
            reply_update(msg, global_flat, out=row)
        return rows

    def _update_rows(self, n: int, global_flat: Tensor) -> Tensor:
        """The (n, d) matrix this round's updates are written into, one row each as they are
        read (a list of rows and then ``torch.stack`` would hold every update twice at its
        peak). Last round's when it fits: a fresh one's first writes are page faults, which
        for 50 updates of 6.5 MB cost four times the writing itself."""
        shape = (n, global_flat.numel())
        if self._rows is None or tuple(self._rows.shape) != shape:
            self._rows = None  # freed before the new one is taken
            self._rows = torch.empty(shape, dtype=torch.float32)
        # A new tensor over the same memory each round: rows are written through numpy, which
        # leaves torch's version counter as it was, and caches keyed on the tensor and its
        # version (strategies.gram) must not take this round's rows for last round's.
        return self._rows.view(shape)

    def _problem(self, msg: Message, template: ArrayRecord | None) -> str | None:
        """Why a reply cannot be aggregated, or None when it can."""
        return _problem(msg, template, self.reply_records)

    def _folded_in(self, server_round: int, clients: Sequence[int]) -> None:
        """Called once these clients' updates are part of the new global model."""

    def _client_config(self, client: int, server_round: int) -> dict[str, Any]:
        """What the train Message to this sampled client carries besides the caller's config."""
        return {}

    # -- helpers ---------------------------------------------------------------------------------

    def _client(self, node_id: int) -> int:
        if node_id not in self.client_ids:
            self._number([node_id])
        return self.client_ids[node_id]

    def _number(self, nodes: Iterable[int]) -> None:
        """Client ids for nodes that have none: the next free ids, in increasing node-id order."""
        new = sorted(set(nodes) - self.client_ids.keys())
        if not new:
            return
        first = max(self.client_ids.values(), default=-1) + 1
        if self.client_ids:  # e.g. a node that joined after the first round
            log(WARNING, "nodes %s joined later: they are clients %d..", new, first)
        self.client_ids.update({node: first + i for i, node in enumerate(new)})

    def _nodes(self, grid: Grid) -> list[int]:
        """The grid's nodes, once ``min_available_nodes`` are connected, in client-id order."""
        announced = False
        while len(nodes := list(grid.get_node_ids())) < self.min_available_nodes:
            if not announced:
                log(
                    INFO,
                    "waiting for %d nodes (%d connected)",
                    self.min_available_nodes,
                    len(nodes),
                )
                announced = True
            time.sleep(0.1)
        self._number(nodes)
        return sorted(nodes, key=self._client)

    def _sample(
        self, nodes: list[int], count: int | None, server_round: int, phase: int
    ) -> list[int]:
        """Training (phase 0) samples among the clients online this round; evaluation, all."""
        if self.online is not None and phase == 0:
            mask = self.online(server_round)
            nodes = [n for n in nodes if mask[self._client(n)]]
            self._record_online(server_round, nodes, count)
        if count is None or count >= len(nodes):
            return nodes
        return self._choose(nodes, count, server_round, phase)

    def _choose(self, nodes: list[int], count: int, server_round: int, phase: int) -> list[int]:
        """``count`` of ``nodes`` uniformly at random, drawn from the seed, round and phase."""
        rng = np.random.default_rng([self.seed, server_round, phase])
        chosen = rng.choice(len(nodes), size=count, replace=False)
        return [nodes[i] for i in sorted(chosen)]

    def _record_online(self, server_round: int, nodes: list[int], wanted: int | None) -> None:
        clients = [self._client(n) for n in nodes]
        self.recorder.event(
            "online",
            round=server_round,
            count=len(clients),
            clients=clients if len(clients) <= ONLINE_IDS_LIMIT else None,
        )
        if not clients:
            self.recorder.event("no_clients_online", round=server_round)
        elif wanted is not None and len(clients) < wanted:
            self.recorder.event(
                "few_clients_online", round=server_round, online=len(clients), wanted=wanted
            )

    def _messages(
        self,
        nodes: Sequence[int],
        arrays: ArrayRecord,
        config: ConfigRecord,
        server_round: int,
        message_type: str,
    ) -> list[Message]:
        config = ConfigRecord({**config, "server-round": server_round})  # never mutate the caller's
        content = RecordDict({"arrays": arrays, "config": config})
        messages = []
        for node in nodes:
            training = message_type == MessageType.TRAIN
            extra = self._client_config(self._client(node), server_round) if training else {}
            if extra:
                own = ConfigRecord({**config, **extra})
                node_content = RecordDict({"arrays": arrays, "config": own})
            else:
                node_content = content
            messages.append(Message(node_content, node, message_type, group_id=str(server_round)))
        return messages

    def _accepted(
        self,
        server_round: int,
        replies: Iterable[Message],
        phase: str,
        template: ArrayRecord | None,
    ) -> list[Message]:
        """Replies fit to aggregate; the others are reported as failures with their reason."""
        ok, self._failures = [], 0
        # Arrival order depends on the engine's scheduling: sort so results are reproducible.
        for msg in sorted(replies, key=lambda m: self._client(m.metadata.src_node_id)):
            client = self._client(msg.metadata.src_node_id)
            reason = self._problem(msg, template)
            if reason is None:
                ok.append(msg)
                values = {**_scalars(msg), "examples": _num_examples(msg)}
                self.recorder.metrics(server_round, "client", client, with_phase(values, phase))
            else:
                self._failures += 1
                self.recorder.event(
                    "client_failed", round=server_round, phase=phase, client=client, reason=reason
                )
        return ok


def _problem(msg: Message, template: ArrayRecord | None, records: Sequence[str]) -> str | None:
    """Why a reply cannot be aggregated, or None when it can: a train reply (``template``, the
    model sent) must carry exactly one of ``records``, shaped like the model."""
    if msg.has_error():
        return msg.error.reason or f"error code {msg.error.code}"
    metrics = msg.content.metric_records.get("metrics")
    if metrics is None or NUM_EXAMPLES not in metrics:
        return f"reply has no MetricRecord 'metrics' with '{NUM_EXAMPLES}'"
    count = metrics[NUM_EXAMPLES]
    # A train reply may count 0 (it abstains); an evaluation's count weighs its metrics.
    least = 0 if template is not None else 1
    if not _is_number(count) or count < least:
        wanted = "a count >= 0" if least == 0 else "a positive count"
        return f"reply reports {NUM_EXAMPLES}={count!r}; expected {wanted}"
    if not all(math.isfinite(v) for v in metrics.values() if _is_number(v)):
        return "reply metrics contain NaN or Inf"
    if template is None:
        return None
    carried = [name for name in records if name in msg.content.array_records]
    if len(carried) != 1:
        wanted = " or ".join(repr(name) for name in records)
        found = sorted(msg.content.array_records.keys())
        return f"reply must carry one ArrayRecord {wanted}, it carries {found}"
    arrays = msg.content.array_records[carried[0]]
    if list(arrays.keys()) != list(template.keys()):
        return f"reply {carried[0]!r} has other names than the global model's"
    for key, sent in template.items():
        if tuple(arrays[key].shape) != tuple(sent.shape):
            return (
                f"array {key!r} has shape {tuple(arrays[key].shape)}, expected {tuple(sent.shape)}"
            )
    if not all(np.isfinite(view(a)).all() for a in arrays.values()):
        return "update contains NaN or Inf"
    return None


def with_phase(values: Mapping[str, Any], phase: str) -> dict[str, float]:
    """Numeric metrics named as results show them: ``train_loss``, ``eval_accuracy``, …

    Names the client already prefixed are kept; Flower's ``num-examples`` becomes ``examples``.
    """
    out = {}
    for name, value in values.items():
        if not _is_number(value):
            continue
        name = "examples" if name == NUM_EXAMPLES else name
        keep = name.startswith(f"{phase}_") or name == EPSILON
        out[name if keep else f"{phase}_{name}"] = float(value)
    return out


def _holds_a_view(rows: Tensor, *values: Any) -> bool:
    """Whether a tensor in ``values`` (tensors in plain containers) shares ``rows``' memory."""
    storage = rows.untyped_storage().data_ptr()
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, Tensor):
            if value.device == rows.device and value.untyped_storage().data_ptr() == storage:
                return True
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return False


def reply_update(msg: Message, global_flat: Tensor, out: Tensor | None = None) -> Tensor:
    """A train reply's update, flat: its ``update`` as sent, else its model minus the global
    (written into ``out`` when given)."""
    records = msg.content
    if UPDATE in records:
        return flatten(cast(ArrayRecord, records[UPDATE]), out)
    return _minus(cast(ArrayRecord, records[ARRAYS]), global_flat, out)


def _minus(arrays: ArrayRecord, global_flat: Tensor, out: Tensor | None) -> Tensor:
    """``flatten(arrays) - global_flat``, float32 arrays subtracted as they are read: one pass
    over a reply's bytes rather than a copy and then a subtraction (same float32 results)."""
    if out is None:
        out = torch.empty_like(global_flat)
    flat, minus, offset = out.numpy(), global_flat.numpy(), 0
    for array in arrays.values():
        part = view(array).reshape(-1)
        end = offset + part.size
        if part.dtype == np.float32:
            np.subtract(part, minus[offset:end], out=flat[offset:end])
        else:  # as flatten: cast to float32 first, then subtract
            flat[offset:end] = part
            flat[offset:end] -= minus[offset:end]
        offset = end
    return out


def as_update(msg: Message, sent: ArrayRecord) -> Message:
    """A reply that carries its model (``arrays``) as one that carries its update ``x_i - x``
    (``update``, shaped and typed like ``sent``); any other reply as it is."""
    if msg.has_error() or ARRAYS not in msg.content.array_records:
        return msg
    update = unflatten(reply_update(msg, flatten(sent)), sent)
    return with_record(msg, ARRAYS, UPDATE, update)


def with_record(msg: Message, old: str, new: str, record: ArrayRecord) -> Message:
    """``msg`` with its record ``old`` replaced by ``record`` named ``new``; metadata kept."""
    others = {key: value for key, value in msg.content.items() if key != old}
    return make_message(metadata=msg.metadata, content=RecordDict({new: record, **others}))


def _scalars(msg: Message) -> dict[str, float]:
    """A reply's numeric metrics, without its sample count."""
    metrics = msg.content.metric_records["metrics"]
    return {k: float(v) for k, v in metrics.items() if k != NUM_EXAMPLES and _is_number(v)}


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num_examples(msg: Message) -> float:
    return float(cast(float, msg.content.metric_records["metrics"][NUM_EXAMPLES]))


def _weighted_means(replies: Sequence[Message]) -> MetricRecord:
    """Each numeric metric averaged over replies, weighted by their sample counts."""
    weights = [_num_examples(m) for m in replies]
    total = sum(weights)
    sums: dict[str, float] = {}
    for msg, w in zip(replies, weights, strict=True):
        for key, value in _scalars(msg).items():
            sums[key] = sums.get(key, 0.0) + w * value
    record = MetricRecord({k: v / total for k, v in sums.items()} if total > 0 else {})
    epsilons = [_scalars(msg)[EPSILON] for msg in replies if EPSILON in _scalars(msg)]
    if epsilons:
        record[EPSILON] = max(epsilons)
    record[NUM_EXAMPLES] = int(total)
    return record


def flatten(arrays: ArrayRecord, out: Tensor | None = None) -> Tensor:
    """All arrays of a record as one float32 vector, in the record's order (written into
    ``out``, a contiguous float32 vector, when given): one copy of each array's bytes."""
    parts = [view(a).reshape(-1) for a in arrays.values()]
    if out is None:
        out = torch.empty(sum(p.size for p in parts), dtype=torch.float32)
    if parts:
        np.concatenate(parts, out=out.numpy(), casting="unsafe")
    return out


def unflatten(flat: Tensor, template: ArrayRecord) -> ArrayRecord:
    """The inverse of ``flatten``, shaped and typed like ``template``."""
    out, offset = ArrayRecord(), 0
    for key, array in template.items():
        ref = array.numpy()
        piece = flat[offset : offset + ref.size].reshape(ref.shape).numpy().astype(ref.dtype)
        out[key] = Array.from_numpy_ndarray(piece)
        offset += ref.size
    return out
