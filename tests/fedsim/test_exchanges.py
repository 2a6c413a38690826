"""What the server makes of a client's exchange report before any rule sees it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict

from fedsim import wire
from fedsim.exchanges import Exchanges, _problem

pytestmark = pytest.mark.usefixtures("as_flower_task")


def reply(**tensors: torch.Tensor) -> Message:
    content = RecordDict({wire.REPORT: wire.record(tensors)})
    return Message(content, dst_node_id=1, message_type="query")


def test_a_finite_report_is_decoded_exactly() -> None:
    sent = {"levels": torch.tensor([0.5, 2.0]), "rows": torch.tensor([[1, 2]], dtype=torch.int16)}
    reason, report = _problem(reply(**sent))
    assert reason is None
    assert report.keys() == sent.keys()
    assert all(torch.equal(report[k], v) and report[k].dtype == v.dtype for k, v in sent.items())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_a_report_holding_nan_or_inf_is_refused_by_name(bad: float, dtype: torch.dtype) -> None:
    reason, report = _problem(reply(ok=torch.ones(2), levels=torch.tensor([1.0, bad], dtype=dtype)))
    assert reason == "report 'levels' contains NaN or Inf"
    assert report == {}


def test_an_error_or_a_missing_report_is_a_reason() -> None:
    sent = Message(RecordDict(), dst_node_id=1, message_type="query")
    assert _problem(Message(Error(code=1, reason="boom"), reply_to=sent))[0] == "boom"
    assert _problem(sent)[0] == f"reply has no ArrayRecord {wire.REPORT!r}"


# ---- how far a broadcast travels ------------------------------------------------------------


class Echo:
    """An exchange whose clients report one value and whose reduce broadcasts it."""

    everyone = True

    def __init__(self, name: str, round_only: bool) -> None:
        self.name, self.round_only = name, round_only

    def reduce(self, reports: Any, memory: Any, aggregate: Any, rnd: int) -> Any:
        return {"v": torch.tensor([float(rnd)])}, None, {}


class Recorder:
    def __init__(self) -> None:
        self.received: list[set[str]] = []  # per Message sent: the broadcasts it carried

    def send_and_receive(self, messages: Any) -> list[Message]:
        replies = []
        for msg in messages:
            self.received.append({k for k in msg.content if k.startswith(wire.RECEIVED)})
            report = RecordDict({wire.REPORT: wire.record({"x": torch.ones(1)})})
            replies.append(Message(report, reply_to=msg))
        return replies

    def event(self, *args: Any, **kwargs: Any) -> None: ...

    def metrics(self, *args: Any, **kwargs: Any) -> None: ...


def test_a_round_only_broadcast_reaches_the_rounds_later_exchanges_and_nothing_else() -> None:
    # Prepare: an exchange whose broadcast is for the round (edges), then one for the run
    recorder = Recorder()

    def server_side() -> Exchanges:
        both = [Echo("edges", round_only=True), Echo("kept", round_only=False)]
        return Exchanges(both, recorder, sizes=[1], client_ids={7: 0})  # type: ignore[arg-type]

    exchanges = server_side()
    model = wire.record({"w": torch.zeros(2)})

    def training_message() -> set[str]:
        msg = Message(RecordDict(), dst_node_id=7, message_type=MessageType.TRAIN)
        return {k for k in exchanges.carry([msg])[0].content if k.startswith(wire.RECEIVED)}

    # Execute: two rounds, and a resume from the checkpointed state
    exchanges.run(1, recorder, model, ConfigRecord(), None, None)  # type: ignore[arg-type]
    after_round = training_message()
    exchanges.run(2, recorder, model, ConfigRecord(), None, None)  # type: ignore[arg-type]
    resumed = server_side()
    resumed.load_state_dict(exchanges.state_dict())
    exchanges = resumed

    # Assert: within a round the second exchange saw the first's edges; no training Message
    # or central evaluation after it does, before or after a resume; the other one travels on
    kept, edges = wire.RECEIVED + "kept", wire.RECEIVED + "edges"
    assert recorder.received == [set(), {edges}, {kept}, {kept, edges}]
    assert after_round == training_message() == {kept}
    assert set(resumed.received(torch.device("cpu"))) == {"kept"}
