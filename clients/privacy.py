"""Local differential privacy: DP-SGD with Opacus for any workload that trains through
``TrainConfig.training`` (Abadi et al., 2016).

``DPSGD`` takes the workload's model and optimiser to Opacus's ``PrivacyEngine.make_private``:
per-sample gradients are clipped to ``max_grad_norm`` and Gaussian noise of std
``noise_multiplier · max_grad_norm`` is added to their sum at every step. Minibatches are drawn by
Poisson sampling (each sample joins a step with probability q = 1 / ceil(n / batch_size)), the
sampling Opacus's accountant assumes. The accountant's history — (noise multiplier, q, steps)
entries — is handed in and read back, so the caller can keep it across rounds and ε accumulates
over every step a client ever took.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, TensorDataset

from clients.workload import shuffled_passes

Accountant = Literal["rdp", "prv", "gdp"]
# Opacus computes std = noise_multiplier · max_grad_norm; 0 · inf would be NaN. This clip bound
# scales no finite gradient, so it stands in for "no clipping" (allowed only without noise).
NO_CLIP = float(torch.finfo(torch.float32).max)

# Opacus's per-sample hooks see inputs that need no gradient (the data); PyTorch says so on
# every new process. It is expected and harmless here.
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
HistoryEntry = tuple[float, float, int]  # (noise multiplier, sample rate, steps): Opacus's format


class DPSGD:
    """One client's local training by DP-SGD; the ``LocalTraining`` a workload is handed.

    ``history`` is the client's accountant history so far; ``noise_seed`` seeds the noise (and,
    with ``poisson``, the sampling) so that a run is reproducible. Call ``close`` after training.
    """

    private = True

    def __init__(
        self,
        noise_multiplier: float,
        max_grad_norm: float,
        *,
        noise_seed: int,
        poisson: bool = True,
        accountant: Accountant = "rdp",
        history: Sequence[HistoryEntry] = (),
    ) -> None:
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.noise_seed = noise_seed
        self.poisson = poisson
        self.accountant_name = accountant
        self.accountant = create_accountant(mechanism=accountant)
        self.accountant.history = [tuple(entry) for entry in history]
        self._module: GradSampleModule | None = None
        self._batches: Any = None  # Opacus's Poisson batch sampler
        self._shuffled: tuple[int, int, torch.Generator] | None = None

    def setup(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        n: int,
        batch_size: int,
        generator: torch.Generator,
    ) -> tuple[nn.Module, Optimizer]:
        if self._module is not None:
            raise RuntimeError("DPSGD.setup called twice: one DPSGD trains once")
        if math.isinf(self.max_grad_norm) and self.noise_multiplier > 0:
            raise ValueError("DP-SGD noise needs a finite max_grad_norm (its std is their product)")
        device = next(model.parameters()).device
        noise = torch.Generator(device=device).manual_seed(self.noise_seed)
        # Opacus samples indices; the workload indexes its own (on-device) tensors with them.
        loader = DataLoader(
            TensorDataset(torch.arange(n)), batch_size=batch_size, generator=generator
        )
        with warnings.catch_warnings():  # fedsim seeds its noise on purpose: no secure RNG
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=self.accountant_name)
            engine.accountant = self.accountant  # the client's history so far
            module, dp_optimizer, dp_loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=min(self.max_grad_norm, NO_CLIP),
                poisson_sampling=self.poisson,
                noise_generator=noise,
            )
        self._module = module
        if self.poisson:  # the DPDataLoader draws with the loader's (seeded) generator
            self._batches = dp_loader.batch_sampler
        else:
            self._shuffled = (n, batch_size, generator)
        return module, dp_optimizer

    def passes(
        self, epochs: int, steps: int | None, device: torch.device
    ) -> Iterator[list[Tensor]]:
        """Poisson batches, ceil(n / batch_size) to a pass; or the plain shuffled batches."""
        if self._shuffled is not None:
            n, batch_size, generator = self._shuffled
            yield from shuffled_passes(n, batch_size, epochs, steps, generator, device)
            return
        if self._batches is None:
            raise RuntimeError("DPSGD.passes called before setup")
        per_pass = len(self._batches)
        remaining = steps if steps is not None else epochs * per_pass
        while remaining > 0:
            drawn = iter(self._batches)
            count = min(per_pass, remaining)
            yield [torch.tensor(next(drawn), dtype=torch.long, device=device) for _ in range(count)]
            remaining -= count

    @property
    def trained(self) -> bool:
        """Whether a workload trained through this object (it called ``setup``)."""
        return self._module is not None

    def history(self) -> list[HistoryEntry]:
        """The accountant's history, this call's steps included."""
        return [(float(s), float(q), int(k)) for s, q, k in self.accountant.history]

    def epsilon(self, delta: float) -> float:
        """ε spent over the whole history at ``delta`` (inf when there is no noise)."""
        return spent_epsilon(self.history(), delta, self.accountant_name)

    def close(self) -> None:
        """Take Opacus's hooks and per-sample gradients off the model (it serves other clients)."""
        if self._module is not None:
            self._module.cleanup()
            self._module = None


def spent_epsilon(history: Sequence[HistoryEntry], delta: float, accountant: Accountant) -> float:
    """ε of a DP-SGD history at ``delta``, by Opacus's accountant; inf without noise."""
    if not history:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in history):
        return math.inf
    acc = create_accountant(mechanism=accountant)
    acc.history = [tuple(entry) for entry in history]
    return float(acc.get_epsilon(delta))


def opacus_compatible(model: nn.Module, fix: bool) -> tuple[nn.Module, list[str]]:
    """The model Opacus can train privately, and what had to change (``fix``) to get it.

    Opacus needs per-sample gradients, which layers mixing samples (BatchNorm) do not have.
    Without ``fix`` such a model is refused with Opacus's reasons; with it, Opacus's
    ``ModuleValidator.fix`` replaces them (BatchNorm by GroupNorm) and the changes are listed.
    """
    if not ModuleValidator.validate(model, strict=False):
        return model, []
    if not fix:
        raise ValueError(
            f"Opacus cannot train this model privately: {_unsupported_layers(model)}. Replace "
            f"those layers in the workload's model (BatchNorm by GroupNorm), or set "
            f"privacy.fix_model: true to let Opacus replace them"
        )
    before = {name: type(m).__name__ for name, m in model.named_modules()}
    fixed = ModuleValidator.fix(model)
    left = ModuleValidator.validate(fixed, strict=False)
    if left:
        reasons = "; ".join(str(p) for p in left)
        raise ValueError(f"Opacus could not fix the model for private training: {reasons}")
    changes = [
        f"{name}: {before[name]} -> {type(m).__name__}"
        for name, m in fixed.named_modules()
        if name in before and before[name] != type(m).__name__
    ]
    return fixed, changes


def _unsupported_layers(model: nn.Module) -> str:
    """Each layer Opacus refuses, by name and type, with the first sentence of its reason."""
    found = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # containers: their layers are checked one by one
        for problem in ModuleValidator.validate(module, strict=False):
            reason = str(problem).split(". ")[0].rstrip(".")
            found.append(f"layer {name or '(model)'} ({type(module).__name__}): {reason}")
    return "; ".join(found) or "; ".join(map(str, ModuleValidator.validate(model, strict=False)))
