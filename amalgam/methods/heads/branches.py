"""Multi-branch ensemble distillation: a student branch per teacher, the branches' ensemble learning the labels."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import nn

from amalgam.methods.base import Needs, Setup, StepInputs
from amalgam.methods.losses import feature_reconstruction, kd_loss, label_cross_entropy
from amalgam.methods.features.layers import LayerPairs, feature_vector
from amalgam.methods.heads.members import PerTeacherHeads
from amalgam.methods.registry import register_method
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher


@register_method
class MultiBranch(PerTeacherHeads):
    """Ensemble knowledge distillation into parallel branches (Asif, Tang, Harrer, ECAI 2020; shared/METHODS.md
    §10b, loss inferred).

    The student is a shared body (the timm model up to its pooled feature) and one branch per teacher: a hidden
    layer of ``branch_width`` (ReLU), whose output ``f_b`` is the branch's feature, then the branch's logits
    ``z_b`` over the union classes. Branch ``b`` learns teacher ``b``'s softened outputs (placed in the union
    label space) and, through a linear adapter ``a_b``, teacher ``b``'s last-stage feature ``F_b`` (averaged over
    positions); on the labeled fraction each branch and the branches' mean logits ``z_bar`` learn the labels:

        ``sum_b [kd_weight * KD(z_b, softmax(z_tb / tau)) + feature_weight * MSE(a_b(f_b), F_b)
        + label_weight * CE(y, z_b)] + label_weight * CE(y, z_bar)``

    Provenance: the abstract only; the loss, ``tau = 4`` and the unit weights are §10b's inferred form.
    Deviations and choices of ours: a branch is a hidden layer plus a classifier on the shared pooled feature
    (the paper's branches are deeper, their own convolutional blocks); the feature term is the mean squared
    error over the feature's elements, not the summed squared norm; the student serves the mean of the
    branches' probabilities (:meth:`Student.served`), not the softmax of their mean logits.

    Args:
        temperature: ``tau``.
        kd_weight, feature_weight, label_weight: ``lambda_kd``, ``lambda_f`` and the weight of the label terms.
        branch_width: width of each branch's hidden layer (its feature ``f_b``).
        teacher_layers: one tap per teacher (as a one-element list each) for ``F_b`` instead of its last stage.
    """

    name = "multi-branch"
    paper = ("Asif, Tang, Harrer. Ensemble Knowledge Distillation for Learning Improved and Efficient Networks. "
             "ECAI 2020")
    summary = "A student branch per teacher on a shared body; each learns its teacher, their ensemble the labels."

    @dataclass
    class Options(PerTeacherHeads.Options):
        """``temperature``: ``tau``; ``kd_weight``, ``feature_weight``, ``label_weight``: the terms' weights;
        ``branch_width``: each branch's hidden width (its feature ``f_b``); ``teacher_layers``: one tap per
        teacher for ``F_b``. The inherited ``head_hidden`` is unused: the branches' hidden width is
        ``branch_width``."""

        temperature: float = 4.0
        kd_weight: float = 1.0
        feature_weight: float = 1.0
        label_weight: float = 1.0
        branch_width: int = 128
        teacher_layers: Sequence[Sequence[str]] | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            self.require(self.temperature > 0 and self.branch_width >= 1
                         and min(self.kd_weight, self.feature_weight, self.label_weight) >= 0,
                         f"temperature and branch_width must be positive and the weights >= 0, got "
                         f"{self.temperature}, {self.branch_width}, {self.kd_weight}, {self.feature_weight}, "
                         f"{self.label_weight}")

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        o = self.options
        self.head_hidden = int(o.branch_width)
        self.temperature = float(o.temperature)
        self.kd_weight, self.feature_weight, self.label_weight = float(o.kd_weight), float(o.feature_weight), \
            float(o.label_weight)
        self.layers = LayerPairs(self.name, teachers, 1, teacher_layers=o.teacher_layers)  # the teachers' last stage
        self.adapters = nn.ModuleList()  # a_b, built by setup()

    def branch_parts(self) -> list[str]:
        """The student's parts whose outputs are the branches' features ``f_b``: each branch's hidden layer;
        none without the feature term."""
        return [f"{name}.hidden" for name in self.head_names] if self.feature_weight > 0 else []

    def needs(self) -> Needs:
        if self.feature_weight <= 0:
            return super().needs()
        return replace(super().needs(), teacher_taps=tuple(tuple(t) for t in self.layers.teacher),
                       student_parts=tuple(self.branch_parts()))

    def setup(self, ctx: Setup) -> None:
        """``a_b``: from the branch width to teacher ``b``'s feature width, as seen on the probe batch."""
        if self.feature_weight > 0:
            self.adapters = nn.ModuleList(
                nn.Linear(self.head_hidden, feature_vector(out.features[taps[0]], "mean").shape[1])
                for out, taps in zip(ctx.teacher_outputs, self.layers.teacher))

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        heads = self.head_outputs(step)
        branches = [heads[name] for name in self.head_names]
        targets = self.member_targets([out.logits for out in step.teacher_outputs], self.temperature)
        losses = {"soft": self.kd_weight * sum(kd_loss(z, p, self.temperature) for z, p in zip(branches, targets))}
        if self.feature_weight > 0:
            losses["features"] = self.feature_weight * sum(
                feature_reconstruction(adapter(step.student_features[branch]),
                                       feature_vector(out.features[taps[0]], "mean"))
                for adapter, branch, out, taps in zip(self.adapters, self.branch_parts(), step.teacher_outputs,
                                                      self.layers.teacher))
        if self.label_weight > 0:
            mean_logits = torch.stack(branches).mean(dim=0)
            losses["labels"] = self.label_weight * (sum(label_cross_entropy(z, step.labels, step.label_mix) for z in branches)
                                                    + label_cross_entropy(mean_logits, step.labels, step.label_mix))
        return losses
