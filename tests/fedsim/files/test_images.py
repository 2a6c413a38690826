"""Tests of the ``image_folder`` dataset: reading, resizing, the array cache, bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fedsim.files.images
from fedsim.errors import ScenarioError, UserError
from fedsim.files.images import CACHE, ImageFolderParams, image_folder
from fedsim.scenario import parse

# Each class's images are one solid colour; test images are another shade of it.
COLOURS = {"cat": (200, 0, 0), "dog": (0, 0, 100)}


def solid(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/train/{cat,dog}/ with two images each (one .jpg), root/test/ with one each."""
    root = tmp_path / "pets"
    for name, colour in COLOURS.items():
        solid(root / "train" / name / "a.png", colour)
        solid(root / "train" / name / "b.JPG", colour, size=(9, 9))
        solid(root / "test" / name / "c.png", tuple(c // 2 for c in colour))  # type: ignore[arg-type]
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


def params(root: Path, **options: object) -> ImageFolderParams:
    return ImageFolderParams.model_validate({"root": str(root), "size": 3, **options})


def test_images_are_read_resized_and_labelled_by_sorted_folder(folder: Path) -> None:
    # Execute
    d = image_folder(params(folder, size=[2, 3], standardize=False))

    # Assert: (N, C, H, W) in [0, 1]; cat = 0, dog = 1; solid colours survive resizing
    assert (d.num_classes, d.input_shape) == (2, (3, 2, 3))
    assert d.y_train.tolist() == [0, 0, 1, 1] and d.y_test.tolist() == [0, 1]
    np.testing.assert_allclose(d.x_train[0, :, 0, 0].numpy(), [200 / 255, 0, 0], atol=1e-6)
    np.testing.assert_allclose(d.x_test[1, :, 1, 2].numpy(), [0, 0, 50 / 255], atol=1e-6)


def test_greyscale_and_standardized(folder: Path) -> None:
    # Execute
    d = image_folder(params(folder, channels=1))

    # Assert: one channel, mean 0 and std 1 over the training pixels
    assert d.input_shape == (1, 3, 3)
    assert (
        abs(d.x_train.mean().item()) < 1e-5 and abs(d.x_train.std(unbiased=False).item() - 1) < 1e-5
    )


def test_the_first_read_is_cached_and_a_changed_folder_read_again(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    first = image_folder(params(folder))
    decode = fedsim.files.images._decode

    def refuse(*args: object) -> object:
        raise AssertionError("decoded again")

    # Execute: from the cache, then after one image more
    monkeypatch.setattr(fedsim.files.images, "_decode", refuse)
    cached = image_folder(params(folder))
    solid(folder / "train" / "dog" / "z.png", COLOURS["dog"])
    monkeypatch.setattr(fedsim.files.images, "_decode", decode)
    grown = image_folder(params(folder))

    # Assert
    assert len(list((folder / CACHE).glob("images-*.npz"))) == 2
    assert np.array_equal(cached.x_train.numpy(), first.x_train.numpy())
    assert len(grown.y_train) == 5


def test_cache_false_writes_nothing(folder: Path) -> None:
    image_folder(params(folder, cache=False))
    assert not (folder / CACHE).exists()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("other-test-class", "train and test have different classes (only in test/: bird)"),
        ("no-test", "has no test/ folder"),
        ("empty-class", "/test/dog has no .png or .jpg images"),
        ("not-an-image", "cannot read train/cat/bad.png"),
        ("no-root", "image folder {root}/missing not found"),
    ],
)
def test_bad_folders_are_one_user_error_each(folder: Path, breakage: str, message: str) -> None:
    # Prepare
    root = folder
    if breakage == "other-test-class":
        solid(folder / "test" / "bird" / "x.png", (0, 90, 0))
    elif breakage == "no-test":
        (folder / "test").rename(folder / "tests")
    elif breakage == "empty-class":
        (folder / "test" / "dog" / "c.png").unlink()
    elif breakage == "not-an-image":
        (folder / "train" / "cat" / "bad.png").write_bytes(b"not a png")
    else:
        root = folder / "missing"

    # Execute / Assert
    with pytest.raises(UserError) as err:
        image_folder(params(root))
    assert message.format(root=folder) in str(err.value)


def test_validation_catches_classes_that_differ(folder: Path) -> None:
    # Prepare
    solid(folder / "train" / "bird" / "x.png", (0, 90, 0))
    raw = {
        "name": "pets",
        "rounds": 1,
        "data": {"name": "image_folder", "root": str(folder), "size": 8},
        "clients": {"num": 2, "per_round": 2},
        "workload": {"name": "classification", "model": "cnn"},
    }

    # Execute / Assert
    with pytest.raises(ScenarioError, match=r"data.root: .*\(only in train/: bird\)"):
        parse(raw)
