"""The checkpoint: round trips every state the app saves, and refuses unsafe or damaged files."""

from __future__ import annotations

import os
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from fedsim import checkpoint
from fedsim.checkpoint import Checkpoint
from fedsim.errors import UserError
from strategies.aggregators.flag import FlagFit
from strategies.pipeline import RoundInfo


def assert_same(got: Any, want: Any) -> None:
    """Equal values of the very same types, all the way down."""
    assert type(got) is type(want), f"{type(got)} != {type(want)}"
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and torch.equal(got, want)
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    else:
        assert got == want


def full_checkpoint() -> Checkpoint:
    """A checkpoint with every kind of state the app saves."""
    g = torch.Generator().manual_seed(0)
    info = RoundInfo(3, (0, 2, 5), torch.tensor([10.0, 20.0, 5.0]), byzantine=None)
    fit = FlagFit(torch.randn(3, 2, dtype=torch.float64, generator=g), torch.rand(3), steps=4)
    return Checkpoint(
        round=3,
        model={"w": torch.randn(4, 2, generator=g), "b": torch.zeros(2)},
        strategy={
            "pipeline": (None, torch.ones(8), (info, fit)),  # chain of stages: a tuple of states
            "num_clients": 6,
            "last_picked": {0: 3, 2: 3, 5: 1},
            "dp": {"clipping_norm": 0.5, "releases": 3},
        },
        exchanges={
            "error_feedback": {
                "memory": {1: np.arange(5, dtype=np.float32), 4: np.zeros((2, 2), np.int64)},
                "broadcast": {"mean": torch.randn(5, generator=g)},
            }
        },
        clients={0: {"momentum": torch.zeros(3), "seen": [1, 2]}, 5: {}},
        features={
            "sparsity": {
                "masks": {"w": torch.rand(4, 2, generator=g) > 0.5},
                "generator": torch.Generator().manual_seed(7).get_state(),
            }
        },
    )


def test_a_checkpoint_comes_back_as_it_was_saved(tmp_path: Path) -> None:
    # Prepare
    saved = full_checkpoint()

    # Execute
    checkpoint.save(tmp_path, saved)
    loaded = checkpoint.load(tmp_path)

    # Assert: same values and types, NamedTuples and tuples included
    assert loaded is not None
    for name in ("round", "model", "strategy", "exchanges", "clients", "features"):
        assert_same(getattr(loaded, name), getattr(saved, name))
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


def test_a_restored_generator_draws_what_the_saved_one_would(tmp_path: Path) -> None:
    # Prepare: a generator part-way through its stream
    generator = torch.Generator().manual_seed(3)
    torch.rand(5, generator=generator)
    saved = Checkpoint(1, {}, None, features={"generator": generator.get_state()})

    # Execute
    checkpoint.save(tmp_path, saved)
    loaded = checkpoint.load(tmp_path)
    restored = torch.Generator()
    assert loaded is not None
    restored.set_state(loaded.features["generator"])

    # Assert
    assert torch.equal(torch.rand(5, generator=restored), torch.rand(5, generator=generator))


def test_the_file_loads_with_weights_only(tmp_path: Path) -> None:
    # Prepare
    checkpoint.save(tmp_path, full_checkpoint())

    # Execute
    content = torch.load(tmp_path / "checkpoint.pt", weights_only=True)

    # Assert
    assert content["format"] == checkpoint.FORMAT
    assert content["version"] == checkpoint.VERSION
    assert content["round"] == 3


@pytest.mark.parametrize(
    "dtype", ["float16", "float32", "float64", "int8", "int64", "uint8", "uint16", "uint64", "bool"]
)
def test_numpy_arrays_round_trip_with_their_dtype(dtype: str) -> None:
    array = np.arange(6).reshape(2, 3).astype(dtype)
    assert_same(checkpoint.from_plain(checkpoint.to_plain(array)), array)


def test_numpy_scalars_become_python_numbers() -> None:
    plain = checkpoint.to_plain({"step": np.int64(3), "loss": np.float32(0.5), "ok": np.bool_(1)})
    assert_same(plain, {"step": 3, "loss": 0.5, "ok": True})


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    # Prepare
    checkpoint.save(tmp_path, Checkpoint(1, {}, None))

    # Execute: a state with no plain form
    with pytest.raises(TypeError, match="set"):
        checkpoint.save(tmp_path, Checkpoint(2, {}, {"ids": {1, 2}}))

    # Assert
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and loaded.round == 1


class _Local(NamedTuple):
    x: int


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        (_Local(1), "outside fedsim's packages"),
        (object(), "cannot hold a builtins.object"),
        (np.array(["a"]), "dtype <U1"),
        ({(1, 2): 0}, "keys are str or int"),
        ({"__ndarray__": 1}, "marks a tag"),
    ],
)
def test_states_with_no_safe_plain_form_are_refused_at_save(state: Any, problem: str) -> None:
    with pytest.raises(TypeError, match=problem):
        checkpoint.to_plain(state)


def test_a_missing_checkpoint_is_none(tmp_path: Path) -> None:
    assert checkpoint.load(tmp_path) is None


class _Evil:
    """Unpickling it runs a command, as a crafted checkpoint could."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("make", [_Evil, lambda marker: Fraction(1, 3)])
def test_a_file_holding_other_objects_is_refused_without_running_them(
    tmp_path: Path, make: Any
) -> None:
    # Prepare
    marker = tmp_path / "ran"
    torch.save({"x": make(marker)}, tmp_path / "checkpoint.pt")

    # Execute
    with pytest.raises(UserError) as refused:
        checkpoint.load(tmp_path)

    # Assert
    message = str(refused.value)
    assert str(tmp_path / "checkpoint.pt") in message
    assert "refuses to load (it could run code)" in message
    assert "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_a_truncated_file_is_reported_as_damaged(tmp_path: Path, keep: float) -> None:
    # Prepare
    checkpoint.save(tmp_path, full_checkpoint())
    file = tmp_path / "checkpoint.pt"
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])

    # Execute
    with pytest.raises(UserError) as refused:
        checkpoint.load(tmp_path)

    # Assert
    message = str(refused.value)
    assert message.startswith(f"{file} is damaged")
    assert "delete it to start the run over" in message
    assert "\n" not in message


def file_with_strategy(run_dir: Path, strategy: Any) -> Path:
    """A well-formed checkpoint file whose strategy state is ``strategy``, as given."""
    content = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "round": 1, "model": {}}
    content |= {"strategy": strategy, "exchanges": {}, "clients": {}, "features": {}}
    torch.save(content, run_dir / "checkpoint.pt")
    return run_dir / "checkpoint.pt"


@pytest.mark.parametrize(
    "tag", ["os:system", "collections:OrderedDict", "fedsim.checkpoint:Checkpoint", "fedsim:nope"]
)
def test_a_namedtuple_tag_naming_anything_but_fedsims_namedtuples_is_refused(
    tmp_path: Path, tag: str
) -> None:
    # Prepare: the state names another class, with fields that would run a command
    marker = tmp_path / "ran"
    file = file_with_strategy(
        tmp_path, {"__namedtuple__": tag, "fields": {"command": f"touch {marker}"}}
    )

    # Execute
    with pytest.raises(UserError) as refused:
        checkpoint.load(tmp_path)

    # Assert
    assert str(refused.value).startswith(f"{file} holds content that fedsim refuses to rebuild")
    assert tag in str(refused.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("strategy", "problem"),
    [
        ({"__namedtuple__": "strategies.pipeline:RoundInfo", "fields": {"x": 1}}, "has fields"),
        ({"__namedtuple__": "strategies.pipeline:RoundInfo"}, "malformed"),
        ({"__ndarray__": [1, 2]}, "stored as a list"),
        ({"__ndarray__": torch.ones(2, dtype=torch.bfloat16)}, "stored as a torch.bfloat16"),
    ],
)
def test_tags_that_to_plain_would_not_write_are_refused(
    tmp_path: Path, strategy: Any, problem: str
) -> None:
    file = file_with_strategy(tmp_path, strategy)
    with pytest.raises(UserError, match=problem) as refused:
        checkpoint.load(tmp_path)
    assert str(refused.value).startswith(str(file))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({"round": 3, "model": {}}, "not in fedsim's checkpoint format"),
        ({"format": checkpoint.FORMAT, "version": 99}, "format version 99"),
        ({"format": checkpoint.FORMAT, "version": checkpoint.VERSION}, "lacks round"),
    ],
)
def test_a_file_of_another_format_is_refused(tmp_path: Path, content: Any, problem: str) -> None:
    torch.save(content, tmp_path / "checkpoint.pt")
    with pytest.raises(UserError, match=problem):
        checkpoint.load(tmp_path)


def test_a_garbled_pickle_in_a_complete_archive_is_reported_as_damaged(tmp_path: Path) -> None:
    # Prepare: the archive is whole, but its data.pkl has bytes overwritten
    checkpoint.save(tmp_path, full_checkpoint())
    file = tmp_path / "checkpoint.pt"
    with zipfile.ZipFile(file) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    pickled = next(name for name in members if name.endswith("data.pkl"))
    members[pickled] = b"\xff" * 8 + members[pickled][8:]
    with zipfile.ZipFile(file, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)

    # Execute
    with pytest.raises(UserError) as refused:
        checkpoint.load(tmp_path)

    # Assert
    assert str(refused.value).startswith(f"{file} is damaged")
