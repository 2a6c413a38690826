"""Availability schedules: exact patterns, frequencies within tolerance, determinism, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import strategies  # noqa: F401  (registers the schedules)
from fedsim.errors import UserError
from fedsim.registry import AVAILABILITY
from strategies.availability import Population


def population(n: int = 6, seed: int = 0, rounds: int = 50, classes: int = 10) -> Population:
    # client i holds only class i % classes (one class per client, as in the FedLaAvg paper)
    counts = np.zeros((n, classes), dtype=int)
    counts[np.arange(n), np.arange(n) % classes] = 10
    return Population(n, seed, rounds, counts)


def build(name: str, pop: Population, **params):  # type: ignore[no-untyped-def]
    return AVAILABILITY.build(name, **params)(pop)


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(",".join(map(str, row)) for row in rng.integers(0, 2, (6, 60))))
    return path


def params_for(name: str, trace_file: Path) -> dict[str, object]:
    return {"path": str(trace_file)} if name == "trace" else {}


@pytest.mark.parametrize("name", AVAILABILITY.names())
def test_every_schedule_is_a_pure_bool_mask_per_round(name: str, trace_file: Path) -> None:
    pop = population()
    first = build(name, pop, **params_for(name, trace_file))
    again = build(name, pop, **params_for(name, trace_file))
    forward = [first(r) for r in range(1, 31)]
    backward = [again(r) for r in reversed(range(1, 31))][::-1]  # out of order: same answers
    for mask, same in zip(forward, backward, strict=True):
        assert mask.shape == (6,) and mask.dtype == bool
        np.testing.assert_array_equal(mask, same)
    forward[0][:] = ~forward[0]  # a caller changing its mask changes nothing inside
    np.testing.assert_array_equal(first(1), again(1))


def test_always() -> None:
    assert build("always", population())(7).all()


def test_bernoulli_frequency_and_per_client_probabilities() -> None:
    pop = population(n=1000, rounds=200)
    masks = np.stack([build("bernoulli", pop, p=0.3)(r) for r in range(1, 201)])
    assert masks.mean() == pytest.approx(0.3, abs=0.01)  # 200k draws: sd ~ 0.001
    per_client = build("bernoulli", population(n=3), p=[0.0, 1.0, 0.5])
    masks = np.stack([per_client(r) for r in range(1, 401)])
    assert not masks[:, 0].any() and masks[:, 1].all()
    assert masks[:, 2].mean() == pytest.approx(0.5, abs=0.1)
    other_seed = build("bernoulli", population(n=1000, seed=1), p=0.3)(1)
    assert not np.array_equal(other_seed, build("bernoulli", pop, p=0.3)(1))


def test_bernoulli_errors() -> None:
    with pytest.raises(UserError, match="2 values for 3 clients"):
        build("bernoulli", population(n=3), p=[0.5, 0.5])
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        build("bernoulli", population(n=3), p=1.5)


def test_diurnal_pattern_is_exact() -> None:
    # E=4, alpha=0.5: period 6; group 0 (clients of classes 0-4) online in rounds 1-4, 7-10, ...
    online = build("diurnal", population(n=10), rounds_on=4, alpha=0.5)
    group0 = np.arange(10) < 5
    for r in range(1, 19):
        expected = group0 if (r - 1) % 6 < 4 else ~group0
        np.testing.assert_array_equal(online(r), expected, err_msg=f"round {r}")


def test_diurnal_random_grouping_splits_by_fraction() -> None:
    online = build("diurnal", population(n=10), grouping="random", fraction=0.3, rounds_on=2)
    assert online(1).sum() == 3 and online(3).sum() == 7
    np.testing.assert_array_equal(online(1), ~online(3))


def test_markov_stationary_share_and_transitions() -> None:
    pop = population(n=2000, rounds=100)
    online = build("markov", pop, p_on_to_off=0.1, p_off_to_on=0.3)
    masks = np.stack([online(r) for r in range(1, 101)])
    assert masks.mean() == pytest.approx(0.3 / 0.4, abs=0.01)
    was_on, now_on = masks[:-1], masks[1:]
    assert (was_on & ~now_on).sum() / was_on.sum() == pytest.approx(0.1, abs=0.01)
    assert (~was_on & now_on).sum() / (~was_on).sum() == pytest.approx(0.3, abs=0.02)


def test_trace_reads_rows_as_clients(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("1,0,1\n0,0,1\n")
    online = build("trace", population(n=2, rounds=3), path=str(path))
    assert [online(r).tolist() for r in (1, 2, 3)] == [[True, False], [False, False], [True, True]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,0,1\n", "1 rows, but the federation has 2 clients"),
        ("1,0\n0,1\n", "2 rounds (columns), but the scenario runs 3"),
        ("1,0,2\n0,1,1\n", "values must be 0 or 1"),
        ("1,0,1\n0,1\n", "same number of columns"),
    ],
)
def test_trace_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        build("trace", population(n=2, rounds=3), path=str(path))


def test_a_trace_path_is_read_from_the_scenario_files_folder(
    tiny, write_scenario, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from fedsim.scenario import load

    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "online.csv").write_text("1,0,1\n" * 4)
    tiny["clients"]["availability"] = {"name": "trace", "path": "traces/online.csv"}
    scenario = load(write_scenario(tiny))
    assert scenario.clients.availability.options["path"] == str(tmp_path / "traces" / "online.csv")
