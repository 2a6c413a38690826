"""Tests of the ``csv`` dataset: columns, splits, labels, client ids and bad tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.data import federate
from fedsim.errors import ScenarioError, UserError
from fedsim.files.tables import CsvParams, csv
from fedsim.registry import Component
from fedsim.scenario import parse

TABLE = """\
height,weight,species,part,farm
1.0,10,ewe,train,north
2.0,20,ram,train,south
3.0,30,ewe,test,north
4.0,40,lamb,train,south
5.0,50,ram,train,north
6.0,60,lamb,test,south
"""


def table(tmp_path: Path, text: str = TABLE) -> Path:
    path = tmp_path / "sheep.csv"
    path.write_text(text)
    return path


def params(path: Path, **options: object) -> CsvParams:
    return CsvParams.model_validate({"path": str(path), "label": "species", **options})


def test_split_column_names_as_labels_and_client_column(tmp_path: Path) -> None:
    # Execute
    d = csv(params(table(tmp_path), split="part", client="farm", standardize=False))

    # Assert: features height, weight; classes ewe 0, lamb 1, ram 2; farms north 0, south 1
    assert (d.num_classes, d.input_shape) == (3, (2,))
    assert d.x_train[:, 0].tolist() == [1.0, 2.0, 4.0, 5.0] and d.x_test[:, 1].tolist() == [30, 60]
    assert d.y_train.tolist() == [0, 2, 1, 2] and d.y_test.tolist() == [0, 1]
    assert d.client_train is not None and d.client_train.tolist() == [0, 1, 1, 0]
    fed = federate(d, Component(name="natural"), num_clients=2, seed=0, val_fraction=0.0)
    assert [t.tolist() for t in fed.train] == [[0, 3], [1, 2]]


def test_seeded_fraction_split_named_features_and_standardized(tmp_path: Path) -> None:
    # Prepare: integer labels are class indices
    text = "a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20))

    # Execute
    first = csv(CsvParams(path=str(table(tmp_path, text)), label="y", test_fraction=0.25, seed=3))
    again = csv(CsvParams(path=str(table(tmp_path, text)), label="y", test_fraction=0.25, seed=3))
    only_a = csv(CsvParams(path=str(table(tmp_path, text)), label="y", features=["a"]))

    # Assert
    assert len(first.y_train) == 15 and len(first.y_test) == 5 and first.num_classes == 2
    assert np.array_equal(first.x_test.numpy(), again.x_test.numpy())
    np.testing.assert_allclose(first.x_train.mean(0).numpy(), [0, 0], atol=1e-6)
    np.testing.assert_allclose(first.x_train.std(0, unbiased=False).numpy(), [1, 1], atol=1e-5)
    assert only_a.input_shape == (1,)


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        (TABLE, {"label": "kind"}, "has no column 'kind' (label); its columns are 'height',"),
        (TABLE, {"split": "fold"}, "has no column 'fold' (split)"),
        (TABLE, {}, "feature column 'part' is not numeric (e.g. 'train')"),
        (
            TABLE.replace("2.0,20", ",20"),
            {"features": ["height"]},
            "column 'height' has 1 missing (NaN) values (first at data row 1)",
        ),
        (TABLE.replace("test", "dev"), {"split": "part", "features": ["height"]}, "holds 'dev'"),
        ("a,y\n1,0\n2,1.5\n3,1\n", {"label": "y"}, "non-integer label 1.5"),
        ("a,y\n1,0\n2,-1\n3,1\n4,1\n", {"label": "y"}, "label -1, outside"),
        ("a,y\n1,0\n2,\n3,1\n", {"label": "y"}, "label column 'y' is empty at 1 rows"),
    ],
    ids=[
        "no-label",
        "no-split",
        "text-feature",
        "nan",
        "split-values",
        "float",
        "negative",
        "empty",
    ],
)
def test_bad_tables_are_one_user_error_each(tmp_path: Path, text, options, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError) as err:
        csv(params(table(tmp_path, text), **{"test_fraction": 0.5, **options}))
    assert message in str(err.value)


def test_validation_catches_a_missing_label_column(tmp_path: Path) -> None:
    # Prepare
    raw = {
        "name": "sheep",
        "rounds": 1,
        "data": {"name": "csv", "path": str(table(tmp_path)), "label": "kind"},
        "clients": {"num": 2, "per_round": 2},
        "workload": {"name": "classification"},
    }

    # Execute / Assert
    with pytest.raises(ScenarioError, match=r"data.label: csv .* has no column 'kind' \(label\)"):
        parse(raw)
