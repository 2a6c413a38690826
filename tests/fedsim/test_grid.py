"""The local engine's grid: scheduling, client state, and the worker pool's equal results."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim import results
from fedsim.app import identify_clients
from fedsim.client_app import client_app, runtime
from fedsim.engine import run_local
from fedsim.grid import FIRST_NODE_ID, InProcessGrid, schedule
from fedsim.scenario import parse

counting_app = ClientApp()


@counting_app.train()
def count(msg: Message, context: Context) -> Message:
    """Counts its calls in context.state; replies with the count and its partition."""
    seen = context.state.metric_records.get("seen", MetricRecord({"calls": 0}))
    calls = int(seen["calls"]) + 1  # type: ignore[call-overload]
    context.state["seen"] = MetricRecord({"calls": calls})
    partition = int(context.node_config["partition-id"])
    return Message(
        RecordDict({"metrics": MetricRecord({"calls": calls, "partition": partition})}),
        reply_to=msg,
    )


dying_app = ClientApp()


@dying_app.train()
def die_on_partition_2(msg: Message, context: Context) -> Message:
    """Answers as counting_app does, but the process serving partition 2 exits at once."""
    if int(context.node_config["partition-id"]) == 2:
        os._exit(3)
    return count(msg, context)


slow_first_app = ClientApp()


@slow_first_app.train()
def slow_on_partition_0(msg: Message, context: Context) -> Message:
    """Takes 1 s for partition 0 and 0.02 s for any other; replies with the serving process."""
    time.sleep(1.0 if int(context.node_config["partition-id"]) == 0 else 0.02)
    return Message(RecordDict({"metrics": MetricRecord({"pid": os.getpid()})}), reply_to=msg)


def train_all(grid: InProcessGrid, nodes: list[int]) -> dict[int, int]:
    messages = [
        Message(
            RecordDict({"config": ConfigRecord()}), dst_node_id=n, message_type=MessageType.TRAIN
        )
        for n in nodes
    ]
    replies = grid.send_and_receive(messages)
    return {
        int(r.content["metrics"]["partition"]): int(r.content["metrics"]["calls"])  # type: ignore[call-overload]
        for r in replies
    }


def test_schedule_gives_the_heaviest_job_to_the_least_loaded_worker() -> None:
    # by hand, job(cost): 1(5)→w0, 3(4)→w1, 0(3)→w1 (4<5), 4(3)→w0 (5<7), 2(1)→w1 (7<8)
    assert schedule([3, 5, 1, 4, 3], workers=2) == [[1, 4], [3, 0, 2]]
    assert schedule([1, 1, 1], workers=1) == [[0, 1, 2]]
    assert schedule([], workers=3) == [[], [], []]


def test_client_state_persists_in_process() -> None:
    grid = InProcessGrid(counting_app, num_nodes=3)
    first = train_all(grid, [FIRST_NODE_ID + 0, FIRST_NODE_ID + 2])
    second = train_all(grid, list(grid.get_node_ids()))
    assert first == {0: 1, 2: 1}
    assert second == {0: 2, 1: 1, 2: 2}
    assert set(grid.client_states()) == {0, 1, 2}


@pytest.mark.parametrize("fork", [False, True], ids=["spawned", "forked"])
def test_client_state_persists_across_worker_processes(fork: bool) -> None:
    grid = InProcessGrid(
        "tests.fedsim.test_grid:counting_app",
        num_nodes=4,
        workers=2,
        costs=[4, 3, 2, 1],
        fork=fork,
    )
    try:
        rounds = [train_all(grid, list(grid.get_node_ids())) for _ in range(3)]
    finally:
        grid.close()
    assert rounds[-1] == {0: 3, 1: 3, 2: 3, 3: 3}


def test_a_free_worker_takes_the_next_client_while_another_is_busy() -> None:
    # Equal costs: a schedule fixed in advance would give each worker 5 of the 10 clients,
    # and the round would wait 1 s + 4 x 0.02 s for the worker with the slow client.
    grid = InProcessGrid(
        "tests.fedsim.test_grid:slow_first_app", num_nodes=10, workers=2, costs=[1] * 10, fork=True
    )
    messages = [
        Message(RecordDict(), dst_node_id=n, message_type=MessageType.TRAIN)
        for n in grid.get_node_ids()
    ]
    try:
        replies = list(grid.send_and_receive(messages))
    finally:
        grid.close()
    served_by = [int(r.content["metrics"]["pid"]) for r in replies]  # type: ignore[call-overload]
    assert [r.metadata.src_node_id for r in replies] == [m.metadata.dst_node_id for m in messages]
    assert served_by.count(served_by[0]) == 1  # the slow client's worker served it alone


def test_a_worker_that_dies_is_named_with_its_exit_code() -> None:
    grid = InProcessGrid(
        "tests.fedsim.test_grid:dying_app", num_nodes=4, workers=2, costs=[4, 3, 2, 1], fork=True
    )
    try:
        with pytest.raises(RuntimeError, match=r"worker process \d+ died \(exit code 3\)"):
            train_all(grid, list(grid.get_node_ids()))
    finally:
        grid.close()


def test_worker_pool_gives_the_in_process_results(tiny, tmp_path) -> None:
    def run(workers: int) -> pd.DataFrame:
        scenario = parse({**tiny, "resources": {"workers": workers}})
        out = tmp_path / f"workers{workers}"
        results.prepare(out, scenario, command="test")
        run_local(scenario, out, show_progress=False)
        metrics = pd.read_csv(out / "metrics.csv")
        return metrics[~metrics.metric.str.endswith("_time_s")].reset_index(drop=True)

    pd.testing.assert_frame_equal(run(2), run(1))


def test_the_first_query_gets_each_client_process_ready_for_the_run(tiny) -> None:
    scenario = parse(tiny)
    num = scenario.clients.num
    runtime.cache_clear()

    ids = identify_clients(
        InProcessGrid(client_app, num), num, ConfigRecord({"scenario": scenario.to_yaml()})
    )

    assert sorted(ids.values()) == list(range(num))
    assert runtime.cache_info().currsize == 1  # built at start-up, not in round 1


def test_a_client_that_cannot_get_ready_still_answers_the_query(tiny) -> None:
    num = parse(tiny).clients.num
    runtime.cache_clear()
    unusable = ConfigRecord({"scenario": "data: {name: no_such_dataset}"})

    ids = identify_clients(InProcessGrid(client_app, num), num, unusable)

    # round 1's Messages meet the problem again and report it as client failures
    assert sorted(ids.values()) == list(range(num))
    assert runtime.cache_info().currsize == 0
