"""Tests of the classification workload: models, init, local training, evaluation, params."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

import clients
from clients import TrainConfig, Workload, init_parameters
from clients.classification import ClassificationParams, ClassificationWorkload
from clients.workload import Labelled, eval_batch_size
from fedsim.registry import WORKLOADS, Component
from tests.workloads import EVAL, shape_of

CPU = torch.device("cpu")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def workload(**options: object) -> ClassificationWorkload:
    built = WORKLOADS.build("classification", **options)
    assert isinstance(built, ClassificationWorkload)
    return built


def config(seed: int = 0, round: int = 1) -> TrainConfig:
    return TrainConfig(round=round, client=0, generator=gen(seed), device=CPU)


def blobs(n: int = 200, d: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two well-separated Gaussian classes in ``d`` dimensions, shaped (n, 1, d)."""
    g = gen(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    centres = torch.tensor([[-3.0] * d, [3.0] * d])
    x = centres[y] + torch.randn(n, d, generator=g)
    return x.unsqueeze(1), y


def flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ---- models and initialisation ----


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_build_model_is_deterministic_in_the_generator(model: str, shape: tuple[int, ...]) -> None:
    # Prepare
    w = workload(model=model)

    # Execute
    a = w.build_model(shape_of(shape, 10), gen(1))
    b = w.build_model(shape_of(shape, 10), gen(1))
    c = w.build_model(shape_of(shape, 10), gen(2))
    out = a(torch.zeros(3, *shape))

    # Assert
    assert torch.equal(flat(a), flat(b))
    assert not torch.equal(flat(a), flat(c))
    assert out.shape == (3, 10)
    assert all(p.device == CPU for p in a.parameters())


def test_build_model_does_not_touch_the_global_rng() -> None:
    # Prepare
    before = torch.random.get_rng_state()

    # Execute
    workload(model="cnn").build_model(shape_of((1, 8, 8), 10), gen(0))

    # Assert
    assert torch.equal(before, torch.random.get_rng_state())


def test_init_parameters_matches_pytorch_defaults() -> None:
    # Prepare: PyTorch's own init from a global RNG seeded like our generator.
    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))

    with torch.random.fork_rng():
        torch.manual_seed(7)
        reference = net()
    ours = net()

    # Execute
    init_parameters(ours, gen(7))

    # Assert
    assert torch.equal(flat(ours), flat(reference))


class _Scale(nn.Module):
    """A module of one's own with a raw parameter and no way to initialise it."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.empty(3))


class _OwnInit(_Scale):
    def init_parameters(self, generator: torch.Generator) -> None:
        nn.init.uniform_(self.scale, 2.0, 3.0, generator=generator)


def test_init_parameters_refuses_modules_it_cannot_initialise() -> None:
    with pytest.raises(TypeError, match=r"_Scale.*init_parameters"):
        init_parameters(nn.Sequential(nn.Linear(2, 2), _Scale()), gen(0))


def test_init_parameters_resets_normalisation_layers_and_calls_a_modules_own_init() -> None:
    # Prepare: layers built on the meta device hold no values until initialised
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.LayerNorm(3), _OwnInit())
    model = model.to_empty(device="cpu")

    # Execute
    init_parameters(model, gen(0))

    # Assert: norms as constructed (identity map, fresh statistics), the hook drew from gen
    bn, ln, own = model[1], model[2], model[3]
    assert torch.equal(bn.weight, torch.ones(3)) and torch.equal(bn.bias, torch.zeros(3))
    assert torch.equal(bn.running_mean, torch.zeros(3))
    assert torch.equal(bn.running_var, torch.ones(3)) and int(bn.num_batches_tracked) == 0
    assert torch.equal(ln.weight, torch.ones(3)) and torch.equal(ln.bias, torch.zeros(3))
    assert bool(((own.scale >= 2) & (own.scale <= 3)).all())
    again = init_parameters(model, gen(0))[3].scale.clone()
    assert torch.equal(again, own.scale)


def test_small_cnn_refuses_inputs_too_small_or_without_channels() -> None:
    w = workload(model="cnn")
    with pytest.raises(ValueError, match="H, W >= 4"):
        w.build_model(shape_of((1, 3, 3), 10), gen(0))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        w.build_model(shape_of((28, 28), 10), gen(0))


def test_import_registers_the_workload_and_it_meets_the_protocol() -> None:
    assert clients.classification.classification is WORKLOADS.entry("classification").factory
    assert isinstance(workload(), Workload)


# ---- fit ----


def test_fit_learns_a_separable_problem() -> None:
    # Prepare
    x, y = blobs()
    w = workload(hidden=16, epochs=1, batch_size=16, lr=0.1)
    model = w.build_model(shape_of((1, 8), 2), gen(0))
    start = w.evaluate(model, Labelled(x, y), {}, EVAL)["loss"]

    # Execute
    metrics = [w.fit(model, Labelled(x, y), {}, config(seed=r, round=r)) for r in range(3)]
    end = w.evaluate(model, Labelled(x, y), {}, EVAL)

    # Assert
    assert end["loss"] < start / 10
    assert end["accuracy"] == 1.0
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[-1]["train_accuracy"] >= 0.99


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_fit_is_deterministic_for_the_same_generator_seed(model: str) -> None:
    # Prepare
    g = gen(3)
    x, y = torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    w = workload(model=model, batch_size=8, momentum=0.5, weight_decay=1e-3, mu=0.1)
    m1, m2, m3 = (w.build_model(shape_of((1, 8, 8), 3), gen(0)) for _ in range(3))

    # Execute
    r1 = w.fit(m1, Labelled(x, y), {}, config(seed=5))
    r2 = w.fit(m2, Labelled(x, y), {}, config(seed=5))
    w.fit(m3, Labelled(x, y), {}, config(seed=6))

    # Assert
    assert r1 == r2
    assert torch.equal(flat(m1), flat(m2))
    assert not torch.equal(flat(m1), flat(m3))  # another seed, another batch order


def test_proximal_term_keeps_weights_closer_to_the_start() -> None:
    # Prepare
    x, y = blobs(n=100)
    plain, prox = workload(epochs=3, lr=0.1), workload(epochs=3, lr=0.1, mu=1.0)
    m_plain = plain.build_model(shape_of((1, 8), 2), gen(0))
    m_prox = prox.build_model(shape_of((1, 8), 2), gen(0))
    start = flat(m_plain).clone()

    # Execute
    plain.fit(m_plain, Labelled(x, y), {}, config(seed=1))
    prox.fit(m_prox, Labelled(x, y), {}, config(seed=1))

    # Assert
    assert (flat(m_prox) - start).norm() < 0.9 * (flat(m_plain) - start).norm()


def softmax_grads(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Hand-derived gradient of mean CE for logits x·wᵀ + b: (softmax − onehot)ᵀ·x / n."""
    p = torch.softmax(x @ w.T + b, dim=1)
    err = (p - F.one_hot(y, w.shape[0]).to(p.dtype)) / x.shape[0]
    return err.T @ x, err.sum(dim=0)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_one_full_batch_step_equals_the_hand_computed_update(weight_decay: float) -> None:
    # Prepare: a 1-layer softmax regression in float64, one step over the whole data.
    g = gen(11)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    model = nn.Linear(4, 3).double()
    init_parameters(model, g)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    lr = 0.5
    w = workload(epochs=1, batch_size=6, lr=lr, weight_decay=weight_decay)

    # Execute
    metrics = w.fit(model, Labelled(x, y), {}, config())

    # Assert: SGD applies weight decay as wd·θ added to the gradient (bias included).
    gw, gb = softmax_grads(w0, b0, x, y)
    torch.testing.assert_close(model.weight.detach(), w0 - lr * (gw + weight_decay * w0))
    torch.testing.assert_close(model.bias.detach(), b0 - lr * (gb + weight_decay * b0))
    loss0 = F.cross_entropy(x @ w0.T + b0, y).item()
    assert metrics["train_loss"] == pytest.approx(loss0)


def test_two_fedprox_steps_equal_the_hand_computed_updates() -> None:
    # Prepare: step 1 is at the anchor (zero proximal gradient); step 2 adds mu·(θ₁ − θ₀).
    g = gen(12)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1])
    model = nn.Linear(3, 2).double()
    init_parameters(model, g)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    lr, mu = 0.3, 2.0
    w = workload(epochs=2, batch_size=5, lr=lr, mu=mu)

    # Execute
    w.fit(model, Labelled(x, y), {}, config())

    # Assert
    gw, gb = softmax_grads(w0, b0, x, y)
    w1, b1 = w0 - lr * gw, b0 - lr * gb
    gw, gb = softmax_grads(w1, b1, x, y)
    w2, b2 = w1 - lr * (gw + mu * (w1 - w0)), b1 - lr * (gb + mu * (b1 - b0))
    torch.testing.assert_close(model.weight.detach(), w2)
    torch.testing.assert_close(model.bias.detach(), b2)


def test_steps_takes_exactly_that_many_batches_across_passes() -> None:
    # Prepare: 5 samples in batches of 2 -> 3 batches per pass; 4 steps run into a second pass,
    # each pass over a fresh permutation drawn from the same generator.
    g = gen(13)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1])
    model = nn.Linear(3, 2).double()
    init_parameters(model, g)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    lr = 0.2
    w = workload(steps=4, batch_size=2, lr=lr, epochs=9)  # steps wins over epochs

    # Execute
    metrics = w.fit(model, Labelled(x, y), {}, config(seed=5))

    # Assert: the same four batches by hand.
    perms = gen(5)
    batches = list(torch.randperm(5, generator=perms).split(2))
    batches += list(torch.randperm(5, generator=perms).split(2))[:1]
    wt, bt, seen = w0, b0, 0
    for idx in batches:
        gw, gb = softmax_grads(wt, bt, x[idx], y[idx])
        wt, bt = wt - lr * gw, bt - lr * gb
        seen += len(idx)
    torch.testing.assert_close(model.weight.detach(), wt)
    torch.testing.assert_close(model.bias.detach(), bt)
    assert seen == 7 and metrics["train_loss"] > 0


def test_fit_refuses_empty_data() -> None:
    w = workload()
    model = w.build_model(shape_of((1, 8), 2), gen(0))
    with pytest.raises(ValueError, match="client has no training data"):
        w.fit(
            model, Labelled(torch.zeros(0, 1, 8), torch.zeros(0, dtype=torch.int64)), {}, config()
        )


def test_fit_raises_naming_the_round_when_the_loss_diverges() -> None:
    # Prepare: an absurd learning rate on large inputs overflows the logits.
    x, y = blobs(n=64)
    w = workload(lr=1e30, batch_size=8, epochs=2)
    model = w.build_model(shape_of((1, 8), 2), gen(0))

    # Execute / Assert
    with pytest.raises(FloatingPointError, match="round 7"):
        w.fit(model, Labelled(x * 1e6, y), {}, config(round=7))


# ---- evaluate ----


def test_evaluate_matches_hand_computed_loss_and_accuracy() -> None:
    # Prepare: logits equal the inputs, so every prediction is argmax(x).
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 0])

    # Execute
    right = workload().evaluate(model, Labelled(x, y), {}, EVAL)
    one_wrong = workload().evaluate(model, Labelled(x, torch.tensor([0, 1, 1])), {}, EVAL)

    # Assert: CE of logits (a, 0) for class 0 is log(1 + e^-a).
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-3)) + math.log1p(math.exp(-1))) / 3
    assert right["accuracy"] == 1.0
    assert right["loss"] == pytest.approx(expected, rel=1e-6)
    assert one_wrong["accuracy"] == pytest.approx(2 / 3)


def test_evaluate_over_several_batches_equals_one_pass() -> None:
    # Prepare: more points than one evaluation batch.
    g = gen(4)
    x, y = torch.randn(2500, 1, 8, generator=g), torch.randint(0, 2, (2500,), generator=g)
    w = workload()
    model = w.build_model(shape_of((1, 8), 2), gen(0))

    # Execute
    metrics = w.evaluate(model, Labelled(x, y), {}, EVAL)

    # Assert
    with torch.no_grad():
        logits = model(x)
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert metrics["accuracy"] == (logits.argmax(1) == y).sum().item() / 2500


def test_a_convolutional_model_evaluates_in_small_batches_on_a_cpu_and_equals_one_pass() -> None:
    w = workload(model="cnn")
    cnn = w.build_model(shape_of((1, 12, 12), 3), gen(0))
    mlp = workload().build_model(shape_of((1, 12, 12), 3), gen(0))
    assert eval_batch_size(cnn, CPU) == 64  # activations stay in the caches
    assert eval_batch_size(mlp, CPU) == 1024  # small activations: large batches are faster
    assert eval_batch_size(cnn, torch.device("cuda")) == 1024  # throughput
    g = gen(5)
    x, y = torch.randn(300, 1, 12, 12, generator=g), torch.randint(0, 3, (300,), generator=g)
    metrics = w.evaluate(cnn, Labelled(x, y), {}, EVAL)  # five batches, the last short
    with torch.no_grad():
        logits = cnn.eval()(x)
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert metrics["accuracy"] == (logits.argmax(1) == y).sum().item() / 300


# ---- params ----


def test_params_defaults() -> None:
    p = ClassificationParams()
    assert (p.model, p.epochs, p.batch_size, p.lr) == (Component(name="mlp"), 1, 32, 0.05)
    assert (p.momentum, p.weight_decay, p.mu) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "options",
    [
        {"lrr": 0.1},  # typo of a known key
        {"lr": -1},
        {"lr": 0},
        {"model": {"nme": "mlp"}},  # a model without a name
        {"model": "cnn", "hidden": 64},  # hidden is the MLP's
        {"model": {"name": "mlp", "hidden": 8}, "hidden": 64},  # given twice
        {"momentum": 1.0},
        {"momentum": -0.1},
        {"epochs": 0},
        {"batch_size": 0},
        {"mu": -0.5},
        {"weight_decay": -1e-4},
    ],
)
def test_params_refuse_unknown_keys_and_bad_values(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        WORKLOADS.build(Component(name="classification", **options))


@pytest.mark.parametrize(
    "options",
    [
        {"model": "mlp", "hidden": 64},  # the spelling of scenarios before models were components
        {"model": {"name": "mlp"}, "hidden": 64},
        {"hidden": 64},
        {"model": {"name": "mlp", "hidden": 64}},
    ],
)
def test_model_shorthand_and_hidden_beside_it_name_the_mlp(options: dict[str, object]) -> None:
    # Execute
    p = ClassificationParams.model_validate(options)

    # Assert
    assert p.model == Component(name="mlp", hidden=64)


def test_mlp_with_hidden_widths_is_lenet_300_100() -> None:
    from clients.models import MLP

    model = MLP((1, 28, 28), 10, hidden=[300, 100])
    sizes = [tuple(p.shape) for p in model.parameters()]
    assert sizes == [(300, 784), (300,), (100, 300), (100,), (10, 100), (10,)]
    assert sum(p.numel() for p in model.parameters()) == 266_610  # LeCun et al. (1998)
