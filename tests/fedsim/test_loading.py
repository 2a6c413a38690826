"""``load_entries`` against ``load_state_dict(strict=False)``, whose work it shortcuts, and the
client's loads it skips."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from torch import nn

from fedsim import client_app, wire
from fedsim.loading import _plain, load_entries
from tests.engines import ROOT


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


# ---- a client's loads: skipped after a report that only read the model -----------------------


class Reader:
    """An exchange that reads the model and records the first weight it found there."""

    everyone = True

    def __init__(self, name: str, keeps_model: bool, changes: bool = False) -> None:
        self.name, self.keeps_model, self.changes = name, keeps_model, changes
        self.seen: list[float] = []

    def report(self, model: nn.Module, data: Any, state: Any, config: Any) -> Any:
        weight = next(model.parameters())
        self.seen.append(float(weight.detach().flatten()[0]))
        if self.changes:  # a report that trains, say
            with torch.no_grad():
                weight.add_(1.0)
        return {"x": torch.ones(1)}, {}


def test_a_client_skips_loading_the_model_it_holds_as_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the quickstart's client runtime (its own: another name), with three exchanges
    text = (ROOT / "scenarios" / "quickstart.yaml").read_text().replace("quickstart", "loads")
    rt = client_app.runtime(text)
    reader, changer = Reader("reader", keeps_model=True), Reader("changer", False, changes=True)
    undeclared = Reader("undeclared", keeps_model=False)
    monkeypatch.setattr(rt, "exchanges", {e.name: e for e in (reader, changer, undeclared)})
    loads: list[int] = []

    def counted(model: nn.Module, entries: dict[str, torch.Tensor]) -> None:
        loads.append(len(entries))
        load_entries(model, entries)

    monkeypatch.setattr(client_app, "load_entries", counted)
    shared = {k: torch.full_like(v, 0.5) for k, v in rt.model.state_dict().items()}
    first, second = ArrayRecord(shared), ArrayRecord({k: v + 1 for k, v in shared.items()})

    def report(name: str, record: ArrayRecord) -> float:
        config = ConfigRecord({"scenario": text, "server-round": 1, wire.EXCHANGE: name})
        context = Context(1, 1, {"partition-id": 0, "num-partitions": 10}, RecordDict(), {})
        client_app._report(0, RecordDict({wire.ARRAYS: record, "config": config}), context)
        return float(loads.pop()) if loads else 0.0

    # Execute, Assert: a load skipped only after a report that keeps the model, same record
    assert report("reader", first) > 0  # the first call loads
    assert report("reader", first) == 0  # the model holds it as sent: no copy
    assert report("undeclared", first) == 0  # still as sent; this one may change it, though
    assert report("reader", first) > 0  # so the next call loads
    assert report("reader", second) > 0  # another record: loaded
    assert report("changer", second) == 0  # held as sent; then changed, undeclared
    assert report("reader", second) > 0  # reloaded
    assert reader.seen == [0.5, 0.5, 0.5, 1.5, 1.5] and changer.seen == [1.5]
