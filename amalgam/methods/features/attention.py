"""Attention transfer from an expert teacher (CTKD), with CTKD's scratch teacher as an option."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Literal, Sequence

import torch
from torch import nn

from amalgam.errors import MethodError
from amalgam.methods.base import Needs, Setup, StepInputs
from amalgam.methods.losses import kd_loss, label_cross_entropy, least_entropy_teacher, normalized_distance
from amalgam.methods.features.layers import LayerOptions, LayerPairs, attention_map
from amalgam.methods.registry import register_method
from amalgam.methods.targets.soft_targets import SoftTargets
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher

def fresh_copy(model: nn.Module) -> nn.Module:
    """``model``'s architecture with newly initialised weights (every module's ``reset_parameters``)."""
    scratch = copy.deepcopy(model)
    for module in scratch.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return scratch


@register_method
class AttentionTransfer(SoftTargets):
    """Attention transfer from an expert teacher (CTKD: Zhao et al., arXiv 1907.09643; shared/METHODS.md §10d).

    At ``feature_layers`` paired depths ``j`` (stage outputs at relative depths, :class:`LayerPairs`), the
    student's spatial attention ``Q_s = vec(sum_c |A_c|^2)`` learns the expert teacher's:

        ``soft-targets' terms + beta * sum_j mean_i || Q_s,ij / ||Q_s,ij||_2 - Q_e,ij / ||Q_e,ij||_2 ||_2``

    With several teachers the expert of each sample is the teacher with the least prediction entropy
    (``expert="least-entropy"``, the default: with different label spaces, the teacher that knows the sample's
    class is the one whose attention is about that class), or every teacher, their distances averaged
    (``expert="mean"``).

    With ``scratch_teacher=True`` (off by default), CTKD's scratch teacher joins: a fresh copy of the
    student's architecture, trained at the same time by cross-entropy on the **labeled rows only** (it has no
    other signal), whose current softened outputs, without gradient, the student distils on every row:
    ``+ scratch_weight * tau^2 KL(softmax(sg[z_scr] / tau) || softmax(z_s / tau)) + CE(y, z_scr)``. It needs a
    labeled fraction; with the 2% of the benchmarks it learns from a few dozen images.

    Provenance: only CTKD's abstract was read (expert attention on critical regions, a scratch teacher trained
    simultaneously). Inferred (§10d): the attention map and its normalised L2 distance, ``tau = 4``,
    ``scratch_weight = 1``. Deviations and choices of ours:

    - ``beta = 5``, not attention transfer's 1000: that value goes with its code's mean of *squared*
      differences over positions; here the distance is the L2 norm of §10d (between 0 and sqrt(2) per sample),
      about 0.45 per informative depth on the demo teachers at the start, so 5 starts the term at about 4.5,
      the size of the soft-target term (about 6), instead of letting it dominate.
    - Each teacher's map is computed at its own resolution and resized to the student's spatial size at that
      depth (average-pooled down or bilinearly up; ViT tokens become a grid first). A depth where the student's
      map is 1 x 1 carries no attention (its normalised map is always 1) and adds 0.
    - The expert choice among several teachers and the union-space soft targets (in place of CE on all labels)
      are ours: CTKD has one expert teacher with the student's label space.
    - The scratch teacher has the student's architecture (re-initialised with each module's
      ``reset_parameters``) and trains with the student's optimiser; CTKD's choice of network is not known.

    Args:
        beta: weight of the attention term.
        expert: ``"least-entropy"`` or ``"mean"`` (see above).
        normalize_entropy: divide each teacher's entropy by ``log C_k`` when choosing the expert.
        feature_layers: how many depths to transfer (the deepest included).
        student_layers, teacher_layers: explicit stage indices (student) and taps (one list per teacher) instead.
        scratch_teacher: add CTKD's scratch teacher.
        scratch_weight: ``alpha``, weight of the student's distillation from it.
        temperature, weights, soft_weight, label_weight, target: as for ``soft-targets``.
    """

    name = "attention-transfer"
    paper = ("Zhao, Sun, Dong, Chen, Dong. Highlight Every Step: Knowledge Distillation via Collaborative Teaching. "
             "arXiv 1907.09643")
    summary = "The student's spatial attention learns the expert teacher's at paired depths, plus soft targets."

    @dataclass
    class Options(LayerOptions, SoftTargets.Options):
        """``beta``, ``expert``, ``normalize_entropy``, ``scratch_teacher``, ``scratch_weight``: see the class;
        the layers as in :class:`LayerOptions` (three depths by default)."""

        beta: float = 5.0
        expert: Literal["least-entropy", "mean"] = "least-entropy"
        normalize_entropy: bool = False
        feature_layers: int = 3
        scratch_teacher: bool = False
        scratch_weight: float = 1.0

        def __post_init__(self) -> None:
            super().__post_init__()
            self.require(self.beta >= 0 and self.scratch_weight >= 0,
                         f"beta and scratch_weight must be non-negative, got {self.beta}, {self.scratch_weight}")

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        o = self.options
        self.beta, self.expert = float(o.beta), o.expert
        self.normalize_entropy = bool(o.normalize_entropy)
        self.layers = LayerPairs(self.name, teachers, o.feature_layers, o.student_layers, o.teacher_layers)
        self.use_scratch, self.scratch_weight = bool(o.scratch_teacher), float(o.scratch_weight)
        self.scratch: nn.Module | None = None  # built from the student in setup()

    def needs(self) -> Needs:
        return replace(self.layers.needs(), labels=self.use_scratch)

    def prepare(self, ctx: Setup) -> None:
        if self.use_scratch and ctx.labeled is None:
            raise MethodError("attention-transfer: the scratch teacher learns from labels only; give the run a "
                              "labeled fraction or set scratch_teacher=False")
        # first: the scratch copy's initialisation takes the random numbers it took before anything else
        if self.use_scratch and self.scratch is None:
            self.scratch = fresh_copy(ctx.student)
        self.layers.student = list(ctx.student_stages)

    def attention_term(self, step: StepInputs) -> torch.Tensor:
        """``sum_j`` mean over samples of the normalised L2 distance to the expert's attention, before ``beta``."""
        chosen = (least_entropy_teacher([out.logits for out in step.teacher_outputs], self.normalize_entropy)
                  if self.expert == "least-entropy" else None)
        total = step.student_logits.new_zeros(())
        for j, stage in enumerate(self.layers.student):
            q_s = attention_map(step.student_features[stage])
            distances = torch.stack([
                normalized_distance(q_s, attention_map(out.features[self.layers.teacher[k][j]], q_s.shape[-2:]))
                for k, out in enumerate(step.teacher_outputs)
            ], dim=1)  # B x K
            per_sample = distances.mean(dim=1) if chosen is None else distances.gather(1, chosen[:, None])
            total = total + per_sample.mean()
        return total

    def scratch_terms(self, step: StepInputs) -> dict[str, torch.Tensor]:
        """The student's distillation from the scratch teacher (no gradient to it) and its own cross-entropy."""
        if self.scratch is None or step.images is None:
            raise MethodError("attention-transfer: the scratch teacher needs the student (setup()) and the "
                              "batch's images")
        scratch_logits = self.scratch(step.images)
        target = (scratch_logits.detach().float() / self.temperature).softmax(dim=-1)
        return {"scratch_kd": self.scratch_weight * kd_loss(step.student_logits, target, self.temperature),
                "scratch_labels": label_cross_entropy(scratch_logits, step.labels, step.label_mix)}

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        losses = super().loss(step)
        losses["attention"] = self.beta * self.attention_term(step)
        if self.use_scratch:
            losses.update(self.scratch_terms(step))
        return losses
