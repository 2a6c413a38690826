"""Tests of the model registry: every entry builds from the generator alone, and a model of
one's own, registered like the built-ins, trains under the classification workload."""

from __future__ import annotations

import pytest
import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from clients import TrainConfig
from clients.classification import ClassificationWorkload
from clients.models import ModelBuilder
from fedsim.errors import UserError
from fedsim.registry import MODELS, WORKLOADS, Component, Params
from fedsim.scenario import parse
from tests.workloads import EVAL, shape_of

CPU = torch.device("cpu")
SHAPE = (1, 8, 8)  # digits: every built-in model takes it
CLASSES = 10


class ScaledParams(Params):
    width: PositiveInt = 16


class ScaledNet(nn.Module):
    """A model of one's own: BatchNorm, a parameter of its own and a buffer set once."""

    def __init__(self, inputs: int, width: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(inputs, width), nn.BatchNorm1d(width))
        self.gain = nn.Parameter(torch.empty(width))
        self.register_buffer("temperature", torch.tensor(2.0))
        self.head = nn.Linear(width, classes)

    def init_parameters(self, generator: torch.Generator) -> None:
        nn.init.uniform_(self.gain, 0.5, 1.5, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.body(x)) * self.gain) / self.temperature


@MODELS.register("tests_scaled_net", ScaledParams)
def scaled_net(p: ScaledParams) -> ModelBuilder:
    """A test's own model: Linear, BatchNorm, a gain and a temperature."""

    def build(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return ScaledNet(int(torch.Size(input_shape).numel()), p.width, num_classes)

    return build


class UnseededNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))  # no init_parameters: cannot be drawn

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) * self.scale


@MODELS.register("tests_unseeded_net")
def unseeded_net(p: Params) -> ModelBuilder:
    """A test's model whose parameter init_parameters cannot draw."""
    return lambda input_shape, num_classes: UnseededNet()


def workload(model: str, **options: object) -> ClassificationWorkload:
    built = WORKLOADS.build("classification", model={"name": model}, **options)
    assert isinstance(built, ClassificationWorkload)
    return built


def flat(model: nn.Module) -> Tensor:
    return torch.cat([t.flatten().float() for t in model.state_dict().values()])


def test_the_documented_models_are_registered() -> None:
    assert {"mlp", "cnn", "lenet_300_100"} <= set(MODELS.names())
    assert all(entry.doc for entry in MODELS)


@pytest.mark.parametrize("name", [n for n in MODELS.names() if n != "tests_unseeded_net"])
def test_each_model_builds_from_the_generator_alone(name: str) -> None:
    # Prepare
    w = workload(name)
    before = torch.random.get_rng_state()

    # Execute
    a = w.build_model(shape_of(SHAPE, CLASSES), torch.Generator().manual_seed(1))
    b = w.build_model(shape_of(SHAPE, CLASSES), torch.Generator().manual_seed(1))
    c = w.build_model(shape_of(SHAPE, CLASSES), torch.Generator().manual_seed(2))
    out = a.eval()(torch.zeros(3, *SHAPE))

    # Assert
    assert torch.equal(torch.random.get_rng_state(), before), "drew from the global RNG"
    assert torch.equal(flat(a), flat(b)) and not torch.equal(flat(a), flat(c))
    assert out.shape == (3, CLASSES)


def test_lenet_300_100_has_its_266_610_parameters() -> None:
    model = workload("lenet_300_100").build_model(shape_of((1, 28, 28), 10), EVAL.generator)
    assert sum(p.numel() for p in model.parameters()) == 266_610


def test_a_model_of_ones_own_keeps_its_buffers_and_trains() -> None:
    # Prepare: two separable classes
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (256,), generator=g)
    x = (y[:, None].float() * 4 - 2 + torch.randn(256, 8, generator=g)).view(256, 1, 8)
    w = workload("tests_scaled_net", epochs=5, batch_size=32, lr=0.1)
    model = w.build_model(shape_of((1, 8), 2), torch.Generator().manual_seed(0))
    assert isinstance(model, ScaledNet)
    drawn = model.gain.detach().clone()
    before = w.evaluate(model, (x, y), {}, EVAL)

    # Execute
    config = TrainConfig(1, 0, torch.Generator().manual_seed(0), CPU)
    w.fit(model, (x, y), {}, config)
    after = w.evaluate(model, (x, y), {}, EVAL)

    # Assert
    assert model.temperature.item() == 2.0  # set by the constructor, kept
    assert 0.5 <= drawn.min().item() <= drawn.max().item() <= 1.5  # drawn by its own init
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.95


def test_a_parameter_init_parameters_cannot_draw_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"'tests_unseeded_net'.*init_parameters"):
        workload("tests_unseeded_net").build_model(shape_of(SHAPE, CLASSES), EVAL.generator)


def test_a_scenario_resolves_the_model_and_names_an_unknown_one(tiny: dict[str, object]) -> None:
    # Execute
    scenario = parse(tiny)
    tiny["workload"] = {"name": "classification", "model": {"name": "lenet300"}}
    with pytest.raises(UserError) as err:
        parse(tiny)

    # Assert
    assert scenario.workload.options["model"] == Component(name="mlp", hidden=32).model_dump()
    assert "workload.model.name: unknown model 'lenet300'; did you mean 'lenet_300_100'?" in str(
        err.value
    )
