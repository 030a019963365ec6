"""What the feature-method tests share: the demo teachers (timm CNN on digits 0-4, transformers ViT on 5-9),
their union label space, real digits, and a short training run of a method on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from amalgam.data import RelabeledImages, load_digits
from amalgam.config import TrainConfig
from amalgam.methods import Method, create_method
from amalgam.pipeline import Knowledge, Pipeline
from amalgam.students import Student
from amalgam.teachers import LabelSpace, Teacher, load_teacher


class DemoSetup(NamedTuple):
    teachers: list[Teacher]
    space: LabelSpace
    transfer: RelabeledImages
    test: RelabeledImages


def demo_setup(zoo: Sequence[Path], samples: int = 96) -> DemoSetup:
    """The demo teachers, their union, the first ``samples`` train digits and the test digits."""
    teachers = [load_teacher(folder) for folder in zoo]
    space = LabelSpace.union([t.class_names for t in teachers])
    digits = load_digits()
    label_map = [space.index_of(c) for c in digits.class_names]
    transfer = RelabeledImages(torch.utils.data.Subset(digits.train, range(samples)), label_map)
    return DemoSetup(teachers, space, transfer, RelabeledImages(digits.test, label_map))


def demo_student(space: LabelSpace, method: Method | None = None) -> Student:
    """The tests' student over ``space`` (with the heads ``method`` needs, when given)."""
    needs = method.needs() if method is not None else None
    return Student("test_efficientnet", class_names=space.class_names, input_size=32, channels=1,
                   heads=needs.heads if needs else None, serve=needs.serve if needs else None)


def train_briefly(name: str, options: dict[str, Any], setup: Sequence, epochs: int = 4,
                  samples: int | None = None, **config: Any) -> tuple[Method, Student, list[dict]]:
    """Method ``name`` and a fresh student (both seeded) trained through the pipeline on live teachers for a few
    epochs; every transfer label is visible (``config``: more :class:`TrainConfig` fields)."""
    teachers, space, transfer = setup[:3]
    if samples is not None:
        transfer = torch.utils.data.Subset(transfer, range(samples))
    torch.manual_seed(0)
    method = create_method(name, space, teachers, options)
    student = demo_student(space, method)
    run = Pipeline(teachers, space, method, student, transfer, transfer, np.arange(len(transfer)),
                   TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, **config), Knowledge(cache_teachers=False))
    return method, student, run.fit(progress=False, test_each_epoch=False)
