"""Scenario parsing: defaults, overrides and one readable line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedsim.errors import ScenarioError
from fedsim.scenario import apply_override, load, parse

SCENARIOS = sorted(Path(__file__).parents[2].joinpath("scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_shipped_scenarios_validate(path: Path) -> None:
    scenario = load(path)
    assert scenario.name == path.stem


def test_defaults_are_filled_in_and_written_back(tiny) -> None:
    scenario = parse(tiny)
    dumped = yaml.safe_load(scenario.to_yaml())
    assert dumped["workload"]["epochs"] == 1  # a workload default
    assert dumped["strategy"]["aggregator"] == {"name": "mean", "weighted": True}
    assert dumped["strategy"]["server_opt"] == {
        "name": "sgd",
        "lr": 1.0,
        "momentum": 0.0,
        "decay": 1.0,
    }
    assert dumped["data"]["partition"] == {"name": "dirichlet", "alpha": 0.5, "min_size": 2}
    assert dumped["engine"] == "local"
    assert dumped["resources"]["workers"] == 1
    assert parse(dumped) == scenario  # the resolved form is a fixed point


def problems(raw) -> list[str]:
    with pytest.raises(ScenarioError) as err:
        parse(raw)
    return err.value.problems


def test_unknown_top_level_key(tiny) -> None:
    tiny["rounds_"] = 3
    assert problems(tiny) == ["rounds_: unknown key (not a parameter of this component)"]


def test_unknown_component_key_names_its_path(tiny) -> None:
    tiny["strategy"]["aggregator"]["F"] = 2
    assert problems(tiny) == [
        "strategy.aggregator.F: unknown key (not a parameter of this component)"
    ]


def test_unknown_name_suggests_the_closest(tiny) -> None:
    tiny["strategy"]["aggregator"]["name"] = "meen"
    (problem,) = problems(tiny)
    assert problem.startswith("strategy.aggregator.name: unknown aggregator 'meen'")
    assert "did you mean 'mean'?" in problem
    assert "available: bulyan, " in problem and ", mean, median," in problem


def test_every_problem_is_reported_at_once(tiny) -> None:
    tiny["workload"]["lr"] = -1
    tiny["data"]["partition"]["alpha"] = 0
    tiny["data"]["name"] = "digitz"
    found = problems(tiny)
    assert len(found) == 3
    assert any(p.startswith("workload.lr:") for p in found)
    assert any(p.startswith("data.partition.alpha:") for p in found)
    assert any(p.startswith("data.name: unknown dataset 'digitz'") for p in found)


def test_per_round_cannot_exceed_num(tiny) -> None:
    tiny["clients"] = {"num": 4, "per_round": 5}
    (problem,) = problems(tiny)
    assert problem.startswith("clients:") and "per_round (5) cannot exceed num (4)" in problem


def test_out_of_range_and_wrong_types(tiny) -> None:
    tiny["rounds"] = 0
    tiny["device"] = "tpu"
    found = problems(tiny)
    assert any(p.startswith("rounds: Input should be greater than or equal to 1") for p in found)
    assert any(p.startswith("device: Input should be 'auto', 'cpu' or 'cuda'") for p in found)


def test_missing_required_keys(tiny) -> None:
    del tiny["workload"]
    assert problems(tiny) == ["workload: Field required"]


def test_malformed_yaml_names_the_line(write_scenario) -> None:
    path = write_scenario("name: x\nrounds: [1, 2\nseed: 0\n")
    with pytest.raises(ScenarioError) as err:
        load(path)
    assert str(path) in str(err.value) and "line" in err.value.problems[0]


def test_empty_and_non_mapping_files(write_scenario) -> None:
    with pytest.raises(ScenarioError, match="empty"):
        load(write_scenario(""))
    with pytest.raises(ScenarioError, match="expected a mapping"):
        load(write_scenario("- a\n- b\n"))


def test_missing_file() -> None:
    with pytest.raises(ScenarioError, match="file not found"):
        load("no/such/scenario.yaml")


def test_overrides_parse_yaml_values(tiny, write_scenario) -> None:
    path = write_scenario(tiny)
    scenario = load(path, ["rounds=7", "workload.lr=0.5", "data.partition={name: iid}"])
    assert scenario.rounds == 7
    assert scenario.workload.options["lr"] == 0.5
    assert scenario.data.partition.name == "iid"


def test_override_leaving_a_stale_parameter_is_reported(tiny, write_scenario) -> None:
    path = write_scenario(tiny)
    with pytest.raises(ScenarioError, match=r"data\.partition\.alpha: unknown key"):
        load(path, ["data.partition.name=iid"])


def test_override_errors() -> None:
    with pytest.raises(ScenarioError, match=r"expected key\.path=value"):
        apply_override({}, "rounds")
    with pytest.raises(ScenarioError, match="rounds is not a mapping"):
        apply_override({"rounds": 3}, "rounds.x=1")
