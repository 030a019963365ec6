"""The teachers' side of a run's metrics: each teacher's accuracy on each class it knows, hand-computed."""

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from amalgam.engine.evaluate import evaluate_teachers
from amalgam.teachers import LabelSpace


class Scripted:
    """A teacher whose answer to test image ``i`` is fixed (the image holds its own index)."""

    def __init__(self, name: str, answers: list[int], classes: int = 2) -> None:
        self.name, self.device = name, torch.device("cpu")
        self.logits = F.one_hot(torch.tensor(answers), classes).float() * 4

    def __call__(self, images: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits[images.long().flatten()])


def test_each_teacher_gets_its_accuracy_on_every_class_it_knows_and_no_other():
    space = LabelSpace.union([["x", "y"], ["y", "z"]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])  # x x y y z z
    data = TensorDataset(torch.arange(6.0).view(6, 1), labels)
    # a (own classes x=0, y=1) says x y y y x x: right on 1 of 2 x and 2 of 2 y
    # b (own classes y=0, z=1) says y y y z z z: right on 1 of 2 y and 2 of 2 z
    metrics = evaluate_teachers([Scripted("a", [0, 1, 1, 1, 0, 0]), Scripted("b", [0, 0, 0, 1, 1, 1])], space, data)
    assert metrics["teachers"]["a"]["per_class"] == {"x": 0.5, "y": 1.0}
    assert metrics["teachers"]["b"]["per_class"] == {"y": 0.5, "z": 1.0}
    assert metrics["teachers"]["a"]["accuracy_on_own_classes"] == 0.75  # the per-class numbers, pooled
