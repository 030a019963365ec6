"""The benchmark's settings: which data, which teachers (trained once by this module), which student and budget.

- ``fmnist-split``: Fashion-MNIST, a timm CNN on classes 0-4 and a transformers ViT on 5-9.
- ``fmnist-overlap``: three teachers on overlapping classes {0-4} (timm CNN), {3-7} (ViT), {6-9, 0}
  (transformers ConvNeXt): where choosing whom to trust matters most.
- ``digits-split`` / ``digits-overlap``: the same shapes on scikit-learn digits, a smoke version in a minute.
- ``fmnist-ensemble`` / ``digits-ensemble`` (``ENSEMBLE_SETTINGS``, for ``bench.ensemble``): three teachers of
  three architectures, each on every class: an ensemble whose disagreement a multi-head student should keep.

Teachers are trained on their classes of the train split only, saved in their libraries' Hub layouts under
``$AMALGAM_HOME/bench-teachers/<zoo version>/<setting>/`` and reused by every later run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from amalgam.data import ImageData, load_digits, load_fashion_mnist
from amalgam.engine import TrainConfig
from amalgam.paths import amalgam_home
from amalgam.zoo import FASHION_TEACHERS, ZOO_VERSION, TeacherSpec, build_teachers

STUDENT = "test_efficientnet"
LABELED_FRACTION = 0.02
DIGITS = [str(d) for d in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _pick(names: list[str], indices) -> list[str]:
    return [names[i] for i in indices]


@dataclass(frozen=True)
class Setting:
    name: str
    data: Callable[[], ImageData]
    teachers: dict[str, TeacherSpec]
    budget: TrainConfig

    def teacher_folders(self, progress: bool = True) -> list[Path]:
        root = amalgam_home() / "bench-teachers" / ZOO_VERSION / self.name
        return build_teachers(self.teachers, self.data, root, progress=progress)


def _fashion_teachers(overlap: bool) -> dict[str, TeacherSpec]:
    if not overlap:  # the fashion-mnist demo's teachers, under the names the cached bench teachers have
        return dict(zip(("cnn-0to4", "vit-5to9"), FASHION_TEACHERS.values()))
    return {
        "cnn-0to4": TeacherSpec("timm-cnn", _pick(FASHION, range(0, 5)), size=32, epochs=3, batch_size=128),
        "vit-3to7": TeacherSpec("vit", _pick(FASHION, range(3, 8)), size=28, epochs=5, batch_size=128),
        "convnext-6to9and0": TeacherSpec("convnext", _pick(FASHION, [6, 7, 8, 9, 0]), size=32, epochs=3,
                                         batch_size=128),
    }


def _digits_teachers(overlap: bool) -> dict[str, TeacherSpec]:
    if not overlap:
        return {
            "cnn-0to4": TeacherSpec("timm-cnn", DIGITS[0:5], size=32, epochs=10),
            "vit-5to9": TeacherSpec("vit", DIGITS[5:10], size=16, epochs=40),
        }
    return {
        "cnn-0to4": TeacherSpec("timm-cnn", DIGITS[0:5], size=32, epochs=10),
        "vit-3to7": TeacherSpec("vit", DIGITS[3:8], size=16, epochs=40),
        "convnext-6to9and0": TeacherSpec("convnext", _pick(DIGITS, [6, 7, 8, 9, 0]), size=32, epochs=20),
    }


def _ensemble_teachers(classes: list[str], fashion: bool) -> dict[str, TeacherSpec]:
    batch = 128 if fashion else 32
    return {
        "cnn-all": TeacherSpec("timm-cnn", classes, size=32, epochs=3 if fashion else 10, batch_size=batch),
        "vit-all": TeacherSpec("vit", classes, size=28 if fashion else 16, epochs=5 if fashion else 40,
                               batch_size=batch),
        "convnext-all": TeacherSpec("convnext", classes, size=32, epochs=3 if fashion else 20, batch_size=batch),
    }


FASHION_BUDGET = TrainConfig(epochs=3, batch_size=128, lr=3e-3)
DIGITS_BUDGET = TrainConfig(epochs=10, batch_size=64, lr=3e-3)

SETTINGS = {
    "fmnist-split": Setting("fmnist-split", load_fashion_mnist, _fashion_teachers(False), FASHION_BUDGET),
    "fmnist-overlap": Setting("fmnist-overlap", load_fashion_mnist, _fashion_teachers(True), FASHION_BUDGET),
    "digits-split": Setting("digits-split", load_digits, _digits_teachers(False), DIGITS_BUDGET),
    "digits-overlap": Setting("digits-overlap", load_digits, _digits_teachers(True), DIGITS_BUDGET),
}

ENSEMBLE_SETTINGS = {
    "fmnist-ensemble": Setting("fmnist-ensemble", load_fashion_mnist, _ensemble_teachers(FASHION, True),
                               FASHION_BUDGET),
    "digits-ensemble": Setting("digits-ensemble", load_digits, _ensemble_teachers(DIGITS, False), DIGITS_BUDGET),
}
