"""What the methods with one student head per teacher share: the heads' names, their specs, their targets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from amalgam.methods.base import Method, Needs, Options
from amalgam.students.heads import Head
from amalgam.teachers.placement import placed_targets
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher


def member_head_names(teacher_names: Sequence[str]) -> list[str]:
    """One head name per teacher: its position and its name, reduced to the characters a head name allows.

    >>> member_head_names(["cnn 0-4", "vit/all"])
    ['0-cnn-0-4', '1-vit-all']
    """
    return [f"{k}-{re.sub(r'[^A-Za-z0-9_-]+', '-', name)}"[:64] for k, name in enumerate(teacher_names)]


class PerTeacherHeads(Method):
    """Base of the methods whose student has one head (a member, a branch) per teacher over the union classes,
    head ``k`` learning teacher ``k`` (Hydra, multi-branch, ODS). ``head_hidden`` > 0 gives each head a hidden
    layer of that width."""

    @dataclass
    class Options(Options):
        """``head_hidden``: width of a hidden layer in each head (0: linear heads)."""

        head_hidden: int = 0

        def __post_init__(self) -> None:
            super().__post_init__()
            self.require(self.head_hidden >= 0, f"the heads' hidden width head_hidden must be >= 0, "
                                                f"got {self.head_hidden}")

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        self.head_hidden = int(self.options.head_hidden)
        self.head_names = member_head_names(self.teacher_names)

    def needs(self) -> Needs:
        classes = tuple(self.label_space.class_names)
        return Needs(heads=tuple(Head(name, classes, hidden=self.head_hidden) for name in self.head_names))

    def member_targets(self, teacher_logits: Sequence[torch.Tensor], temperature: float) -> list[torch.Tensor]:
        """Each teacher's ``softmax(z_k / tau)`` in the union label space: head ``k``'s target."""
        return placed_targets(teacher_logits, self.indices(), temperature, self.label_space.num_classes)

    def combined_target(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """The heads' targets averaged (at temperature 1): what the student's mean over its heads learns."""
        return torch.stack(self.member_targets(teacher_logits, 1.0)).mean(dim=0)
