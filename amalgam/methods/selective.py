"""Selective learning: per sample, learn from the teacher that is least uncertain."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from amalgam.methods.blocks import least_entropy_teacher
from amalgam.methods.registry import register_method
from amalgam.methods.soft_targets import WeightedTargets
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher


@register_method
class SelectiveLearning(WeightedTargets):
    """For each sample, distil only the teacher with the least prediction entropy (Shen et al., ICCV 2019, §4).

    The selected teacher's softened probabilities, placed in the union space, are the sample's target (the
    output-level term of §4's stage 1; KamalEngine pre-splits the data per teacher, which selects the same
    teacher for each sample). Entropy is computed at temperature 1 over each teacher's own classes.

    Not yet here: §4's feature alignment modules (FAM) on the selected teacher's block features and the
    dual-stage (component net) schedule, which need feature taps on the student.

    Args:
        normalize_entropy: divide each teacher's entropy by ``log C_k`` (an option of ours, off by default as in
            the paper), so teachers with more classes are not penalised for them.
        temperature, soft_weight, label_weight, target: as for ``soft-targets``.
    """

    name = "selective-learning"
    paper = ("Shen, Xue, Wang, Song, Sun, Song. Customizing Student Networks From Heterogeneous Teachers via "
             "Adaptive Knowledge Amalgamation. ICCV 2019")
    summary = "Per sample, distil only the teacher with the least prediction entropy."

    def __init__(
        self,
        label_space: LabelSpace,
        teachers: Sequence[Teacher],
        normalize_entropy: bool = False,
        temperature: float = 4.0,
        soft_weight: float = 1.0,
        label_weight: float = 1.0,
        target: str = "soft",
    ) -> None:
        super().__init__(label_space, teachers, temperature, soft_weight, label_weight, target)
        self.normalize_entropy = bool(normalize_entropy)

    def teacher_weights(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor | None) -> torch.Tensor:
        chosen = least_entropy_teacher(teacher_logits, normalize=self.normalize_entropy)
        return F.one_hot(chosen, self.num_teachers).to(teacher_logits[0].dtype)
