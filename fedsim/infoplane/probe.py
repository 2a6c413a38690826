"""A model's layers as the information plane sees them: the outputs of its activation modules
in the order the forward pass reaches them, then the model's output (softmax), numbered from 1.
Captured with forward hooks on a fixed probe set."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fedsim.infoplane.estimators import TANH_LOW

ACTIVATIONS = (
    nn.Tanh, nn.Hardtanh, nn.ReLU, nn.ReLU6, nn.ELU, nn.CELU, nn.SELU, nn.Softplus, nn.Sigmoid,
    nn.LeakyReLU, nn.PReLU, nn.GELU, nn.SiLU, nn.Mish,
)  # fmt: skip
BOUNDED = (nn.Tanh, nn.Hardtanh, nn.Sigmoid)  # fixed bins span their range, not the data's
BELOW_MINUS_ONE = (nn.Tanh, nn.Hardtanh, nn.ELU, nn.CELU)  # the reference's low edge −1.000001
OUTPUT = "output"
BATCH = 1024


@dataclass(frozen=True)
class Layer:
    number: int  # 1-based, the output last
    name: str  # the module's name, or "output"
    low: float  # the lowest edge: activity at it (ReLU's zeros) has a bin of its own
    bounded: bool  # activity within [low, 1] whatever the weights


def layers(model: nn.Module, example: Tensor) -> list[Layer]:
    """The model's probe-able layers, found by one forward pass on ``example``."""
    order: list[str] = []
    kinds: dict[str, nn.Module] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, ACTIVATIONS):
            kinds[name] = module

            def hook(_m: nn.Module, _i: object, _o: object, name: str = name) -> None:
                if name not in order:
                    order.append(name)

            handles.append(module.register_forward_hook(hook))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example[:2])
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    found = [
        Layer(
            i + 1,
            name,
            TANH_LOW if isinstance(kinds[name], BELOW_MINUS_ONE) else 0.0,
            isinstance(kinds[name], BOUNDED),
        )
        for i, name in enumerate(order)
    ]
    return [*found, Layer(len(found) + 1, OUTPUT, 0.0, True)]


def select(found: list[Layer], wanted: str | list[int | str]) -> list[Layer]:
    """The layers ``wanted`` names (numbers from 1, module names, or ``output``); ValueError
    naming the choices for one that does not exist."""
    if wanted == "all":
        return found
    picked = []
    for want in wanted:
        hit = [layer for layer in found if want in (layer.number, layer.name, str(layer.number))]
        if not hit:
            choices = ", ".join(f"{layer.number} ({layer.name})" for layer in found)
            raise ValueError(f"layers: the model has no layer {want!r}; its layers: {choices}")
        picked.append(hit[0])
    return picked


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's modules by name, looked up once: a model keeps its modules for the run, and
    walking them costs a fifth of a small model's probe."""
    found = _named.get(model)
    if found is None:
        found = _named[model] = dict(model.named_modules())
    return found


_named: weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module]] = weakref.WeakKeyDictionary()


def activity(model: nn.Module, x: Tensor, chosen: list[Layer]) -> dict[int, np.ndarray]:
    """Each chosen layer's activity on the probe set ``x``: (N, units) float32, by number."""
    names = {layer.name: layer.number for layer in chosen}
    parts: dict[int, list[Tensor]] = {layer.number: [] for layer in chosen}
    modules = _modules(model)
    handles = []
    for name, module in modules.items():
        if name in names and name != OUTPUT:

            def hook(_m: nn.Module, _i: object, out: Tensor, number: int = names[name]) -> None:
                if len(parts[number]) < len(batches):  # a module called twice: its first call
                    parts[number].append(out.detach().flatten(1).float().cpu())

            handles.append(module.register_forward_hook(hook))
    # Left in eval mode, as a workload's evaluate leaves it: every fit sets the mode it needs.
    # (Switching back and forth walked every module twice per client, a third of the probe.)
    if any(module.training for module in modules.values()):
        model.eval()
    batches: list[int] = []
    try:
        with torch.no_grad():
            for start in range(0, len(x), BATCH):
                batches.append(start)
                out = model(x[start : start + BATCH])
                if OUTPUT in names:
                    parts[names[OUTPUT]].append(torch.softmax(out.flatten(1).float(), 1).cpu())
    finally:
        for handle in handles:
            handle.remove()
    # cat copies, also one batch: a later in-place module must not change what was captured
    return {number: torch.cat(p).numpy() for number, p in parts.items()}
