"""A Message's bytes as Flower serialises it: counted from lengths, checked against Flower's own
deflation of every object in the Message's tree."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message import array as flower_array
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedsim import traffic

pytestmark = pytest.mark.usefixtures("as_flower_task")


def flower_bytes(msg: Message) -> int:
    """The reference: Flower serialises every object of the tree; objects with the same id (the
    SHA-256 of their content) are sent once; config records are left out."""
    objects: dict[str, int] = {}
    for record in msg.content.values():
        if not isinstance(record, ConfigRecord):
            for object_id, obj in get_all_nested_objects(record).items():
                objects[object_id] = len(obj.deflate())
    return sum(objects.values()) + len(msg.content.deflate())


def message(**records: object) -> Message:
    return Message(RecordDict(records), dst_node_id=1, message_type="train")


def arrays(**named: np.ndarray) -> ArrayRecord:
    return ArrayRecord({name: Array(a) for name, a in named.items()})


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 64 bytes, in Flower and in the count: many chunks from small arrays."""
    monkeypatch.setattr(flower_array, "FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", 64)
    monkeypatch.setattr(traffic, "CHUNK", 64)


@pytest.mark.usefixtures("small_chunks")
def test_the_count_equals_flowers_serialisation() -> None:
    rng = np.random.default_rng(0)
    cases = {
        "one array": message(arrays=arrays(w=rng.normal(size=(3, 4)).astype(np.float32))),
        "every dtype, 0-d, empty, non-ASCII names": message(
            arrays=arrays(
                **{
                    "f64": rng.normal(size=7),
                    "i8": np.arange(5, dtype=np.int8),
                    "u16": np.arange(40, dtype=np.uint16),
                    "bool": np.array([True, False]),
                    "scalar": np.array(3.5),
                    "empty": np.zeros((0, 3), np.float32),
                    "poids_é": np.ones(2, np.float32),
                }
            ),
            metrics=MetricRecord({"num-examples": 5, "loss": 0.25}),
            config=ConfigRecord({"scenario": "x" * 500}),
        ),
        # Equal chunks within an array and across arrays, equal arrays under two names, and
        # chunks that agree at their start, middle and end but differ elsewhere.
        "repeated content": message(
            a=arrays(z=np.zeros(200, np.float32), y=np.zeros(200, np.float32)),
            b=arrays(z=np.zeros(200, np.float32), w=np.tile(np.arange(16, dtype=np.float32), 9)),
            c=arrays(v=np.where(np.arange(64 * 6) % 128 == 20, 1, 0).astype(np.uint8)),
        ),
        "equal records under two names": message(
            m1=MetricRecord({"a": 1.0}), m2=MetricRecord({"a": 1.0}), c=ConfigRecord({"a": 1.0})
        ),
        "no records": message(),
    }
    for name, msg in cases.items():
        assert traffic.message_bytes(msg) == flower_bytes(msg), name


@pytest.mark.usefixtures("small_chunks")
def test_body_lengths_that_gain_a_digit_are_counted_exactly() -> None:
    # Chunk and body lengths cross 9 -> 10 and 99 -> 100 bytes, which lengthens each header.
    for n in range(0, 40):
        msg = message(arrays=arrays(w=np.arange(n, dtype=np.uint8)))
        assert traffic.message_bytes(msg) == flower_bytes(msg), n


def test_a_round_of_messages_sharing_a_model_counts_each_message_whole() -> None:
    model = arrays(w=np.ones((50, 50), np.float32), b=np.zeros(50, np.float32))
    sent = [message(arrays=model, config=ConfigRecord({"client": i})) for i in range(3)]
    replies = [message(update=arrays(w=np.full(9, i, np.float32))) for i in range(3)]
    assert traffic.bytes_each_way(sent, replies) == (
        sum(flower_bytes(m) for m in sent),
        sum(flower_bytes(m) for m in replies),
    )


def test_message_bytes_grow_by_exactly_the_added_payload() -> None:
    def reply(n: int) -> Message:
        return message(
            arrays=arrays(w=np.ones(n, dtype=np.float32)),
            metrics=MetricRecord({"num-examples": 5}),
        )

    # 300 → 400 float32 entries: chunk lengths 1328 → 1728 and shapes [300] → [400] keep their
    # digit counts, so every piece of Flower's framing keeps its size: 400 more bytes exactly.
    assert traffic.message_bytes(reply(400)) - traffic.message_bytes(reply(300)) == 400
    # The framing of one array record with one array and a metrics record is small and fixed.
    assert 0 < traffic.message_bytes(reply(300)) - (128 + 1200) < 1200


def test_config_records_are_not_counted() -> None:
    plain = message(arrays=arrays(w=np.ones(4, dtype=np.float32)))
    with_config = message(
        arrays=arrays(w=np.ones(4, dtype=np.float32)), config=ConfigRecord({"scenario": "x" * 5000})
    )
    # The record dict names one more child: ",<64-hex id>" in its header, whose body length
    # gains a digit (78 -> 156), and ', "config": "<id>"' in its JSON body; not the 5000 bytes.
    extra = traffic.message_bytes(with_config) - traffic.message_bytes(plain)
    assert extra == 65 + 1 + len(', "config": ""') + 64


def test_counting_leaves_a_message_as_it_was() -> None:
    # A worker pool pickles Messages after they were counted (Flower's own serialisation would
    # have cached unpicklable memoryviews on the arrays).
    msg = message(arrays=arrays(a=np.zeros(3, np.float32), b=np.zeros(3, np.float32)))
    before = pickle.dumps(msg)
    assert traffic.message_bytes(msg) > 0
    assert pickle.dumps(msg) == before
