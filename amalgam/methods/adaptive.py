"""Adaptive distillation: one distillation path per teacher, the paths' weights adjusted while training."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from amalgam.errors import MethodError
from amalgam.methods.base import Method, StepInputs
from amalgam.methods.blocks import alignment_weights, masked_cross_entropy, mean_over_processes, teacher_kd_terms
from amalgam.methods.registry import register_method
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher

WEIGHTINGS = ("alignment", "uncertainty", "equal")


@register_method
class AdaptivePathWeights(Method):
    """Weight each teacher's distillation path adaptively (Chennupati et al., BMVC 2021; shared/METHODS.md §10g).

    Paths: one KD term per teacher over that teacher's classes (the logit paths; hint paths at several depths
    come with the feature methods). Loss: ``label_weight * CE(y, z) + sum_p lambda_p L_p`` with

    - ``weighting="alignment"`` (the default; the paper's own rule was not read, this is the spec's inferred
      version): ``lambda_p ~ max(0, cos(grad L_p, grad L_task))`` normalised to sum to ``P``, as an exponential
      moving average (``momentum``) over steps, so a path whose gradient conflicts with the labels' gets weight 0.
      Deviation (ours, for cost): gradients are taken with respect to the student's logits on the batch's labeled
      rows, not its parameters (one ``autograd.grad`` per path, no extra backward through the body). Batches
      without labeled rows keep the weights. In a distributed run the weights are averaged over processes.
    - ``"uncertainty"`` (Kendall et al.): ``sum_p exp(-2 s_p) L_p / 2 + s_p`` with a learned ``s_p = log sigma_p``.
      (In a distributed run ``s_p`` is not synchronised across processes: use one process or ``alignment``.)
    - ``"equal"``: ``lambda_p = 1``.

    GradNorm, the spec's third option, comes with the multi-head students.
    """

    name = "adaptive-weights"
    paper = ("Chennupati, Kamani, Cheng, Chen. Adaptive Distillation: Aggregating Knowledge from Multiple Paths for "
             "Efficient Distillation. BMVC 2021")
    summary = "One distillation path per teacher, weighted by how well its gradient agrees with the labels'."
    requires_labels = True

    def __init__(
        self,
        label_space: LabelSpace,
        teachers: Sequence[Teacher],
        weighting: str = "alignment",
        temperature: float = 4.0,
        momentum: float = 0.9,
        label_weight: float = 1.0,
    ) -> None:
        super().__init__(label_space, teachers)
        if weighting not in WEIGHTINGS:
            raise MethodError(f"adaptive-weights: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if temperature <= 0 or not 0 <= momentum < 1:
            raise MethodError(f"adaptive-weights: needs temperature > 0 and 0 <= momentum < 1, got {temperature}, "
                              f"{momentum}")
        self.weighting, self.temperature = weighting, float(temperature)
        self.momentum, self.label_weight = float(momentum), float(label_weight)
        self.register_buffer("path_weights", torch.ones(self.num_teachers))  # saved with checkpoints
        self.log_sigma = nn.Parameter(torch.zeros(self.num_teachers)) if weighting == "uncertainty" else None

    def update_alignment(self, student_logits: torch.Tensor, labels: torch.Tensor, task: torch.Tensor,
                         paths: Sequence[torch.Tensor]) -> None:
        """One EMA step of the alignment weights from this batch's labeled rows."""
        new = self.path_weights.clone()
        rows = labels >= 0
        if rows.any():
            task_grad = torch.autograd.grad(task, student_logits, retain_graph=True)[0][rows]
            path_grads = [torch.autograd.grad(p, student_logits, retain_graph=True)[0][rows] for p in paths]
            aligned = alignment_weights(path_grads, task_grad)
            if aligned is not None:
                new = aligned
        new = mean_over_processes(new)
        self.path_weights.mul_(self.momentum).add_((1.0 - self.momentum) * new)

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        logits = [out.logits for out in step.teacher_outputs]
        paths = teacher_kd_terms(step.student_logits, logits, self.indices(), self.temperature)
        task = masked_cross_entropy(step.student_logits, step.labels)
        if self.weighting == "uncertainty":
            distill = sum(0.5 * torch.exp(-2 * s) * p + s for s, p in zip(self.log_sigma, paths))
        else:
            if self.weighting == "alignment" and self.training and torch.is_grad_enabled():
                self.update_alignment(step.student_logits, step.labels, task, paths)
            distill = sum(w * p for w, p in zip(self.path_weights, paths))
        return {"paths": distill, "labels": self.label_weight * task}

    def end_epoch(self, student: nn.Module) -> dict[str, float]:
        weights = (torch.exp(-2 * self.log_sigma.detach()) if self.log_sigma is not None else self.path_weights)
        return {f"path_weight/{name}": float(w) for name, w in zip(self.teacher_names, weights)}
