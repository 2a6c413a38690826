"""The clients' own states on any Grid: what a checkpoint saves and a resumed run gives back.

A client keeps its local entries, its workload's state and its features' records (e.g. a
compression residual) in its ``context.state``, which lives wherever the engine runs it: in this
process (fedsim's grid), in Flower's simulation engine beside its Ray actors, or on another
machine (a SuperNode). The server reaches it through Messages only, the same on every engine:

* ``query.state``: a client replies with its ``context.state``, which the checkpoint keeps;
* ``query.restore``: a resumed run hands each client the state its checkpoint saved.

The ClientApp marks the reply of every call that changed the client's state (a config record
``client-state``); ``ClientStateGrid`` takes that mark off every reply before anyone else sees
it and asks, at a checkpoint, only the clients whose state changed since the last one. A run
whose clients keep nothing sends no Message for their states at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from strategies.flower import Recorder

STATE = "state"  # message type query.state: reply with your state
RESTORE = "restore"  # message type query.restore: take this state
CHANGED = "client-state"  # a reply's config record: this call changed the client's state
STATE_TYPE = f"{MessageType.QUERY}.{STATE}"
RESTORE_TYPE = f"{MessageType.QUERY}.{RESTORE}"


class ClientStateGrid(Grid):
    """``grid`` unchanged for the server's Messages, keeping track of its clients' states.

    ``client_ids`` maps node ids to client ids; failed state queries go to ``recorder`` as
    ``client_failed`` events (phase ``state``), and the client's previous state is kept.
    """

    def __init__(self, grid: Grid, client_ids: Mapping[int, int], recorder: Recorder) -> None:
        self.grid = grid
        self.client_ids = dict(client_ids)
        self.recorder = recorder
        self._saved: dict[int, dict[str, Any]] = {}  # client id -> plain state, as checkpointed
        self._changed: set[int] = set()  # nodes whose state changed since it was last saved

    # -- Grid, delegated; every reply watched -----------------------------------------------

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._watch(self.grid.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._watch(self.grid.send_and_receive(messages, timeout=timeout))

    def _watch(self, replies: Iterable[Message]) -> list[Message]:
        out = list(replies)
        for reply in out:
            node = reply.metadata.src_node_id
            if reply.has_error():
                # A failed call may have changed a state it holds: ask it again to be sure.
                if self.client_ids.get(node) in self._saved:
                    self._changed.add(node)
            elif CHANGED in reply.content:
                del reply.content[CHANGED]
                self._changed.add(node)
        return out

    # -- checkpoints -----------------------------------------------------------------------------

    def client_states(self, rnd: int) -> dict[int, dict[str, Any]]:
        """Every client's state as tensors and plain values, by client id, for the checkpoint
        of round ``rnd``; the clients whose state changed since the last call are asked for it.
        """
        nodes = sorted(self._changed, key=lambda n: self.client_ids[n])
        messages = [Message(RecordDict(), n, STATE_TYPE, group_id=str(rnd)) for n in nodes]
        replies = {r.metadata.src_node_id: r for r in self._send(messages)}
        for node in nodes:
            client, reply = self.client_ids[node], replies.get(node)
            if reply is None or reply.has_error():
                reason = "no reply" if reply is None else _reason(reply)
                self.recorder.event(
                    "client_failed",
                    round=rnd,
                    phase=STATE,
                    client=client,
                    reason=f"{reason}; its state as last saved is kept",
                )
                continue
            self._changed.discard(node)
            if len(reply.content):
                self._saved[client] = plain_record(reply.content)
            else:  # it keeps nothing (any more)
                self._saved.pop(client, None)
        return dict(sorted(self._saved.items()))

    def restore_client_states(self, states: Mapping[int, Any]) -> None:
        """Hand each client the state a checkpoint saved (``client_states``' plain values).

        Raises RuntimeError when a client does not take it back: the run would go on from
        states other than those saved.
        """
        node_of = {client: node for node, client in self.client_ids.items()}
        saved = {int(c): state for c, state in states.items()}
        clients = sorted(saved)
        messages = [Message(record_of(saved[c]), node_of[c], RESTORE_TYPE) for c in clients]
        replies = {self.client_ids[r.metadata.src_node_id]: r for r in self._send(messages)}
        problems = [
            f"client {c}: {'no reply' if c not in replies else _reason(replies[c])}"
            for c in clients
            if c not in replies or replies[c].has_error()
        ]
        if problems:
            raise RuntimeError(
                f"clients did not take back the states saved in the checkpoint: "
                f"{'; '.join(problems)}"
            )
        self._saved = dict(sorted(saved.items()))
        self._changed.clear()

    def _send(self, messages: list[Message]) -> list[Message]:
        return list(self.grid.send_and_receive(messages)) if messages else []


def _reason(reply: Message) -> str:
    return reply.error.reason or f"error code {reply.error.code}"


def plain_record(record: RecordDict) -> dict[str, Any]:
    """A client's ``RecordDict`` as tensors and plain values, by record kind."""
    return {
        "arrays": {k: dict(r.to_torch_state_dict()) for k, r in record.array_records.items()},
        "configs": {k: dict(r) for k, r in record.config_records.items()},
        "metrics": {k: dict(r) for k, r in record.metric_records.items()},
    }


def record_of(plain: Mapping[str, Any]) -> RecordDict:
    """The inverse of ``plain_record``."""
    record = RecordDict()
    for key, arrays in plain["arrays"].items():
        record[key] = ArrayRecord({k: t.contiguous() for k, t in arrays.items()})
    for key, values in plain["configs"].items():
        record[key] = ConfigRecord(values)
    for key, values in plain["metrics"].items():
        record[key] = MetricRecord(values)
    return record
