"""Adaptive distillation: one distillation path per teacher, the paths' weights adjusted while training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from amalgam.methods.base import Method, Needs, Options, StepInputs
from amalgam.methods.losses import label_cross_entropy, teacher_kd_terms
from amalgam.parallel import mean_over_processes
from amalgam.methods.registry import register_method
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher


def alignment_weights(path_gradients: Sequence[torch.Tensor], task_gradient: torch.Tensor) -> torch.Tensor | None:
    """Weights of loss paths from how well each path's gradient agrees with the task's (§10g, inferred).

    ``lambda_p ~ max(0, cos(g_p, g_task))``, normalised so the weights sum to the number of paths ``P``;
    ``None`` when no path agrees (the caller keeps its previous weights).

    >>> alignment_weights([torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])], torch.tensor([1.0, 1.0]))
    tensor([2., 0.])
    """
    cosines = torch.stack([F.cosine_similarity(g.flatten(), task_gradient.flatten(), dim=0) for g in path_gradients])
    agree = cosines.clamp(min=0.0)
    if agree.sum() <= 0:
        return None
    return agree * len(path_gradients) / agree.sum()


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

    @dataclass
    class Options(Options):
        """``weighting``: ``"alignment"``, ``"uncertainty"`` or ``"equal"`` (see the class); ``temperature``: the KD
        terms' ``tau``; ``momentum``: of the alignment weights' moving average; ``label_weight``: of the
        cross-entropy on labeled samples."""

        weighting: Literal["alignment", "uncertainty", "equal"] = "alignment"
        temperature: float = 4.0
        momentum: float = 0.9
        label_weight: float = 1.0

        def __post_init__(self) -> None:
            super().__post_init__()
            self.require(self.temperature > 0 and 0 <= self.momentum < 1,
                         f"needs temperature > 0 and 0 <= momentum < 1, got {self.temperature}, {self.momentum}")

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        o = self.options
        self.weighting, self.temperature = o.weighting, float(o.temperature)
        self.momentum, self.label_weight = float(o.momentum), float(o.label_weight)
        self.register_buffer("path_weights", torch.ones(self.num_teachers))  # saved with checkpoints
        self.log_sigma = nn.Parameter(torch.zeros(self.num_teachers)) if o.weighting == "uncertainty" else None

    def needs(self) -> Needs:
        return Needs(labels=True)

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

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        logits = [out.logits for out in step.teacher_outputs]
        paths = teacher_kd_terms(step.student_logits, logits, self.indices(), self.temperature)
        task = label_cross_entropy(step.student_logits, step.labels, step.label_mix)
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
