"""Tests of PipelineStrategy, driven directly with hand-made reply Messages (no Ray, no app)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from torch import Tensor

from fedsim.grid import InProcessGrid
from fedsim.registry import STRATEGIES
from strategies.flower import (
    PipelineStrategy,
    flatten,
    pipeline_strategy,
    reply_update,
    unflatten,
    with_phase,
)
from strategies.pipeline import RoundInfo, Stage, stateless

pytestmark = pytest.mark.usefixtures("as_flower_task")

Arrays = dict[str, npt.NDArray[Any]]


class FakeGrid(InProcessGrid):
    """An in-process grid with chosen node ids; these tests hand replies to the strategy."""

    def __init__(self, node_ids: Sequence[int]) -> None:
        super().__init__(ClientApp(), num_nodes=0)
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)


class Recording:
    """A recorder that keeps every call, to assert on."""

    def __init__(self) -> None:
        self.client_metrics: list[tuple[int, str, int | None, dict[str, float]]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    def metrics(
        self, round: int, scope: str, client: int | None, values: Mapping[str, float]
    ) -> None:
        self.client_metrics.append((round, scope, client, dict(values)))

    def event(self, kind: str, **fields: Any) -> None:
        self.events.append((kind, fields))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [fields for k, fields in self.events if k == kind]


def record(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord({k: Array.from_numpy_ndarray(v) for k, v in arrays.items()})


def as_numpy(rec: ArrayRecord) -> Arrays:
    return {k: a.numpy() for k, a in rec.items()}


GLOBAL: Arrays = {
    "w": np.full((2, 2), 10.0, dtype=np.float32),
    "b": np.zeros(2, dtype=np.float32),
}
NODES = {101: 1, 102: 2, 103: 3}  # node id -> client id


def strategy(recorder: Recording, **options: Any) -> PipelineStrategy:
    """FedAvg (mean + sgd with lr 1) as the registry builds it."""
    make = STRATEGIES.build("fedavg")
    options.setdefault("client_ids", NODES)
    built: PipelineStrategy = make(recorder=recorder, **options)
    return built


def send(s: PipelineStrategy, server_round: int = 1) -> dict[int, Message]:
    """configure_train on a FakeGrid; the instructions by node id, each given a message id."""
    grid = FakeGrid(list(NODES))
    messages = list(
        s.configure_train(server_round, record(GLOBAL), ConfigRecord({"lr": 0.1}), grid)
    )
    for i, msg in enumerate(messages):
        msg.metadata.__dict__["_message_id"] = f"instruction-{server_round}-{i}"
    return {msg.metadata.dst_node_id: msg for msg in messages}


def reply(
    to: Message,
    arrays: Arrays | None = None,
    num_examples: int | None = None,
    **metrics: float,
) -> Message:
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = record(arrays)
    values: dict[str, Any] = dict(metrics)
    if num_examples is not None:
        values["num-examples"] = num_examples
    content["metrics"] = MetricRecord(values)
    return Message(content, reply_to=to)


def model(w: list[list[float]], b: list[float]) -> Arrays:
    return {"w": np.array(w, dtype=np.float32), "b": np.array(b, dtype=np.float32)}


M1 = model([[1, 2], [3, 4]], [1, 0])
M2 = model([[5, 6], [7, 8]], [-1, 4])
# Sample-weighted average of M1 (1 example) and M2 (3 examples), worked out by hand:
# w = (1*[[1, 2], [3, 4]] + 3*[[5, 6], [7, 8]]) / 4 = [[16, 20], [24, 28]] / 4
# b = (1*[1, 0] + 3*[-1, 4]) / 4 = [-2, 12] / 4
M12 = model([[4, 5], [6, 7]], [-0.5, 3])


def assert_arrays_close(got: ArrayRecord | None, expected: Arrays) -> None:
    assert got is not None
    assert list(got.keys()) == list(expected.keys())
    for key, value in as_numpy(got).items():
        assert value.dtype == expected[key].dtype
        np.testing.assert_allclose(value, expected[key], rtol=1e-6)


# ---- aggregate_train ----


def test_fedavg_gives_the_sample_weighted_average_of_the_client_models() -> None:
    # Prepare
    rec = Recording()
    s = strategy(rec)
    sent = send(s)
    replies = [
        reply(sent[101], M1, num_examples=1, loss=1.0),
        reply(sent[102], M2, num_examples=3, loss=3.0),
    ]

    # Execute
    arrays, metrics = s.aggregate_train(1, replies)

    # Assert
    assert_arrays_close(arrays, M12)
    assert metrics is not None
    assert metrics["clients"] == 2
    assert metrics["failures"] == 0
    assert metrics["num-examples"] == 4
    assert metrics["loss"] == pytest.approx((1 * 1.0 + 3 * 3.0) / 4)
    assert rec.of_kind("client_failed") == []


def test_the_pipeline_sees_deltas_in_client_order_whatever_the_arrival_order() -> None:
    # Prepare: a stage that keeps what it is given and steps by the first row
    seen: list[tuple[Tensor, RoundInfo]] = []

    def capture(updates: Tensor, info: RoundInfo) -> Tensor:
        seen.append((updates.clone(), info))
        return updates[0]

    s = PipelineStrategy(stateless(capture), client_ids=NODES)
    sent = send(s)
    m3 = model([[0, 0], [0, 0]], [7, 7])
    replies = [reply(sent[103], m3, 2), reply(sent[101], M1, 1), reply(sent[102], M2, 3)]

    # Execute
    arrays, _ = s.aggregate_train(1, replies)

    # Assert
    ((updates, info),) = seen
    assert info.round == 1
    assert info.client_ids == (1, 2, 3)
    assert torch.equal(info.num_examples, torch.tensor([1.0, 3.0, 2.0]))
    expected = torch.stack([flatten(record(m)) for m in (M1, M2, m3)]) - flatten(record(GLOBAL))
    assert torch.equal(updates, expected)  # rows are x_i - x, in client order
    assert_arrays_close(arrays, M1)  # global + first row


def test_pipeline_state_is_kept_across_rounds() -> None:
    # Prepare: FedAvgM, v <- 0.5 v + g, step = v
    make = STRATEGIES.build("fedavg", server_opt={"name": "sgd", "momentum": 0.5})
    s: PipelineStrategy = make(client_ids=NODES)
    target = model([[12, 12], [12, 12]], [2, 2])  # g = +2 everywhere, each round from GLOBAL

    # Execute
    steps = []
    for rnd in (1, 2):
        sent = send(s, rnd)
        arrays, _ = s.aggregate_train(rnd, [reply(sent[101], target, 5)])
        assert arrays is not None
        steps.append(as_numpy(arrays)["b"] - GLOBAL["b"])

    # Assert: v1 = 2, v2 = 0.5 * 2 + 2 = 3
    np.testing.assert_allclose(steps[0], [2.0, 2.0])
    np.testing.assert_allclose(steps[1], [3.0, 3.0])


def test_the_update_matrix_is_reused_unless_a_rule_keeps_rows_of_it() -> None:
    # Prepare: a rule that steps by last round's first row, kept as a view in its state
    def step_by_last_first_row(updates: Tensor, kept: Any, info: RoundInfo) -> tuple[Tensor, Any]:
        return (kept if kept is not None else torch.zeros_like(updates[0])), updates[0]

    keeping = PipelineStrategy(Stage(lambda d: None, step_by_last_first_row), client_ids=NODES)
    averaging = PipelineStrategy(stateless(lambda u, info: u.mean(0)), client_ids=NODES)
    targets = [model([[11, 11], [11, 11]], [1, 1]), model([[15, 15], [15, 15]], [5, 5])]

    # Execute: two rounds from the same global model, other updates in the second
    steps, matrices = [], []
    for rnd, target in enumerate(targets, start=1):
        for s in (keeping, averaging):
            sent = send(s, rnd)
            arrays, _ = s.aggregate_train(rnd, [reply(sent[101], target, 5)])
            assert arrays is not None
            if s is keeping:
                steps.append(as_numpy(arrays)["b"] - GLOBAL["b"])
            else:
                matrices.append(s._rows)

    # Assert: round 2 steps by round 1's row (+1), not by the row written over it (+5)
    np.testing.assert_allclose(steps[1], [1.0, 1.0])
    assert matrices[0] is matrices[1]  # the rows nobody kept were written over


def test_a_large_update_matrix_is_not_kept_between_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_strategy, "KEEP_ROWS_BYTES", 4 * 6 - 1)  # one 6-entry row: large
    s = PipelineStrategy(stateless(lambda u, info: u.mean(0)), client_ids=NODES)
    sent = send(s)
    arrays, _ = s.aggregate_train(1, [reply(sent[101], M1, 5)])
    assert arrays is not None
    assert s._rows is None


def bad_error(to: Message) -> Message:
    return Message(Error(code=7, reason="client crashed: boom"), reply_to=to)


def bad_nan(to: Message) -> Message:
    return reply(to, model([[1, np.nan], [3, 4]], [1, 0]), num_examples=5)


def bad_shape(to: Message) -> Message:
    return reply(to, {"w": np.ones((2, 3), dtype=np.float32), "b": M1["b"]}, num_examples=5)


def bad_count(to: Message) -> Message:
    return reply(to, M1, num_examples=None, loss=0.5)


def negative_count(to: Message) -> Message:
    return reply(to, M1, num_examples=-1, loss=0.5)


@pytest.mark.parametrize(
    ("make_bad", "says"),
    [
        (bad_error, "boom"),
        (bad_nan, "NaN"),
        (bad_shape, "shape"),
        (bad_count, "num-examples"),
        (negative_count, "count >= 0"),
    ],
    ids=["error", "nan", "shape", "no-num-examples", "negative-num-examples"],
)
def test_a_bad_reply_is_left_out_reported_and_counted(make_bad: Any, says: str) -> None:
    # Prepare
    rec = Recording()
    s = strategy(rec)
    sent = send(s, server_round=2)
    replies = [
        reply(sent[101], M1, num_examples=1),
        make_bad(sent[103]),
        reply(sent[102], M2, num_examples=3),
    ]

    # Execute
    arrays, metrics = s.aggregate_train(2, replies)

    # Assert
    assert_arrays_close(arrays, M12)  # the other two still aggregate, as if alone
    assert metrics is not None
    assert metrics["failures"] == 1
    assert metrics["clients"] == 2
    failed = rec.of_kind("client_failed")
    assert len(failed) == 1
    assert failed[0]["client"] == 3  # the client id of node 103, not the node id
    assert failed[0]["round"] == 2
    assert says in failed[0]["reason"]
    assert {client for _, _, client, _ in rec.client_metrics} == {1, 2}


def test_a_round_where_every_reply_fails_is_skipped() -> None:
    # Prepare
    rec = Recording()
    s = strategy(rec)
    sent = send(s, server_round=3)
    replies = [bad_error(sent[101]), bad_nan(sent[102]), bad_count(sent[103])]

    # Execute
    arrays, metrics = s.aggregate_train(3, replies)

    # Assert
    assert arrays is None
    assert metrics is not None
    assert metrics["failures"] == 3
    assert metrics["clients"] == 0
    assert sorted(f["client"] for f in rec.of_kind("client_failed")) == [1, 2, 3]
    assert [f["round"] for f in rec.of_kind("round_skipped")] == [3]


def test_a_reply_that_trained_on_nothing_abstains_without_failing() -> None:
    # Prepare: client 3 trained on no sample (num-examples 0), its model unchanged
    rec = Recording()
    s = strategy(rec)
    sent = send(s, server_round=2)
    replies = [
        reply(sent[101], M1, num_examples=1),
        reply(sent[103], GLOBAL, num_examples=0),
        reply(sent[102], M2, num_examples=3),
    ]

    # Execute
    arrays, metrics = s.aggregate_train(2, replies)

    # Assert: the others' average, as if client 3 had not been sampled; not a failure
    assert_arrays_close(arrays, M12)
    assert metrics is not None
    assert (metrics["clients"], metrics["failures"], metrics["abstained"]) == (2, 0, 1)
    assert rec.of_kind("client_failed") == []


def test_a_round_where_every_client_abstains_is_skipped() -> None:
    rec = Recording()
    s = strategy(rec)
    sent = send(s, server_round=4)
    replies = [reply(sent[n], GLOBAL, num_examples=0) for n in (101, 102, 103)]

    arrays, metrics = s.aggregate_train(4, replies)

    assert arrays is None
    assert metrics is not None and metrics["failures"] == 0
    assert [f["reason"] for f in rec.of_kind("round_skipped")] == ["every client abstained"]


def test_aggregate_train_before_configure_train_is_an_error() -> None:
    # Prepare
    s = strategy(Recording())

    # Execute / Assert
    with pytest.raises(RuntimeError, match="configure_train"):
        s.aggregate_train(1, [])


def test_per_client_metrics_are_recorded_under_the_client_id() -> None:
    # Prepare
    rec = Recording()
    s = strategy(rec)
    sent = send(s, server_round=4)
    replies = [
        reply(sent[102], M2, num_examples=3, loss=0.25, acc=0.5),
        reply(sent[101], M1, num_examples=1, loss=0.75, acc=1.0),
    ]

    # Execute
    s.aggregate_train(4, replies)

    # Assert: names carry the phase; Flower's num-examples is recorded as examples
    assert sorted(rec.client_metrics, key=lambda m: m[2] or 0) == [
        (4, "client", 1, {"train_loss": 0.75, "train_acc": 1.0, "train_examples": 1.0}),
        (4, "client", 2, {"train_loss": 0.25, "train_acc": 0.5, "train_examples": 3.0}),
    ]


def test_a_list_valued_metric_does_not_break_aggregation() -> None:
    # Prepare
    rec = Recording()
    s = strategy(rec)
    sent = send(s)
    content = RecordDict(
        {
            "arrays": record(M1),
            "metrics": MetricRecord({"num-examples": 1, "loss": 0.5, "per_class": [0.1, 0.9]}),
        }
    )

    # Execute
    arrays, metrics = s.aggregate_train(1, [Message(content, reply_to=sent[101])])

    # Assert
    assert_arrays_close(arrays, M1)
    assert metrics is not None and metrics["failures"] == 0
    assert rec.client_metrics == [(1, "client", 1, {"train_loss": 0.5, "train_examples": 1.0})]


# ---- configure_train / sampling ----


def sampled(s: PipelineStrategy, node_ids: Sequence[int], server_round: int) -> set[int]:
    messages = s.configure_train(server_round, record(GLOBAL), ConfigRecord(), FakeGrid(node_ids))
    nodes = [m.metadata.dst_node_id for m in messages]
    assert len(nodes) == len(set(nodes))  # distinct
    return set(nodes)


def test_configure_train_sends_the_global_model_without_touching_the_callers_config() -> None:
    # Prepare
    s = strategy(Recording())
    config = ConfigRecord({"lr": 0.1, "epochs": 2})
    arrays = record(GLOBAL)

    # Execute
    messages = list(s.configure_train(5, arrays, config, FakeGrid(list(NODES))))

    # Assert
    assert dict(config) == {"lr": 0.1, "epochs": 2}
    assert sorted(m.metadata.dst_node_id for m in messages) == sorted(NODES)
    for msg in messages:
        assert msg.metadata.message_type == MessageType.TRAIN
        assert msg.metadata.group_id == "5"  # the round, as Flower's own strategies set it
        assert dict(msg.content["config"]) == {"lr": 0.1, "epochs": 2, "server-round": 5}
        for key, value in as_numpy(msg.content.array_records["arrays"]).items():
            np.testing.assert_array_equal(value, GLOBAL[key])


def test_per_round_none_samples_every_node() -> None:
    # Prepare
    s = strategy(Recording(), per_round=None)

    # Execute / Assert
    assert sampled(s, list(range(20)), server_round=1) == set(range(20))


def test_sampling_picks_k_distinct_nodes_whatever_the_order_of_the_node_ids() -> None:
    # Prepare: node ids are fresh random numbers; client ids are what stays the same
    clients = range(10)
    rng = np.random.default_rng(0)
    nodes_a = [int(x) for x in rng.choice(10**9, size=10, replace=False)]
    nodes_b = [int(x) for x in rng.choice(10**9, size=10, replace=False)]
    s_a = strategy(
        Recording(), per_round=3, seed=7, client_ids=dict(zip(nodes_a, clients, strict=True))
    )
    s_b = strategy(
        Recording(), per_round=3, seed=7, client_ids=dict(zip(nodes_b, clients, strict=True))
    )

    # Execute
    picked_a = sampled(s_a, nodes_a, server_round=2)
    picked_b = sampled(s_b, list(reversed(nodes_b)), server_round=2)

    # Assert
    assert len(picked_a) == 3
    assert {s_a.client_ids[n] for n in picked_a} == {s_b.client_ids[n] for n in picked_b}


def test_sampling_is_repeatable_and_changes_across_rounds() -> None:
    # Prepare
    nodes = list(range(500, 520))
    s = strategy(Recording(), per_round=4, seed=3, client_ids={n: n - 500 for n in nodes})

    # Execute
    by_round = [frozenset(sampled(s, nodes, r)) for r in range(1, 7)]
    again = [frozenset(sampled(s, list(reversed(nodes)), r)) for r in range(1, 7)]

    # Assert
    assert by_round == again
    assert all(len(picked) == 4 for picked in by_round)
    assert len(set(by_round)) > 1


def test_a_different_seed_samples_differently() -> None:
    # Prepare
    nodes = list(range(20))
    picks = {
        seed: [
            frozenset(sampled(strategy(Recording(), per_round=4, seed=seed), nodes, r))
            for r in range(1, 4)
        ]
        for seed in (0, 1)
    }

    # Assert
    assert picks[0] != picks[1]


# ---- configure_evaluate / aggregate_evaluate ----


def test_fraction_evaluate_zero_sends_no_messages() -> None:
    # Prepare
    s = strategy(Recording(), fraction_evaluate=0.0)

    # Execute
    messages = list(s.configure_evaluate(1, record(GLOBAL), ConfigRecord(), FakeGrid(range(10))))

    # Assert
    assert messages == []


def test_fraction_evaluate_half_of_ten_nodes_sends_five_evaluate_messages() -> None:
    # Prepare
    s = strategy(Recording(), fraction_evaluate=0.5)
    config = ConfigRecord({"batch": 32})

    # Execute
    messages = list(s.configure_evaluate(2, record(GLOBAL), config, FakeGrid(range(10))))

    # Assert
    assert len({m.metadata.dst_node_id for m in messages}) == 5
    assert all(m.metadata.message_type == MessageType.EVALUATE for m in messages)
    assert all(dict(m.content["config"]) == {"batch": 32, "server-round": 2} for m in messages)
    assert dict(config) == {"batch": 32}


def test_aggregate_evaluate_weights_metrics_and_reports_failures() -> None:
    # Prepare
    rec = Recording()
    s = strategy(rec)
    grid = FakeGrid(list(NODES))
    sent = list(s.configure_evaluate(1, record(GLOBAL), ConfigRecord(), grid))
    for i, msg in enumerate(sent):
        msg.metadata.__dict__["_message_id"] = f"evaluate-{i}"
    by_node = {m.metadata.dst_node_id: m for m in sent}
    replies = [
        reply(by_node[101], num_examples=10, accuracy=0.2),
        reply(by_node[102], num_examples=30, accuracy=0.6),
        bad_error(by_node[103]),
    ]

    # Execute
    metrics = s.aggregate_evaluate(1, replies)

    # Assert
    assert metrics is not None
    assert metrics["accuracy"] == pytest.approx((10 * 0.2 + 30 * 0.6) / 40)
    assert metrics["clients"] == 2 and metrics["failures"] == 1
    assert [(f["client"], f["phase"]) for f in rec.of_kind("client_failed")] == [(3, "eval")]
    assert [m[2:] for m in rec.client_metrics] == [
        (1, {"eval_accuracy": 0.2, "eval_examples": 10.0}),
        (2, {"eval_accuracy": 0.6, "eval_examples": 30.0}),
    ]


def test_with_phase_names_metrics_once() -> None:
    values = {"loss": 1.0, "train_acc": 0.5, "num-examples": 5, "per_class": [0.1], "ok": True}
    assert with_phase(values, "train") == {  # lists and booleans are not metrics to average
        "train_loss": 1.0,
        "train_acc": 0.5,  # already prefixed: kept as it is
        "train_examples": 5.0,
    }


# ---- flatten / unflatten ----


def test_flatten_then_unflatten_keeps_names_shapes_dtypes_and_values() -> None:
    # Prepare
    arrays: Arrays = {
        "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 8,
        "conv.bias": np.array([0.5, -1.5], dtype=np.float64),
        "bn.num_batches_tracked": np.array(17, dtype=np.int64),
        "fc.weight": np.array([[1.0, -2.0, 3.0]], dtype=np.float32),
    }
    template = record(arrays)

    # Execute
    flat = flatten(template)
    back = unflatten(flat, template)

    # Assert
    assert flat.shape == (24 + 2 + 1 + 3,)
    assert list(back.keys()) == list(arrays.keys())
    for key, value in as_numpy(back).items():
        assert value.shape == arrays[key].shape
        assert value.dtype == arrays[key].dtype
        np.testing.assert_array_equal(value, arrays[key])


def test_a_replys_update_is_its_model_minus_the_global_one_in_float32() -> None:
    rng = np.random.default_rng(0)
    model = {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "v": rng.normal(size=5),  # float64: cast to float32, then subtracted
        "n": np.arange(3, dtype=np.int64),
    }
    sent = ArrayRecord({k: Array(v) for k, v in model.items()})
    global_flat = torch.from_numpy(rng.normal(size=20).astype(np.float32))
    reply = Message(RecordDict({"arrays": sent}), dst_node_id=1, message_type="train")

    expected = flatten(sent) - global_flat  # the copy, then the subtraction
    into = torch.full((20,), np.nan)
    assert torch.equal(reply_update(reply, global_flat), expected)
    assert reply_update(reply, global_flat, out=into) is into
    assert torch.equal(into, expected)
