"""DAML's Dirichlet mixup and distilled soft labels, and the open-set scores, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clients.daml import workload as daml_workload
from clients.daml.losses import (
    dirichlet_concentration,
    dirichlet_mixup,
    distillation,
    distilled_soft_labels,
)
from clients.daml.openset import UNKNOWN, fair_tau, h_score, open_set_metrics, oracle


def test_mixup_label_mass_sums_to_one_and_features_follow_the_same_weights() -> None:
    # Prepare: domain d's features are the constant d-th unit vector, labels one-hot
    rng = np.random.default_rng(0)
    batch, domains = 4000, 3
    features = [F.one_hot(torch.full((batch,), d), domains).float() for d in range(domains)]
    labels = [F.one_hot(torch.randint(0, 5, (batch,)), 5).float() for _ in range(domains)]

    # Execute
    mixed_f, mixed_y = dirichlet_mixup(features, labels, np.array([0.6, 0.2, 0.2]), rng)

    # Assert: f̃ is λ itself, each row of λ and of ỹ sums to one, E[λ] = α / Σα
    assert torch.allclose(mixed_y.sum(dim=1), torch.ones(batch), atol=1e-6)
    assert torch.allclose(mixed_f.sum(dim=1), torch.ones(batch), atol=1e-6)
    assert torch.allclose(mixed_f.mean(dim=0), torch.tensor([0.6, 0.2, 0.2]), atol=0.02)


def test_concentration_favours_the_own_domain_in_meta_train_and_the_others_in_meta_test(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The own domain's concentration is the first argument, at the expert's index
    assert dirichlet_concentration(1, 3, 0.6, 0.2).tolist() == [0.2, 0.6, 0.2]

    # Prepare: record the α the workload mixes with for each expert, in both phases
    seen: list[tuple[bool, list[float]]] = []
    real = daml_workload.dirichlet_mixup

    def spy(features, labels, alpha, rng):  # type: ignore[no-untyped-def]
        seen.append((phase, alpha.tolist()))
        return real(features, labels, alpha, rng)

    monkeypatch.setattr(daml_workload, "dirichlet_mixup", spy)
    workload = daml_workload.DamlWorkload(
        params=daml_workload.DamlParams(mixup="within", batch_size=4)
    )
    model = daml_workload.Experts(3, 2, 4, 3, 2)
    theta = dict(model.named_parameters())
    features = {(m, 0): torch.rand(4, 3) for m in range(3)}
    batch = [daml_workload.Batch(0, torch.rand(4, 2), torch.tensor([0, 1, 0, 1]))]

    # Execute
    for phase in (False, True):
        workload.mixup_loss(model, theta, features, batch, None, 0, 3, swap=phase)

    # Assert: meta-train 0.6 at the expert's own domain, meta-test (swapped) 0.2 there
    assert seen[:3] == [(False, a) for a in ([0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6])]
    assert seen[3:] == [(True, a) for a in ([0.2, 0.6, 0.6], [0.6, 0.2, 0.6], [0.6, 0.6, 0.2])]


def test_soft_labels_are_a_convex_mix_of_the_other_experts() -> None:
    a = torch.tensor([[2.0, 0.0]])
    b = torch.tensor([[0.0, 2.0]])
    soft = distilled_soft_labels([a, b], 2.0, np.random.default_rng(1))
    pi = np.random.default_rng(1).dirichlet([1.0, 1.0], size=1)[0]
    expected = pi[0] * F.softmax(a / 2, 1) + pi[1] * F.softmax(b / 2, 1)
    assert torch.allclose(soft, expected.float(), atol=1e-6)
    # KD of a student equal to the teacher mix's logits is zero
    assert float(distillation(torch.log(soft) * 2.0, soft, 2.0)) == pytest.approx(0.0, abs=1e-6)


def test_h_score_and_open_set_metrics_by_hand() -> None:
    # Prepare: 4 known samples (labels 0, 1, 0, 1), 2 unknown (classes 7 and 8); τ = 0.5
    probs = torch.tensor(
        [[0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.55, 0.45], [0.52, 0.48], [0.45, 0.55]]
    )
    # known: 1st right; 2nd right; 3rd wrong (1 vs 0); 4th predicts 0 for 1: wrong
    # unknown: 0.52 ≥ τ → accepted (wrong); 0.55 ≥ τ → accepted (wrong) → acc_unknown 0
    labels = torch.tensor([0, 1, 0, 1, UNKNOWN, UNKNOWN])
    classes = torch.tensor([0, 1, 0, 1, 7, 8])

    metrics = open_set_metrics(probs, labels, classes, 0.5)

    assert metrics["acc_known"] == pytest.approx(0.5)
    assert metrics["acc_unknown"] == pytest.approx(0.0)
    assert metrics["h_score"] == 0.0
    # τ = 0.53: the 5th is rejected, nothing else changes; H = 2·0.5·0.5 / 1 = 0.5
    at = open_set_metrics(probs, labels, classes, 0.53)
    assert at["acc_unknown"] == pytest.approx(0.5)
    assert at["h_score"] == pytest.approx(0.5)
    # class average: class 0 1/2, class 1 1/2, class 7 1, class 8 0 → 0.5
    assert at["class_avg_accuracy"] == pytest.approx(0.5)
    assert h_score(0.8, 0.4) == pytest.approx(2 * 0.32 / 1.2)


def test_fair_tau_is_the_source_quantile_and_the_oracle_is_named_and_searched_on_target() -> None:
    source = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.8, 0.2], [0.95, 0.05]])
    assert fair_tau(source, 0.25) == pytest.approx(0.7)
    probs = torch.tensor([[0.9, 0.1], [0.52, 0.48], [0.6, 0.4]])
    labels = torch.tensor([0, UNKNOWN, 0])
    found = oracle(probs, labels, torch.tensor([0, 5, 0]))
    # grid 0.52..0.9 in 10 steps: 0.5622 rejects the unknown and keeps both knowns: H = 1
    assert found["oracle_h_score"] == pytest.approx(1.0)
    assert 0.52 < found["oracle_tau"] <= 0.6
