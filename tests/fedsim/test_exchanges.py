"""What the server makes of a client's exchange report before any rule sees it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Error, Message, RecordDict

from fedsim import wire
from fedsim.exchanges import _problem

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
