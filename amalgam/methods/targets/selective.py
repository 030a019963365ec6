"""Selective learning: per sample, learn from the teacher that is least uncertain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from amalgam.errors import MethodError
from amalgam.methods.base import Needs, Setup, StepInputs
from amalgam.methods.losses import least_entropy_teacher
from amalgam.methods.features.layers import (LayerOptions, LayerPairs, adapter, as_map, common_map,
                                             unit_norm_penalty)
from amalgam.methods.registry import register_method
from amalgam.methods.targets.soft_targets import WeightedTargets
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher


@register_method
class SelectiveLearning(WeightedTargets):
    """For each sample, distil only the teacher with the least prediction entropy (Shen et al., ICCV 2019, §4).

    The selected teacher's softened probabilities, placed in the union space, are the sample's target (the
    output-level term of §4's stage 1; KamalEngine pre-splits the data per teacher, which selects the same
    teacher for each sample). Entropy is computed at temperature 1 over each teacher's own classes.

    Feature alignment (§4's FAM, on with ``feature_weight > 0``): at ``feature_layers`` depths paired
    automatically (stage outputs at relative depths, :mod:`amalgam.methods.features.layers`), a 1x1 convolution per
    teacher and one for the student map both into a common width, and the student's aligned feature learns the
    selected teacher's: ``feature_weight * sum_b MSE(FAM_T[k*](F_k*), FAM_S(F_s)) + norm_weight * R`` with §4's
    unit-norm regulariser ``R`` on the teacher-side filters. Inferred or ours: the common width is half the
    student's width at that depth (§4's widths are halves of the teachers'); a teacher map is resized to the
    student's spatial size (ViT tokens become a grid first); the FAMs train in one parameter group at
    the run's ``parts_lr``, not at a learning rate per block. Not here: §4's dual-stage (component net) schedule.

    Args:
        normalize_entropy: divide each teacher's entropy by ``log C_k`` (an option of ours, off by default as in
            the paper), so teachers with more classes are not penalised for them.
        feature_weight: weight of the feature alignment (0: output level only, the default; see the benchmark).
        feature_layers: how many depths to align (the deepest included).
        student_layers, teacher_layers: explicit stage indices (student) and taps (per teacher) instead.
        norm_weight: weight of the regulariser ``R``.
        temperature, soft_weight, label_weight, target: as for ``soft-targets``.
    """

    name = "selective-learning"
    paper = ("Shen, Xue, Wang, Song, Sun, Song. Customizing Student Networks From Heterogeneous Teachers via "
             "Adaptive Knowledge Amalgamation. ICCV 2019")
    summary = "Per sample, distil only the teacher with the least prediction entropy."

    @dataclass
    class Options(LayerOptions, WeightedTargets.Options):
        """``normalize_entropy``, ``feature_weight``, ``norm_weight`` and the layers' options (see the class)."""

        normalize_entropy: bool = False
        feature_weight: float = 0.0
        feature_layers: int = 2
        norm_weight: float = 1.0

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        o = self.options
        self.normalize_entropy = bool(o.normalize_entropy)
        self.feature_weight, self.norm_weight = float(o.feature_weight), float(o.norm_weight)
        # layers are paired only when the alignment is on: models without stages can still select teachers
        self.layers = (LayerPairs(self.name, teachers, o.feature_layers, o.student_layers, o.teacher_layers)
                       if self.feature_weight > 0 else None)
        self.student_fams = nn.ModuleList()  # built by setup() from the probed shapes
        self.teacher_fams = nn.ModuleList()

    def needs(self) -> Needs:
        return self.layers.needs() if self.layers else Needs()

    def prepare(self, ctx: Setup) -> None:
        """Build the FAMs for the widths seen on the probe batch."""
        if self.layers is None:
            return
        self.layers.student = list(ctx.student_stages)
        widths = [as_map(ctx.student_features[j]).shape[1] for j in self.layers.student]
        common = [max(1, w // 2) for w in widths]
        self.student_fams = nn.ModuleList(adapter(w, c) for w, c in zip(widths, common))
        self.teacher_fams = nn.ModuleList(
            nn.ModuleList(adapter(as_map(out.features[tap]).shape[1], c) for tap, c in zip(taps, common))
            for out, taps in zip(ctx.teacher_outputs, self.layers.teacher)
        )

    def feature_alignment(self, step: StepInputs, chosen: torch.Tensor) -> torch.Tensor:
        """``sum_b`` mean over samples of the MSE between the student's aligned feature and its selected
        teacher's, plus ``norm_weight * R``."""
        total = step.student_logits.new_zeros(())
        for b, j in enumerate(self.layers.student):
            student = self.student_fams[b](as_map(step.student_features[j]))
            per_teacher = []
            for k, out in enumerate(step.teacher_outputs):
                teacher = self.teacher_fams[k][b](common_map(out.features[self.layers.teacher[k][b]],
                                                             student.shape[-2:]))
                per_teacher.append((teacher - student).pow(2).flatten(1).mean(dim=1))
            total = total + torch.stack(per_teacher, dim=1).gather(1, chosen[:, None]).mean()
        penalty = unit_norm_penalty([fam.weight for fams in self.teacher_fams for fam in fams])
        return self.feature_weight * total + self.norm_weight * penalty

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        losses = super().loss(step)
        if self.layers is not None:
            if not len(self.student_fams):
                raise MethodError("selective-learning: feature alignment needs setup() (the engine calls it)")
            chosen = least_entropy_teacher([out.logits for out in step.teacher_outputs], self.normalize_entropy)
            losses["features"] = self.feature_alignment(step, chosen)
        return losses

    def teacher_weights(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor | None) -> torch.Tensor:
        chosen = least_entropy_teacher(teacher_logits, normalize=self.normalize_entropy)
        return F.one_hot(chosen, self.num_teachers).to(teacher_logits[0].dtype)
