"""Sparse encodings of what travels in Messages."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import Tensor

from fedsim import wire
from fedsim.grid import InProcessGrid
from strategies.flower import PipelineStrategy, flatten
from strategies.pipeline import RoundInfo, stateless

pytestmark = pytest.mark.usefixtures("as_flower_task")


def vector_with(support: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.where(support, torch.randn(support.numel(), generator=g), 0.0)


@pytest.mark.parametrize(
    ("n", "k", "form"),
    [(1000, 10, wire.INDICES), (1000, 300, wire.BITMAP), (1000, 1000, wire.DENSE)],
)
def test_encoded_vectors_decode_exactly_in_the_cheapest_form(n: int, k: int, form: str) -> None:
    support = torch.zeros(n, dtype=torch.bool)
    support[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k]] = True
    vector = vector_with(support)
    record = wire.encode(vector, support)
    assert form in record
    decoded, got_support = wire.decode(record, n)
    assert torch.equal(decoded, vector)
    if form != wire.DENSE:
        assert got_support is not None and torch.equal(got_support, support)


def test_sparse_payload_bytes_by_hand() -> None:
    # 10 of 1000: float32 values (40 B) + uint16 indices (20 B), each with a 128-byte .npy header
    support = torch.zeros(1000, dtype=torch.bool)
    support[::100] = True
    record = wire.encode(vector_with(support), support)
    assert record[wire.INDICES].dtype == "uint16"
    assert wire.array_bytes(record) == (128 + 40) + (128 + 20)
    # 300 of 1000: values 1200 B + a 125-byte bitmap (1000 bits) beat 300 uint16 indices (600 B)
    support = torch.arange(1000) % 10 < 3
    assert wire.array_bytes(wire.encode(vector_with(support), support)) == (128 + 1200) + (
        128 + 125
    )
    # 990 of 1000: sparse would cost 3960 + 125 > 4000 dense bytes, so it goes dense...
    support = torch.arange(1000) % 100 != 0
    assert set(wire.encode(vector_with(support), support).keys()) == {wire.DENSE}
    # ...unless the receiver needs the positions (a mask)
    kept = wire.encode(vector_with(support), support, keep_support=True)
    assert set(kept.keys()) == {wire.VALUES, wire.BITMAP}


def test_server_sends_the_masked_model_and_the_client_recovers_model_and_mask() -> None:
    model = ArrayRecord(
        {
            "w": Array(np.array([[1.0, 0.0], [0.0, 4.0]], dtype=np.float32)),
            "b": Array(np.ones(2, dtype=np.float32)),
        }
    )
    mask = torch.tensor([True, False, False, True, True, True])
    msg = Message(
        RecordDict({"arrays": model, "config": ConfigRecord({})}),
        dst_node_id=1,
        message_type="train",
    )
    (sent,) = wire.send_masked([msg], mask)
    assert wire.ARRAYS not in sent.content.array_records
    received, got_mask = wire.received_model(sent.content, model)
    assert torch.equal(flatten(received), flatten(model))
    assert got_mask is not None and torch.equal(got_mask, mask)


def test_encoded_updates_are_decoded_as_updates_and_bad_ones_become_errors() -> None:
    base = ArrayRecord({"w": Array(np.array([1.0, 2.0, 3.0], dtype=np.float32))})
    request = Message(RecordDict({"arrays": base}), dst_node_id=1, message_type="train")
    delta = torch.tensor([0.0, 0.5, 0.0])
    good = Message(RecordDict({wire.DELTA: wire.encode(delta, delta != 0)}), reply_to=request)
    bad_record = ArrayRecord(
        {
            wire.VALUES: Array(np.ones(1, dtype=np.float32)),
            wire.INDICES: Array(np.array([7], dtype=np.uint8)),
        }
    )
    bad = Message(RecordDict({wire.DELTA: bad_record}), reply_to=request)
    decoded, failed = wire.receive_updates([good, bad], base)
    assert set(decoded.content.array_records) == {wire.UPDATE}  # the update, not a model
    assert flatten(decoded.content.array_records[wire.UPDATE]).tolist() == [0.0, 0.5, 0.0]
    assert failed.has_error() and "out of range" in failed.error.reason


def test_an_encoded_update_reaches_the_pipeline_bit_exactly() -> None:
    # Prepare: large weights, small sparse updates: in float32 (x + u) - x is not u
    g = torch.Generator().manual_seed(0)
    x = 1000 + 1000 * torch.rand(64, generator=g)
    sent = ArrayRecord({"w": Array(x.reshape(8, 8).numpy())})
    updates = [1e-3 * vector_with(torch.rand(64, generator=g) < 0.3) for _ in range(2)]
    assert not torch.equal((x + updates[0]) - x, updates[0])  # what a model round trip loses
    seen: list[Tensor] = []

    def capture(rows: Tensor, info: RoundInfo) -> Tensor:
        seen.append(rows.clone())
        return rows.mean(dim=0)

    strategy = PipelineStrategy(stateless(capture))
    requests = list(
        strategy.configure_train(1, sent, ConfigRecord(), InProcessGrid(ClientApp(), 2))
    )
    metrics = MetricRecord({"num-examples": 1})
    replies = [
        Message(RecordDict({wire.DELTA: wire.encode(u, u != 0), "metrics": metrics}), reply_to=r)
        for r, u in zip(requests, updates, strict=True)
    ]

    # Execute
    strategy.aggregate_train(1, wire.receive_updates(replies, sent))

    # Assert: the pipeline's rows are the clients' updates, bit for bit
    (rows,) = seen
    assert torch.equal(rows, torch.stack(updates))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int16", "int64", "bool"])
def test_decoded_tensors_equal_flowers_own_decoding(dtype: str) -> None:
    rng = np.random.default_rng(0)
    shapes = [(), (0,), (3,), (2, 5), (4, 3, 2)]
    arrays = {
        f"a{i}": Array(np.asarray(rng.standard_normal(shape) * 100).astype(dtype))
        for i, shape in enumerate(shapes)
    }
    arrays["fortran"] = Array(np.asfortranarray(np.arange(6.0).reshape(2, 3)).astype(dtype))
    record = ArrayRecord(arrays)

    decoded = wire.tensors(record)

    for name, reference in record.to_torch_state_dict().items():
        assert decoded[name].dtype == reference.dtype
        assert decoded[name].shape == reference.shape
        assert torch.equal(decoded[name], reference)


def test_a_record_is_decoded_once_until_an_array_of_it_changes() -> None:
    record = ArrayRecord({"w": Array(np.ones(3, np.float32))})
    first = wire.tensors(record)
    assert wire.tensors(record) is first  # the clients of a round share one decoding
    record["w"] = Array(np.zeros(3, np.float32))  # replaced: decoded again
    assert torch.equal(wire.tensors(record)["w"], torch.zeros(3))


def test_a_record_holds_the_bytes_flower_would_store() -> None:
    tensors = {
        "w": torch.randn(3, 4),
        "step": torch.zeros((), dtype=torch.int64),
        "empty": torch.ones(0),
        "mask": torch.tensor([True, False]),
        "half": torch.randn(2, 3, dtype=torch.float16),
    }

    # Twice (the second time from the cached headers), and with the shapes' other dtypes.
    other = {f"{k}_f64": v.double() for k, v in tensors.items()}
    for _ in range(2):
        ours, flowers = wire.record(tensors | other), ArrayRecord(tensors | other)

        for name in tensors | other:
            assert ours[name].data == flowers[name].data
            assert (ours[name].dtype, ours[name].shape) == (
                flowers[name].dtype,
                flowers[name].shape,
            )


@pytest.mark.parametrize("dtype", ["float32", ">f8", "float16", "int8", "uint16", "int64", "bool"])
def test_an_arrays_bytes_are_what_np_save_writes(dtype: str) -> None:
    # Shapes of every length and axis widths of every digit count: numpy pads the header to
    # 64 bytes and leaves room for the first axis to grow, both of which move with them.
    shapes = [(), (0,), (7,), (123,), (4, 3), (2, 1, 5), (1,) * 9, (10**6, 0), (0, 10**12)]
    for shape in shapes:
        a = np.zeros(shape, dtype=dtype)
        buffer = io.BytesIO()
        np.save(buffer, a)

        array = wire._array(a)

        assert array.data == buffer.getvalue(), shape
        assert array.numpy().dtype == a.dtype and array.numpy().shape == shape
