"""Scenes: the synthetic generator, a user's file (.mat and ENVI written here), the tiles
federation (halo patches, cut edges, halo bytes) and the bad inputs' messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from clients.hsi.workload import HsiParams, group_bounds, patches
from fedsim.errors import UserError
from fedsim.hsi_data import (
    HsiFileParams,
    HsiSyntheticParams,
    edge_count,
    federate_scene,
    hsi_file,
    hsi_synthetic,
)
from fedsim.registry import Component

SMALL = HsiSyntheticParams(height=16, width=20, bands=8, classes=4, similar_pairs=1)


def test_the_synthetic_scene_is_seeded_and_its_training_pixels_come_in_blocks() -> None:
    a, b = hsi_synthetic(SMALL), hsi_synthetic(SMALL)
    assert torch.equal(a.cube, b.cube) and torch.equal(a.train, b.train)
    assert a.cube.shape == (8, 16, 20)
    assert set(a.labels.unique().tolist()) == {0, 1, 2, 3}
    assert not (a.train & a.test).any() and bool((a.train | a.test).all())
    single = hsi_synthetic(SMALL.model_copy(update={"block": 1}))
    # blocks give far more labelled neighbour pairs than single pixels at a similar count
    assert a.labelled_pairs > 3 * max(single.labelled_pairs, 1)
    assert a.labelled_pairs == edge_count(a.train.numpy())


def test_edge_count_by_hand() -> None:
    # a 2×3 all-true mask: 3 + 4 straight + 4 diagonal = 11 unordered 8-neighbour edges
    assert edge_count(np.ones((2, 3), dtype=bool)) == 3 + 4 + 4


def write_mat(tmp_path: Path, cube: np.ndarray, gt: np.ndarray) -> tuple[Path, Path]:
    scipy.io.savemat(tmp_path / "cube.mat", {"indian_pines": cube})
    scipy.io.savemat(tmp_path / "gt.mat", {"indian_pines_gt": gt})
    return tmp_path / "cube.mat", tmp_path / "gt.mat"


def a_scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    cube = rng.normal(size=(6, 7, 5))  # (H, W, bands), as the Indian Pines .mat holds it
    gt = rng.integers(0, 4, size=(6, 7))  # 0 = no class
    return cube, gt


def test_a_mat_file_reads_as_its_standardised_cube_and_its_classes(tmp_path: Path) -> None:
    cube, gt = a_scene()
    path, truth = write_mat(tmp_path, cube, gt)
    scene = hsi_file(HsiFileParams(path=str(path), ground_truth=str(truth), block=1))
    want = np.moveaxis(cube, 2, 0)
    want = (want - want.mean(axis=(1, 2), keepdims=True)) / want.std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(scene.cube.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scene.labels.numpy(), gt - 1)
    assert scene.num_classes == 3
    assert not scene.train[torch.from_numpy(gt == 0)].any()


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_an_envi_file_reads_as_the_same_cube(tmp_path: Path, interleave: str) -> None:
    cube, gt = a_scene()
    _, truth = write_mat(tmp_path, cube, gt)
    layout = {"bsq": (2, 0, 1), "bil": (0, 2, 1), "bip": (0, 1, 2)}[interleave]
    np.transpose(cube, layout).astype(">f4").tofile(tmp_path / "scene.img")
    (tmp_path / "scene.hdr").write_text(
        "ENVI\ndescription = {a test\n scene}\nsamples = 7\nlines = 6\nbands = 5\n"
        f"header offset = 0\ndata type = 4\ninterleave = {interleave}\nbyte order = 1\n"
    )
    envi = hsi_file(HsiFileParams(path=str(tmp_path / "scene.hdr"), ground_truth=str(truth)))
    mat = hsi_file(HsiFileParams(path=str(tmp_path / "cube.mat"), ground_truth=str(truth)))
    torch.testing.assert_close(envi.cube, mat.cube, rtol=1e-5, atol=1e-5)


def test_a_ground_truth_of_another_shape_is_refused(tmp_path: Path) -> None:
    cube, gt = a_scene()
    path, truth = write_mat(tmp_path, cube, gt[:, :6])
    with pytest.raises(UserError, match=r"ground truth's shape \(6, 6\) differs .* \(6, 7\)"):
        hsi_file(HsiFileParams(path=str(path), ground_truth=str(truth)))


def test_halo_tiles_give_every_border_pixel_the_whole_scenes_patch() -> None:
    scene = hsi_synthetic(SMALL)
    s = 5
    whole = patches(scene.cube, s).reshape(16, 20, 8, s, s)
    fed = federate_scene(scene, Component(name="tiles", rows=2, halo=s // 2), 4, 0, 0.0)
    for client, (r0, r1, c0, c1) in enumerate(fed.tiles):
        window = fed.train_data(client)
        h, w = window.shape
        mine = patches(window.cube, s).reshape(h, w, 8, s, s)[window.core]
        assert torch.equal(mine, whole[r0:r1, c0:c1].reshape(-1, 8, s, s)), client
        assert (window.labels[~window.core] == -1).all(), "a halo never carries labels"
    no_halo = federate_scene(scene, Component(name="tiles", rows=2), 4, 0, 0.0)
    window = no_halo.train_data(0)
    h, w = window.shape
    assert not torch.equal(patches(window.cube, s).reshape(h, w, 8, s, s), whole[:h, :w])


def test_cut_edges_and_halo_bytes_of_two_stripes() -> None:
    scene = hsi_synthetic(SMALL)  # 16 × 20, 8 bands
    fed = federate_scene(scene, Component(name="tiles", layout="stripes", halo=1), 2, 0, 0.0)
    assert fed.tiles == [(0, 8, 0, 20), (8, 16, 0, 20)]
    # edges: 16·19 + 15·20 + 2·15·19 = 1174; cut: between rows 7 and 8, 20 + 2·19 = 58
    assert fed.stats["crf_edges_cut"] == pytest.approx(58 / 1174)
    assert fed.stats["crf_edges_lost"] == 0.0
    assert fed.stats["halo_bytes"] == 2 * 20 * 8 * 4  # one row of the other stripe each
    bare = federate_scene(scene, Component(name="tiles", layout="stripes"), 2, 0, 0.0)
    assert bare.stats["crf_edges_lost"] == pytest.approx(58 / 1174)
    assert sum(bare.client_sizes()) == int(scene.train.sum())


def test_band_groups_that_do_not_divide_the_bands_are_refused_unless_spread() -> None:
    with pytest.raises(UserError, match="band_groups=3 does not divide the data's 8 bands"):
        group_bounds(8, 3, "error")
    assert group_bounds(8, 3, "spread") == [(0, 3), (3, 6), (6, 8)]
    assert HsiParams().band_groups == 4
