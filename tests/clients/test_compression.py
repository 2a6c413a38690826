"""Top-k sparsification of updates with error feedback."""

from __future__ import annotations

import math

import pytest
import torch

from clients.compression import topk_with_feedback
from fedsim.registry import COMPRESSORS, load_components

load_components()


def test_sent_plus_residual_is_the_sum_of_the_true_updates() -> None:
    g = torch.Generator().manual_seed(0)
    residual, sent_total, true_total = torch.zeros(50), torch.zeros(50), torch.zeros(50)
    for _ in range(7):
        update = torch.randn(50, generator=g, dtype=torch.float64).float()
        out = topk_with_feedback(update, residual, 5)
        assert int(out.support.sum()) == 5
        assert bool((out.sent[~out.support] == 0).all())
        assert out.residual is not None
        residual = out.residual
        sent_total += out.sent
        true_total += update
    torch.testing.assert_close(sent_total + residual, true_total, rtol=0, atol=1e-5)


def test_topk_sends_the_largest_entries_of_update_plus_residual() -> None:
    update = torch.tensor([0.1, -3.0, 0.5, 2.0])
    residual = torch.tensor([1.0, 0.0, 0.0, 0.0])
    out = topk_with_feedback(update, residual, 2)
    assert out.sent.tolist() == [0.0, -3.0, 0.0, 2.0]
    assert out.residual is not None
    assert out.residual.tolist() == pytest.approx([1.1, 0.0, 0.5, 0.0])
    no_feedback = topk_with_feedback(update, None, 1)
    assert no_feedback.residual is None and no_feedback.sent.tolist() == [0.0, -3.0, 0.0, 0.0]


def test_zeros_are_never_sent_even_when_k_exceeds_the_non_zeros() -> None:
    out = topk_with_feedback(torch.tensor([0.0, 1.0, 0.0, -2.0]), torch.zeros(4), 3)
    assert out.support.tolist() == [False, True, False, True]


def test_compressor_k_is_ceil_ratio_times_size_and_none_sends_everything() -> None:
    topk = COMPRESSORS.build("topk", ratio=0.01)
    out = topk.compress(torch.arange(1.0, 251.0), None)
    assert int(out.support.sum()) == math.ceil(0.01 * 250) == 3
    assert out.residual is not None and float(out.residual.sum()) == sum(range(1, 248))
    whole = COMPRESSORS.build("none").compress(torch.tensor([1.0, 0.0]), None)
    assert whole.sent.tolist() == [1.0, 0.0] and whole.residual is None
