"""A lab's own components, as a fedsim plugin: a small CNN with BatchNorm, registered as the
model ``lab_cnn``. A scenario that lists this file under ``plugins:`` can name it."""

from __future__ import annotations

from pydantic import PositiveInt
from torch import Tensor, nn

from fedsim.registry import MODELS, Params


class LabCNN(nn.Module):
    """3x3 conv -> BatchNorm -> ReLU -> 2x2 max pool -> linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(channels * (input_shape[1] // 2) * (input_shape[2] // 2), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class LabCNNParams(Params):
    channels: PositiveInt = 8


@MODELS.register("lab_cnn", LabCNNParams)
def lab_cnn(p: LabCNNParams):  # type: ignore[no-untyped-def]
    """The lab's CNN: conv + BatchNorm + pooled linear head."""
    # fedsim calls this with the dataset's input shape and class count, then draws every
    # parameter from the run's seed: the module needs no seed of its own.
    return lambda input_shape, num_classes: LabCNN(input_shape, num_classes, p.channels)
