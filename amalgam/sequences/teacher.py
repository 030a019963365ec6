"""Sequence teachers: a frozen sequence classifier that looks like an amalgam :class:`~amalgam.teachers.Teacher`
to the engine, the methods and :class:`~amalgam.knowledge.CachedSignals`; trained once on some classes of a UCR
set with amalgam's own engine, and cached under ``$AMALGAM_HOME/sequence-teachers/``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Subset

from amalgam.data import RelabeledImages
from amalgam.engine import TrainConfig, accuracy, train
from amalgam.errors import TeacherError
from amalgam.methods import create_method
from amalgam.methods.targets.trust import register_input_trust
from amalgam.paths import amalgam_home
from amalgam.sequences.models import SequenceTrust, build_model
from amalgam.sequences.ucr import SequenceData
from amalgam.teachers import LabelSpace
from amalgam.teachers.teacher import FrozenModel, TeacherOutput

TEACHER_FORMAT = 1  # bump when the saved layout or the training recipe changes: cached teachers are rebuilt


@dataclass(frozen=True)
class SequenceSpec:
    """What a sequence teacher reads: ``channels`` values per step, series up to ``length`` steps.

    Methods look at ``input_spec.channels`` of a teacher (trust-learner sizes its optional input model with it).
    """

    channels: int
    length: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


register_input_trust(SequenceSpec, SequenceTrust)  # trust-learner's trust_input="input" reads series with an LSTM


class SequenceTeacher(FrozenModel):
    """A frozen sequence classifier with class names, called like a Teacher: ``teacher(batch) -> TeacherOutput``.

    >>> from amalgam.sequences.models import LSTMClassifier
    >>> t = SequenceTeacher(LSTMClassifier(1, 2, hidden=4), ["a", "b"], "lstm-ab", SequenceSpec(1, 10))
    >>> t(torch.randn(3, 10, 1)).logits.shape, t.class_names
    (torch.Size([3, 2]), ['a', 'b'])
    """

    library = "torch"

    def __init__(self, model: nn.Module, class_names: Sequence[str], name: str, input_spec: SequenceSpec) -> None:
        self.model = model.eval().requires_grad_(False)
        self.class_names = [str(c) for c in class_names]
        self.name = name
        self.input_spec = input_spec
        self.architecture = type(model).__name__
        self.source = None

    def tap_names(self, all_modules: bool = False) -> list[str]:
        return []

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": "module", "library": self.library, "architecture": self.architecture,
                "parameters": self.num_parameters, "input": self.input_spec.to_dict(), "classes": self.class_names}

    @torch.no_grad()
    def __call__(self, series: torch.Tensor, taps: Sequence[str] = ()) -> TeacherOutput:
        if taps:
            raise TeacherError(f"sequence teacher {self.name!r} has no feature taps (asked for {list(taps)})")
        return TeacherOutput(logits=self.model(series.to(self.device)))

    def __repr__(self) -> str:
        return f"SequenceTeacher({self.name!r}, {self.architecture}, {len(self.class_names)} classes)"


@dataclass(frozen=True)
class SequenceTeacherSpec:
    """How to train one sequence teacher: the classes it knows, its model and its budget."""

    classes: tuple[str, ...]
    model: dict[str, Any] = field(default_factory=lambda: {"kind": "lstm", "hidden": 32, "layers": 2})
    epochs: int = 60
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0

    def key(self, data_name: str) -> str:
        """A short hash of everything that makes the teacher what it is (the cache folder's suffix)."""
        blob = json.dumps({"data": data_name, "format": TEACHER_FORMAT, **asdict(self)}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def train_sequence_teacher(spec: SequenceTeacherSpec, data: SequenceData, name: str,
                           progress: bool = False) -> tuple[SequenceTeacher, float]:
    """Train a teacher on the train series of ``spec.classes`` only, through amalgam's engine (method
    ``supervised``); return it and its test accuracy on those classes."""
    classes = list(spec.classes)
    missing = [c for c in classes if c not in data.class_names]
    if missing:
        raise TeacherError(f"teacher {name!r}: classes {missing} are not in {data.name}'s {data.class_names}")
    own = {data.class_names.index(c): k for k, c in enumerate(classes)}
    label_map = [own.get(j, -1) for j in range(len(data.class_names))]
    rows = lambda labels: np.flatnonzero(np.isin(labels, list(own)))  # noqa: E731
    train_set = RelabeledImages(Subset(data.train, rows(data.train_labels).tolist()), label_map)
    test_set = RelabeledImages(Subset(data.test, rows(data.test_labels).tolist()), label_map)
    torch.manual_seed(spec.seed)
    model = build_model({**spec.model, "channels": data.channels, "num_classes": len(classes)})
    method = create_method("supervised", LabelSpace.union([classes]), [])
    config = TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed, cpu=True)
    train(model, method, None, train_set, config, progress=progress)
    model.eval()
    teacher = SequenceTeacher(model, classes, name, SequenceSpec(data.channels, data.length))
    return teacher, accuracy(model, test_set)


def load_sequence_teacher(folder: Path) -> SequenceTeacher:
    """A teacher saved by :func:`build_sequence_teachers` (``config.json`` + ``model.safetensors``)."""
    config = json.loads((folder / "config.json").read_text())
    model = build_model(config["model"])
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return SequenceTeacher(model, config["class_names"], config["name"], SequenceSpec(**config["input"]))


def build_sequence_teachers(specs: dict[str, SequenceTeacherSpec], data: SequenceData,
                            root: Path | None = None, progress: bool = True) -> list[SequenceTeacher]:
    """Train each teacher once into ``root/<name>-<hash>`` (default ``$AMALGAM_HOME/sequence-teachers/<data>``)
    and load it from there afterwards; a changed spec gets a new folder."""
    root = root or amalgam_home() / "sequence-teachers" / data.name
    root.mkdir(parents=True, exist_ok=True)
    teachers = []
    for name, spec in specs.items():
        folder = root / f"{name}-{spec.key(data.name)}"
        if not (folder / "config.json").is_file():
            teacher, test_accuracy = train_sequence_teacher(spec, data, name)
            if progress:
                print(f"Trained teacher {name} on {data.name} classes {list(spec.classes)}: "
                      f"test accuracy on its classes {test_accuracy:.4f} (saved to {folder})")
            with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as scratch:  # complete or absent
                staged = Path(scratch) / "teacher"
                staged.mkdir()
                save_file(teacher.model.state_dict(), staged / "model.safetensors")
                (staged / "config.json").write_text(json.dumps({
                    "name": name, "class_names": teacher.class_names, "model": teacher.model.config(),
                    "input": teacher.input_spec.to_dict(), "data": data.name, "spec": asdict(spec),
                    "test_accuracy_on_own_classes": test_accuracy,
                }, indent=1, default=list))
                if folder.exists():
                    shutil.rmtree(folder)
                staged.rename(folder)
        teachers.append(load_sequence_teacher(folder))
    return teachers
