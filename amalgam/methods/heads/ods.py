"""Distillation on inputs perturbed to make the teachers disagree (output-diversified sampling), per member."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Sequence

import torch

from amalgam.methods.base import Batch, Needs, StepInputs, StudentForward
from amalgam.methods.losses import kd_loss, label_cross_entropy
from amalgam.methods.heads.members import PerTeacherHeads
from amalgam.methods.registry import register_method
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher


def ods_perturbation(images: torch.Tensor, logits_of: Callable[[torch.Tensor], torch.Tensor], temperature: float,
                     step_size: float, confidence: bool = False) -> torch.Tensor:
    """One output-diversified sampling step (§8): ``clip(x + eta * v)``, ``v = sqrt(D) g / ||g||`` per sample,
    ``g = grad_x sum(w * softmax(logits_of(x) / tau))`` with ``w ~ U[-1, 1]`` per sample and class, ``D`` the
    number of values of an image (so the perturbation's per-value RMS is ``eta``); ``confidence`` (ConfODS)
    scales each sample's step by the teacher's top probability."""
    x = images.detach().requires_grad_(True)
    probs = (logits_of(x) / temperature).softmax(dim=-1)
    directions = torch.empty_like(probs).uniform_(-1.0, 1.0)
    (gradient,) = torch.autograd.grad((directions * probs).sum(), x)
    shape = (-1,) + (1,) * (images.ndim - 1)
    norm = gradient.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
    step = step_size * math.sqrt(images[0].numel()) * gradient / norm
    if confidence:
        step = step * probs.max(dim=-1).values.detach().view(shape)
    return (images + step).clamp(0.0, 1.0).detach()


@register_method
class OutputDiversifiedSampling(PerTeacherHeads):
    """KD from an ensemble on ODS-perturbed inputs, one student member per teacher (Nam, Yoon, Lee, Lee, NeurIPS
    2021; shared/METHODS.md §8).

    Per batch a teacher ``m`` is drawn at random and the batch is moved by :func:`ods_perturbation` along the
    input gradient of a random projection of that teacher's softened output, a step of RMS ``eta = 1/255`` per
    value: inputs where the teachers' predictions change, and so where they disagree. Member ``j`` of the
    student (head ``j`` on the shared body) learns teacher ``j`` on the perturbed batch ``x~``:

        ``sum_j [(1 - alpha) CE(y, S_j(x~)) + alpha tau^2 KL(softmax(T_j(x~) / tau) || softmax(S_j(x~) / tau))]``

    ``perturbation`` picks ``"ods"``, ``"conf-ods"`` (the step scaled by teacher ``m``'s top probability),
    ``"gaussian"`` (``eta`` times standard noise, the paper's baseline) or ``"none"`` (per-member KD on the clean
    batch). Faithful to the official code: the perturbation, ``eta``, ``(alpha, tau) = (0.9, 4)``. Deviations:
    the members are heads on one shared body (the paper's student is a BatchEnsemble, rank-1 fast weights per
    member); the cross-entropy is on the perturbed batch (one student forward per step, not two: ``x~`` is
    within ``eta`` RMS of ``x``) and only on the labeled fraction; teachers of other label spaces are placed in
    the union space. The teachers run live on every perturbed batch (cached outputs are of clean images).

    Args:
        temperature: ``tau``.
        alpha: the KD term's share.
        step_size: ``eta`` (pixel units, images in ``[0, 1]``).
        perturbation: ``"ods"``, ``"conf-ods"``, ``"gaussian"`` or ``"none"``.
        head_hidden: width of a hidden layer in each member head (0: linear heads).
    """

    name = "ods"
    paper = "Nam, Yoon, Lee, Lee. Diversity Matters When Learning From Ensembles. NeurIPS 2021"
    summary = "Per-teacher student heads distilled on inputs perturbed where the teachers disagree (ODS)."

    @dataclass
    class Options(PerTeacherHeads.Options):
        """``temperature``: ``tau``; ``alpha``: the KD term's share; ``step_size``: ``eta``; ``perturbation``:
        how the batch is moved (see the class)."""

        temperature: float = 4.0
        alpha: float = 0.9
        step_size: float = 1.0 / 255.0
        perturbation: Literal["ods", "conf-ods", "gaussian", "none"] = "ods"

        def __post_init__(self) -> None:
            super().__post_init__()
            self.require(self.temperature > 0 and 0.0 <= self.alpha <= 1.0 and self.step_size >= 0,
                         f"need temperature > 0, alpha in [0, 1] and step_size >= 0; got {self.temperature}, "
                         f"{self.alpha}, {self.step_size}")

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        o = self.options
        self.temperature, self.alpha, self.step_size = float(o.temperature), float(o.alpha), float(o.step_size)
        self.perturbation = o.perturbation
        self.teachers = tuple(teachers)  # a tuple: used live, never saved or optimised with the method

    def needs(self) -> Needs:
        return replace(super().needs(), teacher_signals="live")

    def perturb(self, images: torch.Tensor) -> torch.Tensor:
        """The batch moved where a randomly drawn teacher's output changes (or by noise, or not at all)."""
        if self.perturbation == "none" or self.step_size == 0:
            return images
        if self.perturbation == "gaussian":
            return (images + self.step_size * torch.randn_like(images)).clamp(0.0, 1.0)
        teacher = self.teachers[int(torch.randint(len(self.teachers), ()))]
        return ods_perturbation(images, teacher.differentiable_logits, self.temperature, self.step_size,
                                confidence=self.perturbation == "conf-ods")

    def step(self, batch: Batch, student: StudentForward) -> dict[str, torch.Tensor]:
        """The student's forward and the loss on the perturbed batch (:meth:`perturb`, in full precision even
        when the step runs under mixed-precision autocast)."""
        with torch.autocast(batch.images.device.type, enabled=False):
            images = self.perturb(batch.images)
        logits, features = student(images)
        return self.loss(StepInputs.of(batch, logits, features, images))

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        heads = self.head_outputs(step)
        teacher_logits = [teacher(step.images).logits for teacher in self.teachers]  # on the perturbed batch
        targets = self.member_targets(teacher_logits, self.temperature)
        members = [heads[name] for name in self.head_names]
        losses = {"soft": self.alpha * sum(kd_loss(z, p, self.temperature) for z, p in zip(members, targets))}
        if self.alpha < 1:
            losses["labels"] = (1 - self.alpha) * sum(label_cross_entropy(z, step.labels, step.label_mix) for z in members)
        return losses
