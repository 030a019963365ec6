"""Named output heads of a student: one shared body, a head per task or per teacher."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from amalgam.errors import StudentError

TASKS = ("classification", "multilabel", "regression")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Head:
    """One head of a :class:`~amalgam.students.Student`.

    ``outputs`` names what it predicts: the classes of a classification (one softmax) or multi-label (one
    sigmoid each) head, or the quantities of a regression head. ``hidden`` > 0 puts one hidden layer (ReLU) of
    that width before the output.

    >>> Head("coarse", ("tops", "bottoms"), task="classification").loss(torch.zeros(1, 2), torch.tensor([1]))
    tensor(0.6931)
    """

    name: str
    outputs: tuple[str, ...]
    task: str = "classification"
    hidden: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", tuple(str(o) for o in self.outputs))
        if not _NAME.fullmatch(self.name):
            raise StudentError(f"head name {self.name!r}: use 1-64 letters, digits, '_' or '-' (it names weights)")
        if self.task not in TASKS:
            raise StudentError(f"head {self.name!r}: task must be one of {TASKS}, got {self.task!r}")
        if not self.outputs:
            raise StudentError(f"head {self.name!r} needs at least one output (a class or a regressed quantity)")
        if not isinstance(self.hidden, int) or self.hidden < 0:
            raise StudentError(f"head {self.name!r}: hidden must be a width >= 0, got {self.hidden!r}")

    @classmethod
    def of(cls, spec: "Head | Mapping[str, Any]") -> "Head":
        """A head from itself or from its dict (as saved in a student's ``config.json``)."""
        if isinstance(spec, Head):
            return spec
        unknown = sorted(set(spec) - {"name", "outputs", "task", "hidden"})
        if unknown or "name" not in spec or "outputs" not in spec:
            raise StudentError(f"a head is a dict with keys name, outputs, task, hidden; got {dict(spec)!r}")
        return cls(**spec)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outputs": list(self.outputs)}

    def build(self, width: int) -> nn.Module:
        """The head's layers on a ``width``-wide pooled feature."""
        if not self.hidden:
            return nn.Linear(width, len(self.outputs))
        return nn.Sequential(nn.Linear(width, self.hidden), nn.ReLU(), nn.Linear(self.hidden, len(self.outputs)))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """This task's supervised loss: cross-entropy on class indices, binary cross-entropy on 0/1 targets
        per output, or mean squared error."""
        if self.task == "classification":
            return F.cross_entropy(output, target)
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(output, target.float())
        return F.mse_loss(output, target.float())

    @torch.no_grad()
    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """This task's measures: accuracy (classification); exact match and micro-F1 of the outputs above
        probability 1/2 (multi-label); RMSE and MAE (regression).

        >>> Head("tags", ["red", "round"], task="multilabel").metrics(torch.tensor([[2.0, -1.0], [1.0, 1.0]]),
        ...                                                           torch.tensor([[1, 0], [1, 0]]))
        {'exact_match': 0.5, 'f1': 0.8}
        """
        if self.task == "classification":
            return {"accuracy": float((output.argmax(dim=-1) == target).float().mean())}
        if self.task == "multilabel":
            predicted, truth = output > 0, target.bool()
            true_positives = float((predicted & truth).sum())
            f1 = 2 * true_positives / max(1.0, float(predicted.sum() + truth.sum()))
            return {"exact_match": float((predicted == truth).all(dim=-1).float().mean()), "f1": f1}
        error = output.float() - target.float()
        return {"rmse": float(error.pow(2).mean().sqrt()), "mae": float(error.abs().mean())}


def check_heads(heads: Sequence[Head]) -> list[Head]:
    names = [h.name for h in heads]
    if not heads or len(set(names)) != len(names):
        raise StudentError(f"a multi-head student needs one or more heads with distinct names, got {names}")
    return list(heads)
