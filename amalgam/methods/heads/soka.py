"""Collaboration by competition: task heads compete for a shared body, with GradNorm-balanced task weights."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from amalgam.errors import MethodError
from amalgam.methods.base import Method, Needs, Options, Setup, StepInputs
from amalgam.methods.features.layers import LayerPairs, adapter, common_map
from amalgam.methods.heads.members import member_head_names
from amalgam.methods.losses import kd_loss
from amalgam.methods.registry import register_method
from amalgam.students.heads import Head
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher

SHARED = "body"  # the student's part whose output (the pooled feature) feeds every head


def gradnorm_loss(weights: torch.Tensor, gradient_norms: torch.Tensor, losses: torch.Tensor,
                  initial_losses: torch.Tensor, alpha: float) -> torch.Tensor:
    """GradNorm's ``sum_t |G_t - sg[mean(G) r_t^alpha]|`` with ``G_t = w_t ||grad L_t||`` and ``r_t`` the
    task's loss ratio ``L_t / L_t(0)`` over the mean ratio; only ``weights`` carry a gradient.

    >>> w = torch.tensor([0.5, 0.5], requires_grad=True)
    >>> gradnorm_loss(w, torch.tensor([2.0, 4.0]), torch.ones(2), torch.ones(2), 1.5).item()  # G = (1, 2), mean 1.5
    1.0
    """
    ratios = (losses / initial_losses).detach()
    ratios = ratios / ratios.mean()
    norms = weights * gradient_norms.detach()
    return (norms - (norms.mean() * ratios**alpha).detach()).abs().sum()


def scale_gradient(tensor: torch.Tensor, factor: float) -> None:
    """Whatever reaches ``tensor``'s producers through it is multiplied by ``factor`` (a tensor hook)."""
    if tensor.requires_grad:
        tensor.register_hook(lambda grad: grad * factor)


@register_method
class SelfCoordinatedAmalgamation(Method):
    """Collaboration by competition (SOKA-Net; Luo et al., ECCV 2020; shared/METHODS.md §5, from the KamalEngine
    reproduction).

    Teachers of different tasks (label spaces) give one student a head per task on a shared body. With task
    losses ``L_t = tau^2 KL(softmax(z_t / tau) || softmax(head_t / tau))`` and task weights ``w`` (init 1/T):

    - competition: the heads learn ``sum_t w_t L_t``;
    - collaboration: the shared body learns ``collaboration_weight * sum_t w_t L_t`` plus the fusion term
      ``feature_weight * MSE(F_s, sum_t Omega_t * Q_t(F_t))``, with ``F`` the deepest stage maps, ``Q_t`` a 1x1
      convolution to the student's width (each teacher map resized to the student's size), ``Omega`` element-wise
      fusion weights (uniform random init);
    - balancing (after ``warmup_steps``): ``w`` learns GradNorm's :func:`gradnorm_loss` (``alpha = 1.5``), with
      ``G_t`` the norm of ``L_t``'s gradient at the shared feature and ``L_t(0)`` the first step's losses, then
      is clamped at 0 and renormalised to sum 1 (as the reproduction, not GradNorm's sum T).

    Deviations: the three sub-steps are one optimizer step (their gradients at the same parameters, separated
    as specified: the heads receive the task gradient unscaled, the body ``collaboration_weight`` times it, by a
    gradient hook on the shared feature; ``w`` only GradNorm's); the task losses are KD on class probabilities
    (§5's tasks are dense regressions with MSE); ``G_t`` is taken at the shared pooled feature, not at the
    last shared layer's weights; there is no stopping criterion for the alternation (each step does all
    three). The student is scored and served by the head of teacher ``main_task``.

    Args:
        temperature: ``tau``.
        collaboration_weight: the share of the task gradient the shared body receives (0.05).
        feature_weight: weight of the fusion term (0: none).
        alpha: GradNorm's asymmetry.
        warmup_steps: training steps with fixed task weights before balancing starts.
        main_task: index of the teacher whose head the student serves.
    """

    name = "soka"
    paper = ("Luo, Pan, Wang, Wang, Tang, Song. Collaboration by Competition: Self-coordinated Knowledge "
             "Amalgamation for Multi-talent Student Learning. ECCV 2020")
    summary = "One head per teacher's task on a shared body; task weights balanced by GradNorm; fused features."

    @dataclass
    class Options(Options):
        """``temperature``: ``tau``; ``collaboration_weight``: the body's share of the task gradient;
        ``feature_weight``: the fusion term's weight; ``alpha``: GradNorm's asymmetry; ``warmup_steps``: steps
        with fixed task weights; ``main_task``: the teacher whose head the student serves."""

        temperature: float = 4.0
        collaboration_weight: float = 0.05
        feature_weight: float = 1.0
        alpha: float = 1.5
        warmup_steps: int = 50
        main_task: int = 0

        def __post_init__(self) -> None:
            super().__post_init__()
            self.require(self.temperature > 0 and min(self.collaboration_weight, self.feature_weight,
                                                      self.warmup_steps) >= 0,
                         f"need temperature > 0 and collaboration_weight, feature_weight, warmup_steps >= 0; got "
                         f"{self.temperature}, {self.collaboration_weight}, {self.feature_weight}, "
                         f"{self.warmup_steps}")

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        o = self.options
        if not 0 <= o.main_task < len(teachers):
            raise MethodError(f"{self.name}: main_task must be in 0..{len(teachers) - 1}, got {o.main_task}")
        self.temperature, self.alpha = float(o.temperature), float(o.alpha)
        self.collaboration_weight, self.feature_weight = float(o.collaboration_weight), float(o.feature_weight)
        self.warmup_steps, self.main_task = int(o.warmup_steps), int(o.main_task)
        self.head_names = member_head_names(self.teacher_names)
        self.task_classes = [tuple(t.class_names) for t in teachers]
        self.task_weights = nn.Parameter(torch.full((len(teachers),), 1.0 / len(teachers)))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("initial_losses", torch.full((len(teachers),), float("nan")))
        self.layers = LayerPairs(self.name, teachers, 1)
        self.flows = nn.ModuleList()  # Q_t, built by setup()
        self.fusion = nn.Parameter(torch.empty(0))  # Omega, T x C x H x W, built by setup()

    def needs(self) -> Needs:
        features = self.layers.needs() if self.feature_weight > 0 else Needs()  # F_s and each F_t
        return replace(features, heads=tuple(Head(name, classes) for name, classes in zip(self.head_names,
                                                                                      self.task_classes)),
                       serve=self.head_names[self.main_task], student_parts=(SHARED,))

    def setup(self, ctx: Setup) -> None:
        if self.feature_weight > 0:
            self.layers.student = list(ctx.student_stages)
            student_map = ctx.student_features[self.layers.student[0]]
            self.flows = nn.ModuleList(adapter(common_map(out.features[taps[0]]).shape[1], student_map.shape[1])
                                       for out, taps in zip(ctx.teacher_outputs, self.layers.teacher))
            self.fusion = nn.Parameter(torch.rand(self.num_teachers, *student_map.shape[1:]))

    @torch.no_grad()
    def normalized_weights(self) -> torch.Tensor:
        """``w`` clamped at 0 and renormalised to sum 1 (in place: what the balancing step ends with)."""
        self.task_weights.clamp_(min=0.0)
        self.task_weights.div_(self.task_weights.sum().clamp_min(1e-12))
        return self.task_weights.detach().clone()

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        heads = self.head_outputs(step)
        weights = self.normalized_weights()
        shared = step.student_features[SHARED]
        task_losses = torch.stack([
            kd_loss(heads[name], (out.logits.float() / self.temperature).softmax(dim=-1),
                    self.temperature)
            for name, out in zip(self.head_names, step.teacher_outputs)])
        losses = {}
        if self.training:
            if torch.isnan(self.initial_losses).any():
                self.initial_losses.copy_(task_losses.detach())
            if self.steps >= self.warmup_steps and shared.requires_grad:
                norms = torch.stack([torch.autograd.grad(loss, shared, retain_graph=True)[0].norm()
                                     for loss in task_losses])
                losses["gradnorm"] = gradnorm_loss(self.task_weights, norms, task_losses, self.initial_losses,
                                                   self.alpha)
            self.steps += 1
            scale_gradient(shared, self.collaboration_weight)  # the body's share; the heads keep the whole
        losses["tasks"] = (weights * task_losses).sum()
        if self.feature_weight > 0:
            student_map = step.student_features[self.layers.student[0]]
            fused = sum(omega * q(common_map(out.features[taps[0]], student_map.shape[-2:]).to(student_map.dtype))
                        for omega, q, out, taps in zip(self.fusion, self.flows, step.teacher_outputs,
                                                        self.layers.teacher))
            losses["fusion"] = self.feature_weight * F.mse_loss(student_map.float(), fused.float())
        return losses

    def end_epoch(self, student: nn.Module) -> dict[str, float]:
        return {f"task_weight/{name}": float(w) for name, w in zip(self.teacher_names, self.normalized_weights())}
