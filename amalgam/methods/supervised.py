"""The reference every method is measured against: the student trained on labels alone."""

from __future__ import annotations

from typing import Sequence

import torch

from amalgam.methods.base import Method, StepInputs
from amalgam.methods.blocks import masked_cross_entropy
from amalgam.methods.registry import register_method
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher


@register_method
class Supervised(Method):
    """Cross-entropy on the labeled samples; the teachers are ignored.

    With ``labeled_fraction=1`` it is the supervised ceiling for a student and budget; with a small fraction,
    the floor a method must beat. It also trains the demo zoo's teachers.
    """

    name = "supervised"
    paper = "Reference: no teachers, labels only"
    summary = "Train the student on the labeled fraction only (a reference, not amalgamation)."
    uses_teachers = False

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher]) -> None:
        super().__init__(label_space, teachers)

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        return {"labels": masked_cross_entropy(step.student_logits, step.labels)}
