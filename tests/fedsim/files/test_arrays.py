"""Tests of the ``arrays`` dataset, the ``natural`` partition of its client ids, relative paths,
and one run of a .npz dataset with a model other than the default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.data import federate
from fedsim.errors import ScenarioError, UserError
from fedsim.files.arrays import ArraysParams, arrays
from fedsim.files.checks import checked_dataset
from fedsim.registry import Component
from fedsim.scenario import parse
from tests.fedsim.files.conftest import tiny_arrays


def scenario(path: str, **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "arrays",
        "rounds": 2,
        "data": {"name": "arrays", "path": path},
        "clients": {"num": 3, "per_round": 3},
        "workload": {"name": "classification"},
    }
    return {**raw, **changes}


def test_float32_inputs_are_taken_as_they_are_not_copied() -> None:
    # Prepare: arrays as np.load gives them, float32 inputs and float64 ones
    loaded = tiny_arrays()
    loaded["x_train"] = loaded["x_train"].astype(np.float32)
    loaded["x_test"] = loaded["x_test"].astype(np.float64)

    # Execute
    d = checked_dataset("arrays", Path("here"), loaded, None, standardize=False)

    # Assert: the float32 rows are the arrays given; the float64 ones converted
    assert np.shares_memory(d.x_train.numpy(), loaded["x_train"])
    assert d.x_test.dtype == torch.float32
    np.testing.assert_array_equal(d.x_test.numpy(), loaded["x_test"].astype(np.float32))


def test_arrays_known_answer(npz) -> None:  # type: ignore[no-untyped-def]
    # Prepare: float labels that are whole numbers are labels
    expected = tiny_arrays()
    path = npz(y_test=expected["y_test"].astype(np.float64))

    # Execute
    d = arrays(ArraysParams(path=str(path)))

    # Assert
    assert (d.name, d.num_classes, d.input_shape, d.client_train) == ("arrays", 3, (1, 2, 2), None)
    assert d.x_train.dtype == torch.float32 and d.y_test.dtype == torch.int64
    np.testing.assert_array_equal(d.x_train.numpy(), expected["x_train"])
    np.testing.assert_array_equal(d.x_test.numpy(), expected["x_test"])
    assert d.y_train.tolist() == [0, 1, 2] * 4 and d.y_test.tolist() == [0, 1, 2] * 2


def test_a_folder_of_npy_files_standardized_and_declared_classes(tmp_path: Path) -> None:
    # Prepare: feature vectors given as plain vectors (N,), one feature each
    folder = tmp_path / "arrays"
    folder.mkdir()
    for key, value in {
        "x_train": np.array([1.0, 3.0, 5.0, 7.0]),
        "y_train": np.array([0, 1, 0, 1]),
        "x_test": np.array([4.0, 8.0]),
        "y_test": np.array([1, 0]),
    }.items():
        np.save(folder / f"{key}.npy", value)

    # Execute
    d = arrays(ArraysParams(path=str(folder), num_classes=5, standardize=True))

    # Assert: mean 4, std sqrt(5) over the training rows
    assert d.num_classes == 5 and d.input_shape == (1,)
    s = np.sqrt(5.0)
    np.testing.assert_allclose(d.x_train[:, 0].numpy(), [-3 / s, -1 / s, 1 / s, 3 / s], rtol=1e-6)
    np.testing.assert_allclose(d.x_test[:, 0].numpy(), [0.0, 4 / s], rtol=1e-6, atol=1e-7)


def test_client_train_numbers_clients_by_sorted_id_and_natural_splits_by_them(npz) -> None:  # type: ignore[no-untyped-def]
    # Prepare: 12 rows from three writers
    writers = np.array(["bo", "al", "cy", "al"] * 3)
    d = arrays(ArraysParams(path=str(npz(client_train=writers))))

    # Execute
    fed = federate(d, Component(name="natural"), num_clients=3, seed=0, val_fraction=0.0)

    # Assert: al, bo, cy
    assert d.client_train is not None and d.client_train.tolist() == [1, 0, 2, 0] * 3
    assert [t.tolist() for t in fed.train] == [[1, 3, 5, 7, 9, 11], [0, 4, 8], [2, 6, 10]]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"y_test": None}, "has no y_test (it holds x_test, x_train, y_train); it needs"),
        ({"y_train": np.zeros(11, dtype=int)}, "x_train has 12 rows but y_train has 11"),
        ({"y_test": np.array([0, 1, 2, 3, 0, -1])}, "y_test has label -1, outside 0..3"),
        ({"y_train": np.arange(12) / 2}, "y_train has the non-integer label 0.5 at row 1"),
        ({"y_train": np.array(["cat", "dog"] * 6)}, "y_train holds <U3 values, not integers"),
        ({"y_train": np.eye(12, 3)}, "y_train needs shape (N,)"),
        ({"x_train": np.full((12, 1, 2, 2), np.nan)}, "x_train has NaN or infinite values"),
        ({"x_test": np.zeros((6, 4))}, "a row of x_train has shape (1, 2, 2) but one of x_test"),
        ({"x_test": np.zeros((0, 1, 2, 2)), "y_test": np.zeros(0)}, "x_test has no rows"),
        ({"client_train": np.arange(5)}, "client_train needs shape (12,)"),
        ({"x_train": np.float64(3.0)}, "x_train is a single value"),
    ],
    ids=[
        "missing-key",
        "lengths",
        "negative-label",
        "non-integer",
        "names",
        "one-hot",
        "nan",
        "shapes",
        "empty",
        "client-ids",
        "scalar",
    ],
)
def test_bad_arrays_are_one_user_error_each(npz, changes: dict[str, Any], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError) as err:
        arrays(ArraysParams(path=str(npz(**changes))))
    assert message in str(err.value)
    assert str(err.value).count("\n") == 0


def test_labels_beyond_the_declared_classes(npz) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError, match=r"y_train has label 2, outside 0..1 .*raise num_classes"):
        arrays(ArraysParams(path=str(npz()), num_classes=2))


def test_natural_without_client_ids_or_with_other_clients_num(npz) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    plain = arrays(ArraysParams(path=str(npz())))
    writers = arrays(ArraysParams(path=str(npz("w.npz", client_train=np.arange(12) % 4))))

    # Execute / Assert
    with pytest.raises(UserError, match="this dataset has none; give the arrays dataset a"):
        federate(plain, Component(name="natural"), 3, 0, 0.0)
    with pytest.raises(UserError, match="got 3 clients for 4 distinct client ids"):
        federate(writers, Component(name="natural"), 3, 0, 0.0)


def test_relative_paths_start_at_the_scenario_file_else_the_cwd(
    npz, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the scenario in tmp_path/exp/, the data beside it; the cwd elsewhere
    data = npz()
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "data.npz").write_bytes(data.read_bytes())
    file = tmp_path / "exp" / "s.yaml"
    file.write_text(yaml.safe_dump(scenario("data.npz")))
    monkeypatch.chdir(tmp_path)

    # Execute
    from_file = parse(scenario("data.npz"), str(file))
    from_cwd = parse(scenario("./data.npz"))

    # Assert
    assert from_file.data.options["path"] == str(tmp_path / "exp" / "data.npz")
    assert from_cwd.data.options["path"] == str(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "data.path: arrays file {tmp}/nope.npz not found; check the path"),
        ({"y_test": None}, "data.path: arrays {tmp}/nope.npz has no y_test"),
    ],
)
def test_validation_catches_a_missing_file_or_key(npz, tmp_path: Path, changes, message) -> None:  # type: ignore[no-untyped-def]
    if changes:
        npz("nope.npz", **changes)
    with pytest.raises(ScenarioError) as err:
        parse(scenario(str(tmp_path / "nope.npz")))
    assert message.format(tmp=tmp_path) in str(err.value)


def test_fedsim_run_trains_a_cnn_on_an_npz_of_natural_clients(tmp_path: Path) -> None:
    # Prepare: 8x8 images of 3 classes (a bright quadrant per class), 3 writers
    rng = np.random.default_rng(0)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        x = rng.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
        for i, c in enumerate(y):
            x[i, 0, (c // 2) * 4 : (c // 2) * 4 + 4, (c % 2) * 4 : (c % 2) * 4 + 4] += 2.0
        return x, y

    (x_train, y_train), (x_test, y_test) = images(90), images(30)
    np.savez(
        tmp_path / "writers.npz",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        client_train=np.repeat(["w1", "w2", "w3"], 30),
    )
    raw = scenario("writers.npz", seed=0)
    raw["data"]["partition"] = {"name": "natural"}
    raw["workload"] = {"name": "classification", "model": "cnn", "lr": 0.1, "epochs": 2}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))

    # Execute
    result = CliRunner().invoke(
        app, ["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "run"), "--no-progress"]
    )

    # Assert
    assert result.exit_code == 0, result.output
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    accuracy = metrics[(metrics.scope == "server") & (metrics.metric == "accuracy")]
    assert accuracy["round"].tolist() == [1, 2] and accuracy["value"].iloc[-1] > 1 / 3
    resolved = yaml.safe_load((tmp_path / "run" / "scenario.yaml").read_text())
    assert resolved["data"]["path"] == str(tmp_path / "writers.npz")
    assert resolved["workload"]["model"] == {"name": "cnn"}
    sizes = metrics[(metrics.metric == "train_examples") & metrics.client.notna()]
    assert set(sizes["value"]) == {27}  # each writer's 30 rows, less 10% held out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"y_test": None}, "data.path: arrays {tmp}/data.npz has no y_test"),
        ({"y_test": np.array([0, 1, 2, 0, 1, 7])}, "y_test has label 7, outside 0..4"),
    ],
    ids=["validated", "loaded"],
)
def test_fedsim_run_refuses_bad_arrays_before_training(
    npz, tmp_path: Path, changes, message
) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    npz(**changes)
    raw = scenario("data.npz")
    raw["data"]["num_classes"] = 5
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))

    # Execute
    result = CliRunner().invoke(
        app, ["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "r")]
    )

    # Assert
    assert result.exit_code == 2
    assert message.format(tmp=tmp_path) in " ".join(result.output.split())
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()
