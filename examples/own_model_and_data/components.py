"""A lab's own components, as a fedsim plugin: the model ``lab_cnn`` (a small CNN with
BatchNorm and dropout) and the dataset ``lab_scans`` (the lab's .npz, in its own layout). A
scenario that lists this file under ``plugins:`` names them like fedsim's own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from fedsim.data import Dataset
from fedsim.errors import UserError
from fedsim.registry import DATASETS, MODELS, DatasetParams, Params, UserPath


class LabCNN(nn.Module):
    """3x3 conv -> BatchNorm -> ReLU -> 2x2 max pool -> dropout -> linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: int) -> None:
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.25),
        )
        self.head = nn.Linear(channels * (h // 2) * (w // 2), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class LabCNNParams(Params):
    channels: PositiveInt = 8


@MODELS.register("lab_cnn", LabCNNParams)
def lab_cnn(p: LabCNNParams):  # type: ignore[no-untyped-def]
    """The lab's CNN: conv + BatchNorm + max pool + dropout + linear head."""
    # fedsim calls this with the data's input shape and class count, then draws every
    # parameter from the run's seed: the module needs no seed of its own.
    return lambda input_shape, num_classes: LabCNN(input_shape, num_classes, p.channels)


class LabScansParams(DatasetParams):
    path: Annotated[str, UserPath()]  # relative to the scenario file's folder


@DATASETS.register("lab_scans", LabScansParams)
def lab_scans(p: LabScansParams) -> Dataset:
    """The lab's scans: an .npz of images (N, C, H, W), labels (N,) and is_test (N,)."""
    if not Path(p.path).is_file():
        raise UserError(f"lab_scans: no file {p.path}; run make_data.py first")
    with np.load(p.path) as scans:
        images = torch.from_numpy(scans["images"]).float()
        labels = torch.from_numpy(scans["labels"]).long()
        test = torch.from_numpy(scans["is_test"]).bool()
    return Dataset(
        name="lab_scans",
        x_train=images[~test],
        y_train=labels[~test],
        x_test=images[test],
        y_test=labels[test],
        num_classes=int(labels.max()) + 1,
    )
