"""``load_entries`` against ``load_state_dict(strict=False)``, whose work it shortcuts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from fedsim.loading import _plain, load_entries


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def entries_of(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(t.shape, generator=generator).to(t.dtype) if t.is_floating_point() else t
        for name, t in model.state_dict().items()
    }


def loaded_both_ways(
    build: Callable[[], nn.Module], entries: dict[str, torch.Tensor]
) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    fast = build()
    torch.manual_seed(0)
    reference = build()
    load_entries(fast, entries)
    reference.load_state_dict(entries, strict=False)
    return fast, reference


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)


def test_a_plain_model_is_loaded_as_load_state_dict_loads_it() -> None:
    torch.manual_seed(0)
    entries = entries_of(mlp(), seed=1)
    del entries["3.bias"]  # a missing entry keeps its value
    entries["not.in.model"] = torch.ones(5)  # an unknown one is ignored
    fast, reference = loaded_both_ways(mlp, entries)
    assert _plain(fast)  # the shortcut was taken
    assert_same_state(fast, reference)
    assert torch.equal(fast.state_dict()["1.weight"], entries["1.weight"])


def test_a_model_with_its_own_loading_goes_through_load_state_dict() -> None:
    def with_norm() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))

    def hooked() -> nn.Module:
        model = mlp()
        model.register_load_state_dict_post_hook(lambda module, keys: calls.append(module))
        return model

    calls: list[nn.Module] = []
    assert not _plain(with_norm()) and not _plain(hooked())
    assert_same_state(*loaded_both_ways(with_norm, entries_of(with_norm(), seed=2)))
    fast, reference = loaded_both_ways(hooked, entries_of(mlp(), seed=3))
    assert_same_state(fast, reference)
    assert calls == [fast, reference]  # the hook ran for both


def test_a_shape_that_differs_raises_load_state_dicts_error() -> None:
    entries = entries_of(mlp(), seed=4)
    entries["1.weight"] = torch.zeros(3, 5)
    with pytest.raises(RuntimeError, match=r"size mismatch for 1\.weight"):
        load_entries(mlp(), entries)
