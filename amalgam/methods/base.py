"""What every amalgamation method is: a module with its own trainable parts that returns named loss terms."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from amalgam.errors import MethodError
from amalgam.students.heads import Head
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher, TeacherOutput


@dataclass
class StepInputs:
    """Everything a method may look at for one batch.

    ``images`` is the raw ``[0, 1]`` batch; ``labels`` are union-space indices for the labeled fraction and
    ``UNLABELED`` (-1) elsewhere; ``student_features`` are the outputs of the modules named by
    :meth:`Method.student_taps`; ``indices`` are the samples' positions in the transfer set.
    """

    student_logits: torch.Tensor
    teacher_outputs: list[TeacherOutput]
    labels: torch.Tensor
    images: torch.Tensor | None = None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    indices: torch.Tensor | None = None


@dataclass
class LabeledSet:
    """The labeled fraction of the transfer set, with the teachers' outputs on it, for methods that fit parts of
    themselves on labels before the student trains (a trust model, a calibration)."""

    images: torch.Tensor
    labels: torch.Tensor
    teacher_outputs: list[TeacherOutput]
    indices: torch.Tensor | None = None  # positions in the transfer set

    @classmethod
    def gather(cls, transfer: Dataset, visible: Sequence[int], signals: Callable) -> "LabeledSet":
        """The visible rows of ``transfer`` (a data set of ``(input, union label)``) with ``signals``' teacher
        outputs; rows whose class no teacher knows (label -1) are left out, as nothing could learn them."""
        rows = [int(i) for i in visible if transfer[int(i)][1] >= 0]
        images = torch.stack([transfer[i][0] for i in rows])
        labels = torch.tensor([transfer[i][1] for i in rows])
        return cls(images, labels, signals(images, torch.tensor(rows)), torch.tensor(rows))


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
    requires_labels: ClassVar[bool] = False  # True when prepare() needs a labeled fraction
    label_free: ClassVar[bool] = False  # True when made for runs with no labels at all (benchmarks give it none)
    # True when the method runs the teachers itself on every batch (ODS on perturbed inputs, sub-networks of them):
    # the engine then computes no teacher outputs for it, and StepInputs.teacher_outputs is empty
    runs_teachers: ClassVar[bool] = False

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher]) -> None:
        super().__init__()
        self.label_space = label_space
        self.num_teachers = len(teachers)
        self.teacher_names = [t.name for t in teachers]
        for k in range(self.num_teachers):  # where each teacher's classes sit in the union
            self.register_buffer(f"index_{k}", label_space.index_tensor(k), persistent=False)

    def indices(self) -> list[torch.Tensor]:
        """Each teacher's index map into the union classes (``idx_k`` of shared/METHODS.md §0.1)."""
        return [getattr(self, f"index_{k}") for k in range(self.num_teachers)]

    def teacher_taps(self) -> list[list[str]]:
        """Feature taps to request from each teacher (none by default: logits only)."""
        return [[] for _ in range(self.num_teachers)]

    def student_heads(self) -> list[Head] | None:
        """The named heads this method trains on a shared body (``None``: a plain student with one classifier
        over the union classes). ``amalgamate`` builds the student with them; its ``forward`` then gives the
        method ``{head name: output}`` as ``StepInputs.student_logits``."""
        return None

    def head_outputs(self, step: StepInputs) -> dict[str, torch.Tensor]:
        """The student's outputs by head name, for methods with :meth:`student_heads`; a plain student is an
        error that says how to get the right one."""
        if not isinstance(step.student_logits, dict):
            raise MethodError(f"{self.name} trains a student with the heads of its student_heads(); a plain "
                              "student has none. Pass the student as an architecture name and amalgamate builds it.")
        return step.student_logits

    def student_serve(self) -> str | None:
        """The head the student is scored and served by (``None``: the mean of its heads over the union)."""
        return None

    def student_taps(self, student: nn.Module) -> list[str]:
        """Module paths of ``student`` whose outputs this method reads (none by default)."""
        return []

    def attach(self, student_features: dict[str, torch.Tensor], teacher_outputs: Sequence[TeacherOutput]) -> None:
        """Called once before training, with the student's and teachers' features on a probe batch, for methods
        that size parts of themselves (adapters) to the models' feature shapes. Nothing by default."""

    def combined_target(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor) -> torch.Tensor | None:
        """The teachers combined into this method's target over the union classes, if it has one.

        Evaluated on the test split (``metrics["method_target"]``): how good the target the student learns is.
        """
        return None

    def prepare(self, labeled: LabeledSet | None, transfer_logits: Sequence[torch.Tensor] | None = None) -> None:
        """Fit what must be fitted before the student trains (nothing by default).

        ``labeled`` is the labeled fraction (``None`` when the run has no labels); ``transfer_logits`` are the
        teachers' logits on the whole transfer set, labeled or not, when they were computed once (the unlabeled
        data a method may calibrate or self-train on).
        """

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each training epoch (``epoch`` counts from 1): for schedules over the run."""

    def end_epoch(self, student: nn.Module) -> dict[str, float]:
        """Called after each epoch with the student; returns numbers to log in that epoch's record."""
        return {}

    def training_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The batch the student trains on in this step (and ``StepInputs.images``): ``images`` by default;
        ODS moves it where the teachers disagree. The teachers' cached outputs stay those of ``images``."""
        return images

    def student_output_transform(self, student: nn.Module,
                                 teacher_outputs: Sequence[TeacherOutput]) -> AbstractContextManager[None]:
        """A context the engine enters around the student's forward in training steps only (not the probe, not
        evaluation), for methods that change the student's forward while it trains (knowledge flow adds
        teachers' features into its layers). ``teacher_outputs`` are the batch's. Whatever it installs
        (forward hooks) must be removed when it exits. Nothing by default."""
        return nullcontext()

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
