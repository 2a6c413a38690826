"""The side-by-side benchmark's fedsim plugin: pfl's CIFAR-10 CNN as the model ``pfl_cnn``.

As README "Your own model and data" shows: a factory taking its params and returning a builder
``(input_shape, num_classes) -> nn.Module``; fedsim draws the initial weights from the run's seed
through the layers' own ``init_parameters`` (Glorot, as pfl). The data needs no plugin: the
built-in ``arrays`` dataset reads data.py's folder and the ``natural`` partitioner its users.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedsim.registry import MODELS, Params

# The module lives beside this file and needs only torch, so that pfl's and Flower's runs build
# the very same network without fedsim.
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.append(HERE)

from cnn import simple_cnn  # noqa: E402


class PflCNNParams(Params):
    """No options: the network is pfl's, as its CIFAR-10 benchmark trains it."""


@MODELS.register("pfl_cnn", PflCNNParams)
def pfl_cnn(p: PflCNNParams):  # type: ignore[no-untyped-def]
    """pfl-research's CIFAR-10 CNN (1.6M parameters): two convolutions, max pool, dense."""
    return simple_cnn
