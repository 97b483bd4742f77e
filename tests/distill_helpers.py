"""Shared by the distillation tests of every family: a few optimizer steps on the distillation loss alone."""

from __future__ import annotations

import torch


def kd_before_and_after(method, student, batch, lr: float, steps: int) -> tuple[float, float]:
    """The ``kd_action`` term before and after ``steps`` Adam steps (learning rate ``lr``) on ``method.loss``,
    training the student's parameters that require grad."""
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    first = method.loss(student, batch)["kd_action"].item()
    for _ in range(steps):
        opt.zero_grad()
        method.loss(student, batch)["loss"].backward()
        opt.step()
    return first, method.loss(student, batch)["kd_action"].item()
