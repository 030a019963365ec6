"""Weighted soft labels: distil the teachers, less on samples where the student already beats them."""

from __future__ import annotations

from typing import Sequence

import torch

from amalgam.methods.base import StepInputs
from amalgam.methods.blocks import wsl_weights
from amalgam.methods.registry import register_method
from amalgam.methods.soft_targets import SoftTargets
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher


@register_method
class WeightedSoftLabels(SoftTargets):
    """Soft targets with WSL's per-sample weight (Zhou et al., ICLR 2021; shared/METHODS.md §10i).

    The teacher is the teachers' weighted mean in the union space (as ``soft-targets``, §10i's multi-teacher use).
    Each sample's distillation term is multiplied by ``w = 1 - exp(-l_s / l_t)``, from the student's and the
    teacher's cross-entropy on the label at temperature 1 (:func:`~amalgam.methods.blocks.wsl_weights`, no
    gradient through ``w``). Loss: ``CE(y, z_s) + soft_weight * tau^2 mean_i w_i KL_i``; defaults from the
    official ImageNet code (``tau = 2``, ``soft_weight = alpha = 2.5``).

    Deviation (ours): the paper has a label for every sample. Here most of the transfer set is unlabeled, so an
    unlabeled sample's label is the teachers' argmax (then ``l_t`` is the teachers' own confidence, and ``w``
    fades as the student grows more confident than they are).

    Args:
        temperature, weights, soft_weight, label_weight, target: as for ``soft-targets``.
    """

    name = "wsl"
    paper = ("Zhou, Song, Chen, Zhou, Wang, Yuan, Zhang. Rethinking Soft Labels for Knowledge Distillation: "
             "A Bias-Variance Tradeoff Perspective. ICLR 2021")
    summary = "Soft targets weighted per sample: less where the student already fits the label better than the teachers."

    def __init__(
        self,
        label_space: LabelSpace,
        teachers: Sequence[Teacher],
        temperature: float = 2.0,
        weights: Sequence[float] | None = None,
        soft_weight: float = 2.5,
        label_weight: float = 1.0,
        target: str = "soft",
    ) -> None:
        super().__init__(label_space, teachers, temperature, weights, soft_weight, label_weight, target)

    def sample_weights(self, step: StepInputs, teacher_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        teacher_probs = self.target(teacher_logits, step.images, temperature=1.0)
        labels = torch.where(step.labels >= 0, step.labels, teacher_probs.argmax(dim=-1))
        return wsl_weights(step.student_logits, teacher_probs, labels)
