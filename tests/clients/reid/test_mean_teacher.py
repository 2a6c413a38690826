"""The mean teacher's EMA (notes/workloads-precise.md §1.2: α_t = min(1 − 1/(t+1), 0.999))."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clients.reid import mean_teacher


def net(weight: float) -> nn.Module:
    model = nn.BatchNorm1d(1)
    with torch.no_grad():
        model.weight.fill_(weight)
    return model


def test_the_first_step_copies_the_student_then_the_average_takes_over() -> None:
    # Prepare: a teacher saved with weight 0 (as if drawn apart), students of weights 1 then 3
    state: dict[str, torch.Tensor] = {}
    mean_teacher.save(net(0.0), state)
    teacher = mean_teacher.teacher_of(net(5.0), state)  # the saved entries win over the copy
    assert float(teacher.weight) == 0.0

    # Execute / Assert: α_0 = 0 (the student), α_1 = 1/2, α_2 = 2/3
    mean_teacher.update(teacher, net(1.0), state, momentum=0.999)
    assert float(teacher.weight) == 1.0
    mean_teacher.update(teacher, net(3.0), state, momentum=0.999)
    assert float(teacher.weight) == 2.0
    mean_teacher.update(teacher, net(5.0), state, momentum=0.999)
    assert float(teacher.weight) == (2 / 3) * 2.0 + (1 / 3) * 5.0
    assert int(state[mean_teacher.STEP]) == 3


def test_the_momentum_caps_the_average_and_integer_buffers_are_copied() -> None:
    state = {mean_teacher.STEP: torch.tensor(10_000)}
    teacher = mean_teacher.teacher_of(net(0.0), state)  # nothing saved yet: a copy
    student = net(1.0)
    student.num_batches_tracked.fill_(7)
    mean_teacher.update(teacher, student, state, momentum=0.9)
    assert float(teacher.weight) == pytest.approx(0.1)  # α = min(1 − 1/10001, 0.9) = 0.9
    assert int(teacher.num_batches_tracked) == 7
    assert not any(q.requires_grad for q in teacher.parameters())
