"""The clients' own states through Messages: the ClientApp's half and the server's half.

No Ray: the server's half runs on fedsim's in-process grid, which carries the same Messages as
Flower's engines; ``test_toy_workload.py`` checks a Flower run's checkpoint and its resume.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

import fedsim.client_app
from fedsim.client_states import (
    CHANGED,
    RESTORE,
    RESTORE_TYPE,
    STATE,
    STATE_TYPE,
    ClientStateGrid,
    plain_record,
    record_of,
)
from fedsim.grid import FIRST_NODE_ID, InProcessGrid

CLIENTS = 3
NODES = {FIRST_NODE_ID + c: c for c in range(CLIENTS)}  # node id -> client id

# ---- a small ClientApp: a counter in context.state, and fedsim's own state handlers ---------

counter_app = ClientApp()
counter_app.query(STATE)(fedsim.client_app.state)
counter_app.query(RESTORE)(fedsim.client_app.restore)
FAILING: set[int] = set()  # clients whose state and restore queries fail


@counter_app.train()
def count(msg: Message, context: Context) -> Message:
    """Adds ``step`` (config) to its counter; a step of 0 changes nothing and says nothing,
    a negative one fails."""
    step = int(msg.content.config_records["config"]["step"])  # type: ignore[call-overload]
    if step < 0:
        return Message(Error(code=1, reason="out of memory"), reply_to=msg)
    kept = context.state.array_records.get("counter")
    calls = kept.to_torch_state_dict()["calls"] if kept else torch.zeros((), dtype=torch.int64)
    content = RecordDict({"metrics": MetricRecord({"calls": int(calls + step)})})
    if step:
        context.state["counter"] = ArrayRecord({"calls": calls + step})
        content[CHANGED] = ConfigRecord()
    return Message(content, reply_to=msg)


class Recorder:
    """The run's events, as RunWriter records them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def metrics(self, *args: Any, **kwargs: Any) -> None:
        pass

    def event(self, kind: str, **fields: Any) -> None:
        self.events.append({"event": kind, **fields})


class CountingGrid(InProcessGrid):
    """The in-process grid, keeping every Message's type and destination client; the state and
    restore queries of the clients in ``FAILING`` get an error reply, as from a failed node."""

    sent: ClassVar[list[tuple[str, int]]] = []

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        batch = list(messages)
        kinds = [(m.metadata.message_type, NODES[m.metadata.dst_node_id]) for m in batch]
        CountingGrid.sent += kinds
        fails = [kind in (STATE_TYPE, RESTORE_TYPE) and c in FAILING for kind, c in kinds]
        passed = [m for m, f in zip(batch, fails, strict=True) if not f]
        failed = [m for m, f in zip(batch, fails, strict=True) if f]
        replies = list(super().send_and_receive(passed))
        return replies + [Message(Error(code=7, reason="disk full"), reply_to=m) for m in failed]


@pytest.fixture
def grid() -> ClientStateGrid:
    CountingGrid.sent = []
    FAILING.clear()
    return ClientStateGrid(CountingGrid(counter_app, CLIENTS), NODES, Recorder())


def train(grid: ClientStateGrid, steps: dict[int, int]) -> list[Message]:
    """One round: client c adds steps[c] to its counter."""
    node_of = {c: n for n, c in NODES.items()}
    messages = [
        Message(
            RecordDict({"config": ConfigRecord({"step": step})}),
            node_of[client],
            MessageType.TRAIN,
        )
        for client, step in steps.items()
    ]
    return list(grid.send_and_receive(messages))


def counters(states: dict[int, Any]) -> dict[int, int]:
    return {c: int(s["arrays"]["counter"]["calls"]) for c, s in states.items()}


def queried() -> list[int]:
    """The clients asked for their states since the last call, and forget them."""
    clients = [c for kind, c in CountingGrid.sent if kind == STATE_TYPE]
    CountingGrid.sent = []
    return clients


# ---- the ClientApp's half ------------------------------------------------------------------


@pytest.fixture
def server() -> None:
    """Messages made here are stamped as a ServerApp's (the in-process grid sets this too)."""
    TaskIdentity.run_id, TaskIdentity.task_id = 1, 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID


def context_holding(state: RecordDict) -> Context:
    return Context(
        run_id=1,
        node_id=FIRST_NODE_ID,
        node_config={"partition-id": 0, "num-partitions": 1},
        state=state,
        run_config={},
    )


@pytest.mark.usefixtures("server")
def test_the_state_query_replies_with_the_whole_state_and_restore_replaces_it() -> None:
    # Prepare: a client holding local entries, a workload state and a feature's record
    held = RecordDict(
        {
            fedsim.client_app.LOCAL: ArrayRecord({"bn.running_mean": torch.arange(3.0)}),
            fedsim.client_app.STATE: ArrayRecord({"calls": torch.tensor(4)}),
            "dp-history": ConfigRecord({"steps": [1, 2]}),
        }
    )
    context = context_holding(held)
    saved = RecordDict({fedsim.client_app.STATE: ArrayRecord({"calls": torch.tensor(9)})})

    # Execute
    reply = fedsim.client_app.client_app(Message(RecordDict(), FIRST_NODE_ID, STATE_TYPE), context)
    restored = fedsim.client_app.client_app(Message(saved, FIRST_NODE_ID, RESTORE_TYPE), context)

    # Assert: the reply is every record, as held; a restore leaves only what it brought
    assert not reply.has_error() and not restored.has_error()
    got, want = plain_record(reply.content), plain_record(held)
    assert got.keys() == want.keys() and got["configs"] == want["configs"]
    for key, arrays in want["arrays"].items():
        torch.testing.assert_close(got["arrays"][key], arrays, rtol=0, atol=0)
    assert list(context.state.keys()) == [fedsim.client_app.STATE]
    assert int(context.state.array_records[fedsim.client_app.STATE]["calls"].numpy()) == 9
    assert len(restored.content) == 0


@pytest.mark.usefixtures("server")
@pytest.mark.parametrize(
    ("work", "changed"),
    [
        (lambda state: state.__setitem__("x", ConfigRecord({"v": 1})), True),  # a new record
        (lambda state: state.__setitem__("kept", ConfigRecord({"v": 1})), True),  # replaced
        (lambda state: state.__delitem__("kept"), True),
        (lambda state: state.get("kept"), False),  # read only
    ],
)
def test_a_reply_says_whether_its_call_changed_the_clients_state(work: Any, changed: bool) -> None:
    # Prepare
    context = context_holding(RecordDict({"kept": ConfigRecord({"v": 1})}))

    def call(client: int, content: RecordDict, ctx: Context) -> RecordDict:
        work(ctx.state)
        return RecordDict({"metrics": MetricRecord({"client": client})})

    # Execute
    msg = Message(RecordDict(), FIRST_NODE_ID, MessageType.TRAIN)
    reply = fedsim.client_app._reply(msg, context, call)

    # Assert
    assert (CHANGED in reply.content) == changed
    assert "metrics" in reply.content


# ---- the server's half ---------------------------------------------------------------------


def test_a_checkpoint_asks_only_the_clients_whose_state_changed(grid: ClientStateGrid) -> None:
    # Execute and assert, round by round
    replies = train(grid, {0: 1, 2: 1})
    assert all(CHANGED not in r.content for r in replies)  # the mark is the grid's alone
    assert counters(grid.client_states(1)) == {0: 1, 2: 1}
    assert queried() == [0, 2]

    train(grid, {0: 1, 1: 0, 2: 0})  # only client 0 changes
    assert counters(grid.client_states(2)) == {0: 2, 2: 1}
    assert queried() == [0]

    assert counters(grid.client_states(3)) == {0: 2, 2: 1}  # nothing changed: no Message
    assert queried() == []


def test_clients_that_keep_nothing_cost_no_message(grid: ClientStateGrid) -> None:
    # Execute: every client trained, none changed its state
    train(grid, {0: 0, 1: 0, 2: 0})
    saved = grid.client_states(1)

    # Assert
    assert saved == {}
    assert queried() == []


def test_a_failed_state_query_keeps_the_last_saved_state_and_is_asked_again(
    grid: ClientStateGrid,
) -> None:
    # Prepare: client 1's state saved once, then changed, then its state query fails
    train(grid, {0: 1, 1: 1})
    grid.client_states(1)
    train(grid, {0: 1, 1: 1})
    FAILING.add(1)

    # Execute
    failed = grid.client_states(2)
    FAILING.clear()
    queried()
    again = grid.client_states(3)

    # Assert: the failure recorded, client 1's round-1 state kept, and asked for at the next
    recorder = grid.recorder
    assert isinstance(recorder, Recorder)
    assert counters(failed) == {0: 2, 1: 1}
    [event] = recorder.events
    assert event["event"] == "client_failed" and event["phase"] == STATE
    assert (event["round"], event["client"]) == (2, 1) and "disk full" in event["reason"]
    assert counters(again) == {0: 2, 1: 2}
    assert queried() == [1]


def test_a_client_whose_call_failed_is_asked_again_if_it_holds_a_state(
    grid: ClientStateGrid,
) -> None:
    # Prepare: client 0 holds a state, client 1 none
    train(grid, {0: 1})
    grid.client_states(1)
    queried()

    # Execute: both fail a call, which may have changed what they hold
    train(grid, {0: -1, 1: -1})
    saved = grid.client_states(2)

    # Assert
    assert queried() == [0]
    assert counters(saved) == {0: 1}


def test_restore_gives_each_client_its_saved_state(grid: ClientStateGrid) -> None:
    # Prepare: states saved by one run; a fresh grid, as a resumed run on new nodes has
    train(grid, {0: 2, 1: 3})
    saved = {c: plain_record(record_of(s)) for c, s in grid.client_states(1).items()}
    CountingGrid.sent = []
    fresh = ClientStateGrid(CountingGrid(counter_app, CLIENTS), NODES, Recorder())

    # Execute
    fresh.restore_client_states(saved)
    restored = fresh.client_states(2)
    later = train(fresh, {1: 1, 2: 1})  # client 1 first called after the resume

    # Assert: one restore Message per client with a state, then no query until a change
    assert [kind for kind, _ in CountingGrid.sent].count(RESTORE_TYPE) == 2
    assert counters(restored) == {0: 2, 1: 3}
    calls = {NODES[r.metadata.src_node_id]: r.content["metrics"]["calls"] for r in later}
    assert calls == {1: 4, 2: 1}
    assert counters(fresh.client_states(3)) == {0: 2, 1: 4, 2: 1}


def test_restore_refuses_a_client_that_does_not_take_its_state(grid: ClientStateGrid) -> None:
    # Prepare
    state = plain_record(RecordDict({"counter": ArrayRecord({"calls": torch.tensor(5)})}))
    FAILING.add(2)

    # Execute and assert: the run must not go on from states other than those saved
    with pytest.raises(RuntimeError, match="client 2: disk full"):
        grid.restore_client_states({0: state, 2: state})
