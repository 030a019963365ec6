"""Learning from multiple experts (LFME): each teacher is an expert on its classes, weighted by how far the
student still is behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import nn

from amalgam.errors import MethodError
from amalgam.methods.base import LabeledSet, Method, Needs, Options, Setup, StepInputs
from amalgam.methods.losses import label_cross_entropy, teacher_kd_terms
from amalgam.methods.registry import register_method
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher, TeacherOutput


def self_paced_weight(teacher_accuracy: float, student_accuracy: float, theta: float = 0.3) -> float:
    """LFME's self-paced expert weight (shared/METHODS.md §10f).

    1 while the student is below ``theta`` of the expert's accuracy ``A``; then ``(A - a) / (A (1 - theta))``,
    down to 0 when the student matches the expert.

    >>> [self_paced_weight(1.0, a) for a in (0.2, 0.65, 1.0)]
    [1.0, 0.5, 0.0]
    """
    if teacher_accuracy <= 0 or student_accuracy < theta * teacher_accuracy:
        return 1.0
    return max(0.0, (teacher_accuracy - student_accuracy) / (teacher_accuracy * (1.0 - theta)))


def curriculum_weight(initial: torch.Tensor, epoch: int, epochs: int, clamp: bool = True) -> torch.Tensor:
    """LFME's curriculum instance weight ``v(e) = v(0) + (1 - v(0)) e / (E / 2)`` (§10f), epochs from 0.

    The official code does not clamp, so weights exceed 1 after half the run; ``clamp`` (default) stops at 1.

    >>> curriculum_weight(torch.tensor([0.5]), epoch=1, epochs=4)
    tensor([0.7500])
    >>> curriculum_weight(torch.tensor([0.5]), epoch=4, epochs=4, clamp=False)
    tensor([1.5000])
    """
    weight = initial + (1.0 - initial) * epoch / (epochs / 2.0)
    return weight.clamp(max=1.0) if clamp else weight


def accuracy_on_classes(predictions: torch.Tensor, labels: torch.Tensor, known: torch.Tensor) -> float | None:
    """Accuracy over the rows whose label is one of the ``known`` union classes (``None`` if there are none).

    >>> accuracy_on_classes(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]), torch.tensor([True, False, True]))
    0.5
    """
    rows = known[labels]
    return float((predictions[rows] == labels[rows]).float().mean()) if rows.any() else None


def held_out_rows(labels: torch.Tensor, share: float) -> torch.Tensor:
    """Rows kept for validation: of each class's rows, those whose rank ``r`` has ``floor((r + 1) * share)``
    increase (the 2nd, 4th... for 0.5; a class's only row stays for training); all rows when ``share`` is 0.

    >>> held_out_rows(torch.tensor([0, 0, 1, 1, 0, 1]), 0.5)
    tensor([1, 3])
    """
    if share <= 0:
        return torch.arange(len(labels))
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for value in labels.unique():
        rows = (labels == value).nonzero().squeeze(1)
        ranks = torch.arange(len(rows))
        keep[rows] = torch.floor((ranks + 1) * share) > torch.floor(ranks * share)
    return keep.nonzero().squeeze(1)


@register_method
class SelfPacedExperts(Method):
    """LFME (Xiang, Ding, Han, ECCV 2020; shared/METHODS.md §10f) with the teachers as the experts.

    Loss: ``label_weight * CE(y, z) + distill_weight * sum_k w_k KL(softmax(z_k / T) || softmax(z[:, idx_k] / T))``:
    the student's distribution over each teacher's classes learns that teacher's (no ``T^2`` factor, as in the
    official code). The expert weight ``w_k`` is self-paced: with ``A_k`` the teacher's accuracy on the labeled
    samples of its classes and ``a_k`` the student's after each epoch, ``w_k = 1`` while ``a_k < theta A_k``, then
    falls linearly to 0 as the student catches up (:func:`self_paced_weight`). The
    labeled fraction plays the paper's validation set.

    Curriculum instance weights ``v_i(e) = v_i(0) + (1 - v_i(0)) e / (E / 2)`` multiply either each sample's loss
    (``curriculum="loss"``, the paper's description) or the student's logits (``"logits"``, the official code),
    clamped at 1 (the code does not clamp). Deviations (ours, the transfer set being mostly unlabeled):
    a sample's easiness is the highest top-class probability among the teachers instead of the covering
    expert's probability of the true class, mapped linearly into ``[curriculum_floor, 1]`` instead of a per-class
    min-max. LFME's floors are ratios of shots per class subset, which are 1 on balanced data, so the
    curriculum is off by default (``curriculum_floor=1``).

    Args:
        temperature: ``T`` (2 in the code). theta: the self-paced threshold (0.3).
        distill_weight, label_weight: weights of the expert and label terms (1 and 1, as in the code).
        validation_share: the share of the labeled fraction held out (every other labeled sample of each class)
            as the validation set the weights are measured on; the student learns only the others' labels. A
            student measured on the labels it trains on looks better than it is and switches the experts off
            early. 0 measures on all of them (then use ``label_weight=0``).
        curriculum_floor: the hardest sample's initial weight in ``(0, 1]``; 1 turns the curriculum off.
        curriculum: ``"loss"`` or ``"logits"``.
    """

    name = "lfme"
    paper = ("Xiang, Ding, Han. Learning From Multiple Experts: Self-paced Knowledge Distillation for Long-tailed "
             "Classification. ECCV 2020")
    summary = "Each teacher is an expert on its classes; its weight fades as the student catches up with it."

    @dataclass
    class Options(Options):
        """As in the class's Args."""

        temperature: float = 2.0
        theta: float = 0.3
        distill_weight: float = 1.0
        label_weight: float = 1.0
        curriculum_floor: float = 1.0
        curriculum: Literal["loss", "logits"] = "loss"
        validation_share: float = 0.5

        def __post_init__(self) -> None:
            super().__post_init__()
            self.require(self.temperature > 0 and 0 <= self.theta < 1,
                         f"needs temperature > 0 and 0 <= theta < 1, got {self.temperature}, {self.theta}")
            self.require(0 < self.curriculum_floor <= 1,
                         f"curriculum_floor must be in (0, 1], got {self.curriculum_floor}")
            self.require(0 <= self.validation_share < 1,
                         f"validation_share must be in [0, 1), got {self.validation_share}")

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        o = self.options
        self.temperature, self.theta = float(o.temperature), float(o.theta)
        self.distill_weight, self.label_weight = float(o.distill_weight), float(o.label_weight)
        self.curriculum_floor, self.curriculum = float(o.curriculum_floor), o.curriculum
        self.validation_share = float(o.validation_share)
        self.register_buffer("held_out", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("membership", label_space.membership().bool(), persistent=False)
        self.register_buffer("expert_weights", torch.ones(self.num_teachers))  # saved: a resumed run keeps them
        self.expert_accuracy: list[float | None] = [None] * self.num_teachers
        self.validation: LabeledSet | None = None
        self.epoch, self.epochs = 0, 1

    def needs(self) -> Needs:
        return Needs(labels=True)

    def setup(self, ctx: Setup) -> None:
        """Measure each expert on the labeled samples of its classes (``A_k``) and keep them for the student's."""
        labeled = ctx.labeled
        if labeled is None:
            raise MethodError("lfme measures teachers and student on labels: give the run a labeled_fraction > 0")
        rows = held_out_rows(labeled.labels, self.validation_share)
        if labeled.indices is not None and len(rows) < len(labeled.labels):
            self.held_out = labeled.indices[rows].to(self.held_out.device)
        labeled = LabeledSet(labeled.images[rows], labeled.labels[rows],
                             [TeacherOutput(out.logits[rows]) for out in labeled.teacher_outputs])
        self.validation = labeled
        for k, (out, idx) in enumerate(zip(labeled.teacher_outputs, self.indices())):
            predictions = idx.to(out.logits.device)[out.logits.argmax(dim=-1)]
            self.expert_accuracy[k] = accuracy_on_classes(predictions.cpu(), labeled.labels.cpu(),
                                                          self.membership[k].cpu())

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.epoch, self.epochs = epoch - 1, epochs

    @torch.no_grad()
    def end_epoch(self, student: nn.Module) -> dict[str, float]:
        """Re-weight each expert by the student's accuracy on its classes (``a_k``) on the labeled samples."""
        if self.validation is None:
            return {}
        was_training = student.training
        student.eval()
        device = next(student.parameters()).device
        predictions = torch.cat([student(x.to(device)).argmax(dim=-1).cpu()
                                 for x in self.validation.images.split(256)])
        student.train(was_training)
        record = {}
        for k, name in enumerate(self.teacher_names):
            reached = accuracy_on_classes(predictions, self.validation.labels.cpu(), self.membership[k].cpu())
            expert = self.expert_accuracy[k]
            if reached is not None and expert is not None:
                self.expert_weights[k] = self_paced_weight(expert, reached, self.theta)
                record[f"student_on_classes_of/{name}"] = reached
            record[f"expert_weight/{name}"] = float(self.expert_weights[k])
        return record

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        logits = [out.logits for out in step.teacher_outputs]
        student, weights = step.student_logits, None
        if self.curriculum_floor < 1:
            with torch.no_grad():
                easiness = torch.stack([z.softmax(dim=-1).amax(dim=-1) for z in logits], dim=-1).amax(dim=-1)
                initial = self.curriculum_floor + (1 - self.curriculum_floor) * easiness
                weights = curriculum_weight(initial, self.epoch, self.epochs)
            if self.curriculum == "logits":
                student, weights = student * weights[:, None], None
        terms = teacher_kd_terms(student, logits, self.indices(), self.temperature, weights)
        distill = sum(w * term for w, term in zip(self.expert_weights, terms)) / self.temperature**2
        losses = {"experts": self.distill_weight * distill}
        if self.label_weight > 0:
            labels = step.labels
            if len(self.held_out) and step.indices is not None:  # validation labels are not learned
                labels = torch.where(torch.isin(step.indices.to(labels.device), self.held_out), -1, labels)
            losses["labels"] = self.label_weight * label_cross_entropy(student, labels, step.label_mix)
        return losses
