"""The tests' one factory of tiny teachers: an untrained timm model (randomly initialised, so seeded tests are
deterministic) wrapped as a :class:`~amalgam.teachers.Teacher` over the given classes."""

from __future__ import annotations

from typing import Sequence

import timm

from amalgam.teachers import Teacher, load_teacher


def tiny_teacher(classes: Sequence[str], name: str | None = None, architecture: str = "test_efficientnet",
                 **model_options) -> Teacher:
    """A teacher of ``classes`` from timm's ``architecture`` (``model_options``: e.g. ``in_chans=1``)."""
    model = timm.create_model(architecture, num_classes=len(classes), **model_options)
    return load_teacher(model, class_names=list(classes), name=name)


def tiny_teachers(*class_lists: Sequence[str], names: Sequence[str] | None = None) -> list[Teacher]:
    """One tiny teacher per list of classes (named ``names``, by default as ``load_teacher`` names them)."""
    names = list(names) if names is not None else [None] * len(class_lists)
    return [tiny_teacher(classes, name) for classes, name in zip(class_lists, names)]
