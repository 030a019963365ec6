"""Weighted soft labels: distil the teachers, less on samples where the student already beats them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from amalgam.methods.base import StepInputs
from amalgam.methods.registry import register_method
from amalgam.methods.targets.soft_targets import SoftTargets


def wsl_weights(student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights of weighted soft labels (WSL, shared/METHODS.md §10i), without gradient.

    ``w_i = 1 - exp(-max(0, l_s / (l_t + 1e-7)))`` with ``l_s = CE(y, softmax(z_s))`` and ``l_t = -log p_t[y]``
    at temperature 1: a sample the student already fits much better than the teacher gets a weight near 0.

    >>> wsl_weights(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([0]))  # l_s == l_t
    tensor([0.6321])
    """
    with torch.no_grad():
        student_loss = F.cross_entropy(student_logits.float(), labels, reduction="none")
        teacher_loss = -teacher_probs.float().gather(1, labels[:, None]).squeeze(1).clamp(min=1e-12).log()
        return 1.0 - torch.exp(-(student_loss / (teacher_loss + 1e-7)).clamp(min=0.0))


@register_method
class WeightedSoftLabels(SoftTargets):
    """Soft targets with WSL's per-sample weight (Zhou et al., ICLR 2021; shared/METHODS.md §10i).

    The teacher is the teachers' weighted mean in the union space (as ``soft-targets``, §10i's multi-teacher use).
    Each sample's distillation term is multiplied by ``w = 1 - exp(-l_s / l_t)``, from the student's and the
    teacher's cross-entropy on the label at temperature 1 (:func:`wsl_weights`, no
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
    summary = ("Soft targets weighted per sample: less where the student already fits the label better than the "
               "teachers.")

    @dataclass
    class Options(SoftTargets.Options):
        """Soft targets' options, with the defaults of WSL's official ImageNet code (``tau = 2``,
        ``soft_weight = alpha = 2.5``)."""

        temperature: float = 2.0
        soft_weight: float = 2.5

    def sample_weights(self, step: StepInputs, teacher_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        teacher_probs = self.target(teacher_logits, step.images, temperature=1.0)
        labels = torch.where(step.labels >= 0, step.labels, teacher_probs.argmax(dim=-1))
        return wsl_weights(step.student_logits, teacher_probs, labels)
