"""The reference every method is measured against: the student trained on labels alone."""

from __future__ import annotations

import torch

from amalgam.methods.base import Method, Needs, StepInputs
from amalgam.methods.losses import label_cross_entropy
from amalgam.methods.registry import register_method


@register_method
class Supervised(Method):
    """Cross-entropy on the labeled samples; the teachers are ignored.

    With ``labeled_fraction=1`` it is the supervised ceiling for a student and budget; with a small fraction,
    the floor a method must beat. It also trains the demo zoo's teachers.
    """

    name = "supervised"
    paper = "Reference: no teachers, labels only"
    summary = "Train the student on the labeled fraction only (a reference, not amalgamation)."

    def needs(self) -> Needs:
        return Needs(teacher_signals="none")

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        return {"labels": label_cross_entropy(step.student_logits, step.labels, step.label_mix)}
