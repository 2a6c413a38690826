"""The `min` rule: the gradient of the objective whose value is lowest."""

from __future__ import annotations

import pytest
import torch

import strategies  # noqa: F401  (registers the aggregators)
from strategies import aggregate
from strategies.pipeline import RoundInfo


def test_min_follows_the_lowest_objective_and_breaks_ties_by_client_id() -> None:
    # Prepare: client 12 has the lowest value; 11 and 13 tie for second place
    updates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    info = RoundInfo(1, (11, 12, 13), torch.ones(3), objectives=torch.tensor([0.5, -1.0, 0.5]))
    tied = RoundInfo(1, (13, 11, 12), torch.ones(3), objectives=torch.tensor([0.5, 0.5, 3.0]))

    # Execute / Assert
    assert torch.equal(aggregate("min", updates, info), torch.tensor([0.0, 1.0]))
    # rows of clients 13 and 11 tie: client 11's row (the second) wins whatever the order
    assert torch.equal(aggregate("min", updates, tied), torch.tensor([0.0, 1.0]))


def test_min_without_objective_values_says_which_workload_supplies_them() -> None:
    with pytest.raises(ValueError, match="only the mbo workload"):
        aggregate("min", torch.ones(3, 2), RoundInfo.uniform(3))
