"""The demo zoo: two small teachers of different libraries, trained on disjoint halves of digits.

``cnn-digits-0to4`` is a timm CNN (grey 32x32 input) for digits 0-4, saved in timm's Hub layout;
``vit-digits-5to9`` is a transformers ViT (RGB 16x16 input) for digits 5-9, saved with ``save_pretrained``.
They differ in library, architecture, input size, channels and label space on purpose: that is the problem
amalgam solves. They are trained on the digits *train* split only, so the test split stays unseen.

Built on first use into ``$AMALGAM_HOME/zoo/<version>`` (default ``~/.cache/amalgam``), each teacher in a
temporary folder renamed into place when complete, so an interrupted build never leaves half a teacher.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from amalgam.data import ImageData, load_digits, load_fashion_mnist
from amalgam.data.builtin import FASHION_MNIST_CLASSES
from amalgam.paths import amalgam_home
from amalgam.zoo.teachers import train_teacher

ZOO_VERSION = "v2"  # v2: timm teachers record the squash transform they are trained with (crop_pct 1)
DIGITS_LOW = [str(d) for d in range(5)]
DIGITS_HIGH = [str(d) for d in range(5, 10)]


@dataclass(frozen=True)
class TeacherSpec:
    """How to train one zoo teacher: a kind of ``amalgam.zoo.teachers.TEACHER_KINDS`` on some classes."""

    kind: str
    classes: list[str]
    size: int
    epochs: int
    batch_size: int = 32


DEMO_TEACHERS = {
    "cnn-digits-0to4": TeacherSpec("timm-cnn", DIGITS_LOW, size=32, epochs=10),
    "vit-digits-5to9": TeacherSpec("vit", DIGITS_HIGH, size=16, epochs=40),
}
# Fashion-MNIST split in two as digits is (also the quality benchmark's fmnist-split teachers).
FASHION_TEACHERS = {
    "cnn-fashion-0to4": TeacherSpec("timm-cnn", FASHION_MNIST_CLASSES[:5], size=32, epochs=3, batch_size=128),
    "vit-fashion-5to9": TeacherSpec("vit", FASHION_MNIST_CLASSES[5:], size=28, epochs=5, batch_size=128),
}


@dataclass(frozen=True)
class Demo:
    """A built-in run a newcomer starts by name (``amalgam run --demo NAME``): its teachers, trained once into
    ``$AMALGAM_HOME/zoo/<version>/<name>``, the data, the method, the labels it may use and the budget."""

    name: str
    data: str
    teachers: dict[str, TeacherSpec]
    load: Callable[[], ImageData]
    method: str = "soft-targets"
    labeled_fraction: float = 0.0
    train: dict = field(default_factory=dict)  # TrainConfig fields

    def teacher_folders(self, progress: bool = True) -> list[Path]:
        return build_teachers(self.teachers, self.load, amalgam_home() / "zoo" / ZOO_VERSION / self.name,
                              progress=progress)


DEMOS = {
    "fashion-mnist": Demo("fashion-mnist", "fashion-mnist", FASHION_TEACHERS, load_fashion_mnist,
                          method="trust-learner", labeled_fraction=0.02, train={"epochs": 3, "batch_size": 128}),
}


def build_teachers(specs: dict[str, TeacherSpec], data: Callable[[], ImageData], root: str | os.PathLike,
                   force: bool = False, progress: bool = True) -> list[Path]:
    """Train (once) each teacher of ``specs`` on ``data()`` into ``root/<name>``; return the folders in order."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    for name, spec in specs.items():
        folder = root / name
        if force and folder.exists():
            shutil.rmtree(folder)
        if not (folder / "config.json").is_file():
            with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as scratch:
                staged = Path(scratch) / name
                if progress:
                    print(f"Training teacher {name} (once; saved to {folder})")
                test_accuracy = train_teacher(spec.kind, spec.classes, data(), staged, size=spec.size,
                                              epochs=spec.epochs, batch_size=spec.batch_size)
                if progress:
                    print(f"  {name}: test accuracy on its classes {test_accuracy:.4f}")
                staged.rename(folder)
        folders.append(folder)
    return folders


def build_demo_zoo(root: str | os.PathLike | None = None, force: bool = False, progress: bool = True) -> list[Path]:
    """Train (once) and return the folders of the demo teachers.

    Example:
        >>> folders = build_demo_zoo()  # doctest: +SKIP
        >>> [f.name for f in folders]  # doctest: +SKIP
        ['cnn-digits-0to4', 'vit-digits-5to9']
    """
    root = Path(root) if root is not None else amalgam_home() / "zoo" / ZOO_VERSION
    return build_teachers(DEMO_TEACHERS, load_digits, root, force=force, progress=progress)
