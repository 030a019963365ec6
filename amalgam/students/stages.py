"""A student's stages, addressed by index (timm's ``feature_info``), and its other parts by role, never by
module path.

Methods that read the student's intermediate features ask for stages by index (``Needs.student_stages``) or
parts by name (``Needs.student_parts``); the engine resolves the request here and captures those outputs with
forward hooks.
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from amalgam.errors import StudentError


def spread_indices(length: int, count: int) -> list[int]:
    """``count`` indices into ``length`` items (ordered shallow to deep) at relative depths ``1/count, ..., 1``.

    >>> spread_indices(5, 2), spread_indices(2, 3)
    ([2, 4], [0, 1, 1])
    """
    return [max(0, math.ceil(length * (i + 1) / count) - 1) for i in range(count)]


def stages(student: nn.Module) -> list[tuple[str, nn.Module]]:
    """The student's stages, shallow to deep, as ``(module path, module)``: timm's ``feature_info`` of the
    student's backbone (``student.model`` for a :class:`~amalgam.students.Student`).

    >>> from amalgam.students import Student
    >>> [path for path, _ in stages(Student("test_efficientnet", class_names=["a", "b"]))][-2:]
    ['model.blocks.3', 'model.blocks.4']
    """
    model = getattr(student, "model", student)
    prefix = "model." if model is not student else ""
    info = getattr(model, "feature_info", None)
    if not info:
        raise StudentError(f"cannot find the stages of student {type(model).__name__}: it has no timm "
                           "feature_info; use a timm architecture, or a method that reads no student features")
    return [(prefix + stage["module"], student.get_submodule(prefix + stage["module"])) for stage in info]


def resolve_stages(student: nn.Module, request: Sequence[int] | int) -> list[int]:
    """The stage indices of a method's request: explicit indices (negative counts from the deepest), or an
    ``int`` ``n`` for ``n`` stages at relative depths ``1/n, ..., 1``. An index out of range is an error that
    says how many stages the student has.

    >>> from amalgam.students import Student
    >>> student = Student("test_efficientnet", class_names=["a", "b"])
    >>> resolve_stages(student, 2), resolve_stages(student, (-1,)), resolve_stages(student, ())
    ([2, 4], [4], [])
    """
    if isinstance(request, int) and request == 0 or not isinstance(request, int) and not request:
        return []
    count = len(stages(student))
    if isinstance(request, int):
        return spread_indices(count, request)
    wrong = [i for i in request if not -count <= int(i) < count]
    if wrong:
        raise StudentError(f"the student has {count} stages (indices 0 to {count - 1}, or -1 for the deepest); "
                           f"stage(s) {wrong} do not exist")
    return [int(i) % count for i in request]


def stage_modules(student: nn.Module, indices: Sequence[int]) -> list[nn.Module]:
    """The modules of the student's stages ``indices``."""
    found = stages(student) if indices else []
    return [found[i][1] for i in indices]


def part_modules(student: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The modules whose outputs are a student's parts ``names``: ``"body"``, its shared body (a student with
    heads: the pooled feature every head reads), or ``"<head>.hidden"``, the hidden layer of a head built with
    ``hidden`` > 0 (after its ReLU). An unknown part is an error that lists the student's parts.

    >>> from amalgam.students import Head, Student
    >>> student = Student("test_efficientnet", class_names=["a", "b"], heads=[Head("h", ["a", "b"], hidden=8)])
    >>> [type(m).__name__ for m in part_modules(student, ["body", "h.hidden"])]
    ['EfficientNet', 'ReLU']
    """
    heads = getattr(student, "heads", None) or {}
    known = {"body": getattr(student, "model", None)}
    for name, head in heads.items():
        if isinstance(head, nn.Sequential):  # Linear, ReLU, Linear
            known[f"{name}.hidden"] = head[1]
    wrong = [n for n in names if known.get(n) is None]
    if wrong:
        raise StudentError(f"the student has no part(s) {wrong}; its parts are {[k for k, v in known.items() if v]}")
    return [known[n] for n in names]
