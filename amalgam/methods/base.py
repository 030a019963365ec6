"""What every amalgamation method is, and the one seam between methods and the engine.

A method declares what it needs as data (:class:`Needs`, per instance: its options may change it), is set up
once before training (:meth:`Method.setup`, with a :class:`Setup`), and returns named loss terms for each batch
(:meth:`Method.loss`). The engine's calls, in order, for one run:

1. ``needs()``: before anything is built. It says which teacher signals to compute (cached or live outputs, or
   none because the method runs the teachers itself), which teacher taps and student stages to capture, which
   heads the student has and how it is served, and whether a labeled fraction is required.
2. ``setup(ctx)``: once, after the engine seeded the run, with the labeled fraction, the teachers' logits on the
   whole transfer set (when computed once) and the student's and teachers' features on a probe batch (to size
   adapters). Anything built here is optimised and checkpointed with the method.
3. Per epoch: ``start_epoch(epoch, epochs)``, then per batch ``step(batch, student)`` (default: the student's
   forward, then ``loss``), then ``end_epoch(student)`` (numbers for the epoch's record).
4. After training: ``combined_target(teacher_logits, images)`` on the test split (how good the target is).

Most methods implement only ``loss`` (and ``needs``/``setup`` when they tap features or fit parts). The few that
change the step itself (ODS perturbs the inputs, knowledge flow mixes features into the student's layers)
override ``step``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from amalgam.data.augment import LabelMix
from amalgam.errors import MethodError
from amalgam.fields import check_types
from amalgam.students.heads import Head
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher, TeacherOutput

TeacherSignal = Literal["outputs", "live", "none"]


@dataclass(frozen=True)
class Needs:
    """What a method needs from the engine (see the module's docstring for when each is used).

    Attributes:
        teacher_signals: ``"outputs"``: each batch comes with the teachers' outputs (cached once, or live);
            ``"live"``: the method runs the (frozen) teachers itself in its step, on inputs or sub-networks of
            its own, so the engine computes none; ``"none"``: no teachers (references trained on labels).
        teacher_taps: the feature taps to capture from each teacher (one tuple per teacher; empty: logits only).
        student_stages: the student's stages whose outputs the method reads, by index into its stages (timm's
            ``feature_info``, shallow to deep; negative counts from the deepest), or an ``int`` ``n``: ``n``
            stages at relative depths ``1/n, ..., 1`` (the deepest last). Keys of ``StepInputs.student_features``.
        student_parts: parts of the student that are not stages, by role (see
            :func:`amalgam.students.stages.part_modules`): ``"body"`` (the shared body's pooled feature, which every
            head reads) or ``"<head name>.hidden"`` (a head's hidden layer). Keys of ``StepInputs.student_features``.
        heads: the named heads the student needs on its shared body (``None``: one classifier over the union).
        serve: the head the student is scored and served by (``None``: the mean of its heads).
        labels: the method fits part of itself on labels, so a run must have a labeled fraction.
        label_free: the method is made for runs without any labels (benchmarks give it none).
    """

    teacher_signals: TeacherSignal = "outputs"
    teacher_taps: tuple[tuple[str, ...], ...] = ()
    student_stages: tuple[int, ...] | int = ()
    student_parts: tuple[str, ...] = ()
    heads: tuple[Head, ...] | None = None
    serve: str | None = None
    labels: bool = False
    label_free: bool = False

    def taps_per_teacher(self, num_teachers: int) -> list[list[str]]:
        """``teacher_taps`` as one list per teacher (empty lists when the method taps none)."""
        return [list(t) for t in self.teacher_taps] if self.teacher_taps else [[] for _ in range(num_teachers)]

    @property
    def taps_features(self) -> bool:
        """Whether the method reads any feature (of a teacher or of the student)."""
        return any(self.teacher_taps) or bool(self.student_stages) or bool(self.student_parts)


@dataclass
class StepInputs:
    """Everything a method's loss may look at for one batch.

    ``images`` is the batch the student saw (raw ``[0, 1]``); ``labels`` are union-space indices for the labeled
    fraction and ``UNLABELED`` (-1) elsewhere; ``student_features`` are the outputs of the student's stages of
    :attr:`Needs.student_stages`, by stage index, and of its :attr:`Needs.student_parts`, by part name;
    ``indices`` are the samples' positions in the transfer set.
    ``student_logits`` is ``{head name: output}`` for a student with heads. With augmentation (see
    :mod:`amalgam.data.augment`) ``rows`` are the rows of the views in the teacher signals (``view * N + index``;
    without it, the indices) and ``label_mix`` the second class of mixed views: label terms go through
    :func:`~amalgam.methods.losses.label_cross_entropy`, which reads it.
    """

    student_logits: torch.Tensor
    teacher_outputs: list[TeacherOutput]
    labels: torch.Tensor
    images: torch.Tensor | None = None
    student_features: dict[int | str, torch.Tensor] = field(default_factory=dict)
    indices: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    label_mix: LabelMix | None = None

    @classmethod
    def of(cls, batch: "Batch", student_logits: torch.Tensor, features: dict[int | str, torch.Tensor],
           images: torch.Tensor | None = None) -> "StepInputs":
        """The inputs of the loss for ``batch``, with the student's outputs on it (on ``images``, when the step
        changed them)."""
        return cls(student_logits, batch.teacher_outputs, batch.labels,
                   batch.images if images is None else images, features, batch.indices, batch.rows, batch.label_mix)


@dataclass
class Batch:
    """One training batch as the engine hands it to :meth:`Method.step`: the raw images, their labels and
    transfer-set indices, and the teachers' outputs on them (empty unless ``needs().teacher_signals`` is
    ``"outputs"``); ``rows`` and ``label_mix`` as in :class:`StepInputs`."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    teacher_outputs: list[TeacherOutput]
    rows: torch.Tensor | None = None
    label_mix: LabelMix | None = None


class StudentForward:
    """The student as a method's step calls it: ``logits, features = student(images)``, with the outputs of the
    stages (by index) and parts (by name) the method asked for. ``module`` is the student itself and
    ``stage_modules`` the modules of those stages, for a step that changes what they output while it trains."""

    def __init__(self, module: nn.Module, stages: Sequence[int], stage_modules: Sequence[nn.Module],
                 parts: Sequence[str] = (), part_modules: Sequence[nn.Module] = ()) -> None:
        self.module = module
        self.stages = list(stages)
        self.stage_modules = list(stage_modules)
        self.keys = [*self.stages, *parts]
        self.modules = [*self.stage_modules, *part_modules]

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[int | str, torch.Tensor]]:
        from amalgam.teachers.taps import capture_features

        with capture_features(self.module, self.keys, self.modules) as features:
            logits = self.module(images)
        return logits, dict(features)


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


@dataclass
class Setup:
    """What :meth:`Method.setup` is given, once, before the student trains.

    ``labeled``: the labeled fraction (``None`` when the run has none); ``transfer_logits``: the teachers' logits
    on the whole transfer set, labeled or not, when they were computed once (else ``None``); ``student``: the
    student; ``student_stages``: the stage indices of ``needs().student_stages``, resolved; ``student_features``
    and ``teacher_outputs``: the student's stage (and part) outputs and the teachers' outputs (with their taps) on
    a probe batch of two transfer samples, when the method reads features (else empty); ``transfer_rows``: reads
    the teachers' cached outputs, with their taps, at rows of the transfer set (``rows(indices)``; ``None`` when
    the teachers run live), for methods that fit on the whole transfer set's features; ``transfer``: the transfer
    set itself (``(input, union label)`` pairs), for methods that read the student on all of it between epochs.
    """

    labeled: LabeledSet | None = None
    transfer_logits: list[torch.Tensor] | None = None
    student: nn.Module | None = None
    student_stages: list[int] = field(default_factory=list)
    student_features: dict[int | str, torch.Tensor] = field(default_factory=dict)
    teacher_outputs: list[TeacherOutput] = field(default_factory=list)
    transfer_rows: Callable[[torch.Tensor], list[TeacherOutput]] | None = None
    transfer: Dataset | None = None


@dataclass
class Options:
    """Base of every method's options: one dataclass per method, inherited along its family, so a variant adds
    its own fields to its parent's instead of retyping them. Every option is checked against its annotation here
    (a ``Literal`` against its values); a subclass validates the rest in its ``__post_init__`` (calling this one first)
    with :meth:`require`, and the error is then prefixed with the method's name."""

    def __post_init__(self) -> None:
        check_types(self, MethodError)  # a Literal's values, and ``temperature = "hot"`` before any arithmetic

    @staticmethod
    def require(ok: bool, message: str) -> None:
        """Raise :class:`MethodError` with ``message`` (which option, what it must be, what it got) unless ``ok``."""
        if not ok:
            raise MethodError(message)


class Method(nn.Module):
    """Base class of amalgamation methods.

    A subclass sets ``name`` (its registry key), ``paper`` (the citation), ``summary`` (one line for the CLI and
    the app) and ``Options`` (its options' dataclass), and implements :meth:`loss` returning a dict of named loss
    terms; the engine minimises their sum and logs each. Trainable parts (adapters, heads...) are submodules,
    so they are optimised and checkpointed with the student. It is built with the label space, the teachers and
    its options, as an ``Options`` instance or as keywords: ``SoftTargets(space, teachers, temperature=2.0)``.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    family: ClassVar[str] = ""  # "" : the sub-package of amalgam.methods it is defined in ("custom" elsewhere)
    Options: ClassVar[type[Options]] = Options

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__()
        self.options = build_options(self, options, overrides)
        self.label_space = label_space
        self.num_teachers = len(teachers)
        self.teacher_names = [t.name for t in teachers]
        for k in range(self.num_teachers):  # where each teacher's classes sit in the union
            self.register_buffer(f"index_{k}", label_space.index_tensor(k), persistent=False)

    def indices(self) -> list[torch.Tensor]:
        """Each teacher's index map into the union classes (``idx_k`` of shared/METHODS.md §0.1)."""
        return [getattr(self, f"index_{k}") for k in range(self.num_teachers)]

    def needs(self) -> Needs:
        """What this method needs from the engine (by default: the teachers' outputs on each batch)."""
        return Needs()

    def setup(self, ctx: Setup) -> None:
        """Fit or build what must exist before the student trains (nothing by default): see :class:`Setup`."""

    def step(self, batch: Batch, student: StudentForward) -> dict[str, torch.Tensor]:
        """One training step's loss terms: the student's forward on the batch, then :meth:`loss`."""
        logits, features = student(batch.images)
        return self.loss(StepInputs.of(batch, logits, features))

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        """Calling the method computes its loss terms (``method(step)``)."""
        return self.loss(step)

    def head_outputs(self, step: StepInputs) -> dict[str, torch.Tensor]:
        """The student's outputs by head name, for methods whose ``needs().heads`` are set; a plain student is
        an error that says how to get the right one."""
        if not isinstance(step.student_logits, dict):
            raise MethodError(f"{self.name} trains a student with the heads of its needs(); a plain student has "
                              "none. Pass the student as an architecture name and amalgamate builds it.")
        return step.student_logits

    def combined_target(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor) -> torch.Tensor | None:
        """The teachers combined into this method's target over the union classes, if it has one.

        Evaluated on the test split (``metrics["method_target"]``): how good the target the student learns is.
        """
        return None

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each training epoch (``epoch`` counts from 1): for schedules over the run."""

    def end_epoch(self, student: nn.Module) -> dict[str, float]:
        """Called after each epoch with the student; returns numbers to log in that epoch's record."""
        return {}


def build_options(method: Method | type[Method], options: Options | None, overrides: dict[str, Any]) -> Options:
    """``method``'s options from an ``Options`` instance and/or keywords; an unknown keyword is a
    :class:`MethodError` that lists the method's options with their defaults."""
    cls = method.Options
    if options is not None and not isinstance(options, cls):
        raise MethodError(f"{method.name}: options must be a {cls.__name__}, got {type(options).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in option_defaults(cls).items()) or "none"
        raise MethodError(f"method {method.name!r} has no option(s) {unknown}; its options are {listed}")
    try:
        if options is None:
            return cls(**overrides)
        return dataclasses.replace(options, **overrides) if overrides else options
    except MethodError as err:
        raise MethodError(f"{method.name}: {err}") from None


def option_defaults(cls: type[Options]) -> dict[str, Any]:
    """Each option of an ``Options`` dataclass with its default."""
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def option_choices(cls: type[Options]) -> dict[str, tuple]:
    """The allowed values of each option typed as a ``Literal`` (for ``amalgam methods`` and the app)."""
    hints = typing.get_type_hints(cls)
    choices = {}
    for name, hint in hints.items():
        if typing.get_origin(hint) is Literal:
            choices[name] = typing.get_args(hint)
    return choices
