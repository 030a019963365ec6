"""What every amalgamation method is: a module with its own trainable parts that returns named loss terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import nn

from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher, TeacherOutput


@dataclass
class StepInputs:
    """Everything a method may look at for one batch.

    ``labels`` are union-space indices for the labeled fraction and ``UNLABELED`` (-1) elsewhere.
    """

    student_logits: torch.Tensor
    teacher_outputs: list[TeacherOutput]
    labels: torch.Tensor
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def labeled(self) -> torch.Tensor:
        return self.labels >= 0


class Method(nn.Module):
    """Base class of amalgamation methods.

    A subclass sets ``name`` (its registry key), ``paper`` (the citation) and ``summary`` (one line for the
    CLI and the app), takes the label space and teachers plus its own keyword options, and implements
    :meth:`forward` returning a dict of named loss terms; the engine minimises their sum and logs each.
    Trainable parts (adapters, heads...) are submodules, so they are optimised and checkpointed with the student.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    uses_teachers: ClassVar[bool] = True  # False for references trained on labels alone

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher]) -> None:
        super().__init__()
        self.label_space = label_space
        self.num_teachers = len(teachers)

    def teacher_taps(self) -> list[list[str]]:
        """Feature taps to request from each teacher (none by default: logits only)."""
        return [[] for _ in range(self.num_teachers)]

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
