"""Loading entries into a model: ``model.load_state_dict(entries, strict=False)``, faster.

A client loads the global model before every Message it serves. For a small model,
``load_state_dict``'s walk of the modules (a call per module, a dict per level) costs several
times the copy itself: 60 µs against 18 µs for the quickstart's MLP, 40 times a round. A model
made of plain modules, whose loading is nothing but a copy into each entry, gets the copies
directly; any other model (custom loading such as BatchNorm's, load or state-dict hooks,
extra state, lazy parameters, swapped tensors) goes through ``load_state_dict`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


def load_entries(model: nn.Module, entries: Mapping[str, Tensor]) -> None:
    """What ``model.load_state_dict(entries, strict=False)`` does: entries the model lacks are
    ignored, a shape that differs raises (``load_state_dict``'s own error)."""
    if not _plain(model):
        model.load_state_dict(entries, strict=False)
        return
    state = model.state_dict(keep_vars=True)
    pairs = [(state[name], tensor) for name, tensor in entries.items() if name in state]
    if any(into.shape != tensor.shape for into, tensor in pairs):
        model.load_state_dict(entries, strict=False)  # raises, naming the entry
        return
    with torch.no_grad():
        for into, tensor in pairs:
            into.copy_(tensor)


def _plain(model: nn.Module) -> bool:
    """Whether loading ``model`` is only copying into its entries (checked at every load: a
    hook may be added at any time, and the walk costs microseconds)."""
    if torch.__future__.get_swap_module_params_on_conversion():
        return False
    for module in model.modules():
        kind = type(module)
        if (
            kind._load_from_state_dict is not nn.Module._load_from_state_dict
            or kind.get_extra_state is not nn.Module.get_extra_state
            or module._load_state_dict_pre_hooks
            or module._load_state_dict_post_hooks
            or module._state_dict_pre_hooks
            or module._state_dict_hooks
        ):
            return False
    return True
