"""The target client's mean teacher (MMT style, one student): an EMA of its model, kept locally.

Follows ``notes/workloads-precise.md`` §1.2 (adaptation) with §1.3's simplification: one student
and its EMA teacher instead of MMT's two students and two teachers. The teacher's features give
the pseudo-labels and the classifiers' centroid rows; its predictions are soft targets (soft CE,
soft triplet) for the student. EMA weight ``α_t = min(1 − 1/(t+1), momentum)`` at step ``t``.
It predicts in eval mode (its running statistics, which follow the student's by the same EMA),
where MMT forwards its mean nets in train mode.

The teacher is a whole copy of the client's model (shared and local entries alike, as MMT's mean
nets), stored in the client's ``State`` under ``teacher.<entry>`` with its step count, so that it
survives rounds, checkpoints and resumes, and never leaves the client.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from clients.workload import State

PREFIX = "teacher."
STEP = "teacher_step"


def teacher_of(student: nn.Module, state: State) -> nn.Module:
    """The teacher as last saved in ``state``; a copy of ``student`` the first time."""
    teacher = copy.deepcopy(student)
    saved = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    if saved:
        teacher.load_state_dict(saved)
    for q in teacher.parameters():
        q.requires_grad_(False)
    return teacher.eval()


def save(teacher: nn.Module, state: State) -> None:
    """Keep the teacher's entries in the client's ``state`` (replacing, never editing in place)."""
    for k, v in teacher.state_dict().items():
        state[PREFIX + k] = v.detach().cpu().clone()


@torch.no_grad()
def update(teacher: nn.Module, student: nn.Module, state: State, momentum: float) -> None:
    """One EMA step of the teacher's float entries toward the student's; counts the step."""
    step = int(state.get(STEP, torch.tensor(0)))
    alpha = min(1.0 - 1.0 / (step + 1), momentum)
    ours = teacher.state_dict()
    for k, v in student.state_dict().items():
        if v.is_floating_point():
            ours[k].mul_(alpha).add_(v.detach(), alpha=1.0 - alpha)
        else:
            ours[k].copy_(v)
    state[STEP] = torch.tensor(step + 1)
