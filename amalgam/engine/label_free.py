"""What can be known of a run without any labels: how the student agrees with what it was taught.

Used when neither the transfer data nor any evaluation data has labels. On a check set of transfer images the
student never trained on, it reports

- ``student.agreement_with_target``: the share of images where the student's class is the combined target's
  (the method's own :meth:`~amalgam.methods.base.Method.combined_target`; for a method without one, the
  teachers' mean probability placed in the union space, and ``target`` says which);
- for each teacher, ``trusted_share``: the share of images whose target class is one of its classes (the
  images it is trusted for; a class two teachers share counts for both), and ``student_agreement``: on those
  images, the share where the student's class is the teacher's own prediction.

None of these is accuracy: a student that copies wrong teachers agrees perfectly. They tell whether the student
learned its target, and which teacher's knowledge the data exercises.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from amalgam.engine.evaluate import _batches
from amalgam.engine.uncertainty import member_probabilities_of
from amalgam.methods.base import Method
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.placement import place_probabilities

LABEL_FREE = "label-free"  # metrics["kind"] of a run measured without labels ("labeled" otherwise)


def agreement_counts(student_class: torch.Tensor, target: torch.Tensor, teacher_logits: Sequence[torch.Tensor],
                     label_space: LabelSpace) -> dict[str, torch.Tensor]:
    """Per-batch counts behind :func:`label_free_report`: images whose student class is the target's, and per
    teacher, images it is trusted for and those of them where the student says what it says.

    >>> space = LabelSpace.union([["cat", "dog"], ["dog", "fox"]])
    >>> target = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.1, 0.8, 0.1]])  # cat, fox, dog
    >>> teacher_logits = [torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]),   # cat, dog, dog
    ...                   torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 1.0]])]   # dog, fox, fox
    >>> counts = agreement_counts(torch.tensor([0, 2, 2]), target, teacher_logits, space)  # cat, fox, fox
    >>> # student = target on images 0, 1; teacher 0 trusted for 0 (cat) and 2 (dog), agreed on 0;
    >>> # teacher 1 trusted for 1 (fox) and 2 (dog), agreed on both (it says fox, as the student does)
    >>> counts["agree"].item(), counts["trusted"].tolist(), counts["agree_teacher"].tolist()
    (2, [2, 2], [1, 2])
    """
    device = target.device
    target_class = target.argmax(dim=-1)
    trusted = label_space.membership(device)[:, target_class].T.bool()  # B x K
    agree_teacher = torch.stack([
        (student_class == label_space.index_tensor(k, device)[z.argmax(dim=-1)]) & trusted[:, k]
        for k, z in enumerate(teacher_logits)
    ], dim=1)
    return {"agree": (student_class == target_class).sum(), "trusted": trusted.sum(dim=0),
            "agree_teacher": agree_teacher.sum(dim=0)}


@torch.no_grad()
def label_free_report(student: nn.Module, method: Method, teachers: Sequence[Any], label_space: LabelSpace,
                      data: Dataset) -> dict[str, Any]:
    """The label-free measures of the module docstring on ``data`` (images the student did not train on).

    Example (``run`` a planned :class:`~amalgam.pipeline.Pipeline` on unlabeled data):
        >>> label_free_report(run.student, run.method, run.teachers, run.label_space, run.test)  # doctest: +SKIP
        {'kind': 'label-free', 'check_samples': 2000, 'target': 'method', 'student': {...}, 'teachers': {...}}
    """
    device = teachers[0].device
    indices = [label_space.index_tensor(k, device) for k in range(len(teachers))]
    uniform = torch.full((len(teachers),), 1.0 / len(teachers), device=device)
    totals: dict[str, torch.Tensor] = {}
    images_seen, target_kind = 0, "method"
    was_training = student.training
    student.eval()
    for images, _ in _batches(data, device):
        logits = [teacher(images).logits for teacher in teachers]
        target = method.combined_target(logits, images)
        if target is None:
            target_kind = "teachers' mean"
            target = place_probabilities([z.softmax(dim=-1) for z in logits], indices, uniform,
                                         label_space.num_classes)
        student_class = member_probabilities_of(student, images.to(next(student.parameters()).device)).mean(
            dim=0).argmax(dim=-1).to(device)
        for name, count in agreement_counts(student_class, target, logits, label_space).items():
            totals[name] = totals.get(name, 0) + count.cpu()
        images_seen += len(images)
    student.train(was_training)
    if not images_seen:
        raise ValueError("label_free_report needs at least one image")
    return {
        "kind": LABEL_FREE,
        "check_samples": images_seen,
        "target": target_kind,
        "student": {"agreement_with_target": float(totals["agree"]) / images_seen},
        "teachers": {
            teacher.name: {"trusted_share": float(totals["trusted"][k]) / images_seen,
                           "student_agreement": float(totals["agree_teacher"][k]) / max(1, int(totals["trusted"][k])),
                           "trusted_samples": int(totals["trusted"][k])}
            for k, teacher in enumerate(teachers)
        },
    }


def label_free_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """``(what, on which images, agreement)`` rows of a label-free run's metrics, for the printed table and the
    model card.

    >>> metrics = {"check_samples": 10, "target": "method", "student": {"architecture": "s",
    ...            "agreement_with_target": 0.9}, "teachers": {"t": {"trusted_share": 0.5, "student_agreement": 0.8,
    ...            "trusted_samples": 5}}}
    >>> label_free_rows(metrics)[1]
    ('student vs teacher t', 'the 5 images it is trusted for (50% of them)', 0.8)
    """
    target = "the method's combined target" if metrics["target"] == "method" else "the teachers' mean"
    rows = [(f"student {metrics['student']['architecture']} vs {target}",
             f"{metrics['check_samples']} held-out unlabeled transfer images", metrics["student"]["agreement_with_target"])]
    rows += [(f"student vs teacher {name}", f"the {t['trusted_samples']} images it is trusted for "
              f"({t['trusted_share']:.0%} of them)", t["student_agreement"]) for name, t in metrics["teachers"].items()]
    return rows


def student_score(metrics: Mapping[str, Any]) -> tuple[str, float]:
    """The number a finished run is summed up by, with its name: the student's accuracy, or, for a run measured
    without labels, its agreement with its target.

    >>> student_score({"kind": "labeled", "student": {"accuracy": 0.91}})
    ('accuracy', 0.91)
    >>> student_score({"kind": "label-free", "student": {"agreement_with_target": 0.88}})
    ('agreement with its target (no labels)', 0.88)
    """
    if metrics.get("kind") == LABEL_FREE:
        return "agreement with its target (no labels)", float(metrics["student"]["agreement_with_target"])
    return "accuracy", float(metrics["student"]["accuracy"])
