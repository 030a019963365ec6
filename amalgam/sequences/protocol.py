"""The SKA paper's protocol on a UCR set: LSTM teachers on overlapping class subsets, a student on the union
trained from the teachers' outputs on the unlabeled train split plus a few labels, measured on the test split.

Everything goes through amalgam's generic parts: methods from the registry (``create_method``), teacher outputs
computed once (``CachedSignals``), one :class:`~amalgam.pipeline.Pipeline` per run (the method's setup and the
training, wired as for images), and the engine's evaluation. Only the data, the models and the teacher wrapper
are sequence-specific.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from amalgam.data import RelabeledImages, stratified_indices
from amalgam.config import TrainConfig
from amalgam.engine import confusion_matrix, evaluate_teachers, per_class_accuracy, student_predictions, target_accuracy
from amalgam.knowledge import CachedSignals
from amalgam.methods import create_method
from amalgam.pipeline import Pipeline
from amalgam.sequences.models import build_model
from amalgam.sequences.teacher import SequenceTeacher, SequenceTeacherSpec, build_sequence_teachers
from amalgam.sequences.ucr import SequenceData, chance_level, load_ucr
from amalgam.teachers import LabelSpace

LABELED_FRACTION = 0.02
TEACHER_MODEL = {"kind": "lstm", "hidden": 32, "layers": 2}
STUDENT_MODEL = {"kind": "lstm", "hidden": 32, "layers": 2}
# Class subsets (by the UCR label) of each teacher: two teachers that share classes, as in the paper's SYN example.
TEACHER_CLASSES = {
    "JapaneseVowels": {"lstm-1to5": ("1", "2", "3", "4", "5"), "lstm-4to9": ("4", "5", "6", "7", "8", "9")},
    "OSULeaf": {"lstm-1to4": ("1", "2", "3", "4"), "lstm-3to6": ("3", "4", "5", "6")},
}


@dataclass(frozen=True)
class Row:
    """One line of the comparison: a registered method trained with some fraction of the labels."""

    label: str
    method: str
    labeled_fraction: float
    reference: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def default_rows(fraction: float = LABELED_FRACTION, methods: Sequence[str] | None = None) -> list[Row]:
    """The supervised ceiling and floor, then the amalgamation methods (``concat-logits`` is a reference)."""
    pct = f"{fraction:.0%}"
    names = list(methods) if methods is not None else [
        "concat-logits", "selective-learning", "soft-targets", "trust-learner"]
    references = [Row("supervised, all labels", "supervised", 1.0, True),
                  Row(f"supervised, {pct} labels", "supervised", fraction, True)]
    rows = [Row(name, name, fraction, name == "concat-logits") for name in names]
    if "trust-learner" in names:  # also the paper's own TTL, whose trust model reads the series (an LSTM)
        rows.append(Row("trust-learner, trust model on the series", "trust-learner", fraction,
                        options={"trust_input": "input"}))
    return references + rows


def overlapping_split(class_names: Sequence[str], overlap: int = 2) -> dict[str, tuple[str, ...]]:
    """Two teachers' class subsets that cover ``class_names`` and share ``overlap`` classes in the middle.

    >>> overlapping_split(["a", "b", "c", "d", "e", "f"])
    {'lstm-a-d': ('a', 'b', 'c', 'd'), 'lstm-c-f': ('c', 'd', 'e', 'f')}
    """
    n = len(class_names)
    first = (n + overlap + 1) // 2
    low, high = tuple(class_names[:first]), tuple(class_names[first - overlap:])
    return {f"lstm-{low[0]}-{low[-1]}": low, f"lstm-{high[0]}-{high[-1]}": high}


@dataclass
class SequenceSetting:
    """A data set, the teachers' class subsets and models, the student model, and one budget for every row."""

    dataset: str
    teacher_classes: dict[str, tuple[str, ...]]
    teacher_model: dict[str, Any] = field(default_factory=lambda: dict(TEACHER_MODEL))
    teacher_epochs: int = 60
    student_model: dict[str, Any] = field(default_factory=lambda: dict(STUDENT_MODEL))
    budget: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, batch_size=16, lr=3e-3))
    labeled_fraction: float = LABELED_FRACTION

    @classmethod
    def for_dataset(cls, dataset: str, data: SequenceData | None = None, **overrides: Any) -> "SequenceSetting":
        """The setting of a UCR set: the subsets above where listed, else :func:`overlapping_split`."""
        classes = TEACHER_CLASSES.get(dataset)
        if classes is None:
            classes = overlapping_split((data or load_ucr(dataset)).class_names)
        return cls(dataset, classes, **overrides)

    def teacher_specs(self) -> dict[str, SequenceTeacherSpec]:
        return {name: SequenceTeacherSpec(tuple(c), model=dict(self.teacher_model), epochs=self.teacher_epochs)
                for name, c in self.teacher_classes.items()}


def run_once(row: Row, seed: int, setting: SequenceSetting, data: SequenceData, teachers: list[SequenceTeacher],
             signals: CachedSignals, label_space: LabelSpace) -> dict[str, Any]:
    """Train one student for ``row`` and ``seed``; return its test accuracy, per-class accuracy and confusion."""
    started = time.perf_counter()
    label_map = label_space.map_classes(data.class_names)
    visible = stratified_indices(data.train_labels, row.labeled_fraction, seed)  # >= 1 label per class
    transfer = RelabeledImages(data.train, label_map, visible=visible)
    test = RelabeledImages(data.test, label_map)
    torch.manual_seed(seed)  # the student's and the method's initial weights belong to the seed
    method = create_method(row.method, label_space, teachers, dict(row.options))
    student = build_model({**setting.student_model, "channels": data.channels, "num_classes": label_space.num_classes})
    config = TrainConfig(**{**setting.budget.to_dict(), "seed": seed})
    run = Pipeline(teachers, label_space, method, student, transfer, test, visible, config, data_name=data.name,
                   signals=signals)
    history = run.fit(progress=False, test_each_epoch=False)
    student.cpu()
    predictions, targets = student_predictions(student, test)
    uses_teachers = method.needs().teacher_signals != "none"
    return {
        "seed": seed,
        "accuracy": float((predictions == targets).float().mean()),
        "labeled_samples": int(visible.size),
        "per_class": per_class_accuracy(predictions, targets, label_space.class_names),
        "confusion": confusion_matrix(predictions, targets, label_space.num_classes),
        "target_accuracy": target_accuracy(method.cpu().eval(), teachers, test) if uses_teachers else None,
        "final_loss": history[-1]["loss"],
        "seconds": time.perf_counter() - started,
    }


def run_protocol(setting: SequenceSetting, seeds: Sequence[int] = (0, 1, 2), rows: Sequence[Row] | None = None,
                 data: SequenceData | None = None, teachers: list[SequenceTeacher] | None = None,
                 on_run: Callable[[Row, dict], None] | None = None, progress: bool = True) -> dict[str, Any]:
    """Every row for every seed with the same teachers, student, data and budget; all numbers as one dict.

    The dict has the shape ``bench.quality`` reports (``rows[i]["runs"]``, ``teacher_metrics``), plus
    ``chance`` (the majority-class accuracy on the test split) and ``labeled_samples`` per seed.
    """
    data = data or load_ucr(setting.dataset)
    teachers = teachers or build_sequence_teachers(setting.teacher_specs(), data, progress=progress)
    teachers = [t.to("cpu") for t in teachers]
    label_space = LabelSpace.union([t.class_names for t in teachers])
    signals = CachedSignals.compute(teachers, data.train, progress=False)  # teachers are frozen: once for all runs
    rows = list(rows) if rows is not None else default_rows(setting.labeled_fraction)
    test = RelabeledImages(data.test, label_space.map_classes(data.class_names))
    results: dict[str, list[dict]] = {row.label: [] for row in rows}
    for row in rows:
        for seed in seeds:
            run = run_once(row, seed, setting, data, teachers, signals, label_space)
            results[row.label].append(run)
            if on_run is not None:
                on_run(row, run)
    budget = setting.budget.to_dict() | {"optimizer": "AdamW, cosine"}
    return {
        "setting": f"sequence-{setting.dataset}",
        "dataset": setting.dataset,
        "data": {"train": len(data.train), "test": len(data.test), "length": data.length, "channels": data.channels},
        "student": _model_name(setting.student_model),
        "student_model": setting.student_model,
        "budget": budget,
        "labeled_fraction": setting.labeled_fraction,
        "class_names": list(label_space.class_names),
        "overlaps": label_space.overlaps(),
        "chance": chance_level(data.test_labels),
        "teachers": [t.describe() for t in teachers],
        "teacher_training": {"model": setting.teacher_model, "epochs": setting.teacher_epochs},
        "teacher_metrics": evaluate_teachers(teachers, label_space, test),
        "rows": [asdict(r) | {"runs": results[r.label]} for r in rows],
    }


def _model_name(config: dict[str, Any]) -> str:
    """``lstm(hidden=32, layers=2)``."""
    options = ", ".join(f"{k}={v}" for k, v in config.items() if k not in ("kind", "channels", "num_classes"))
    return f"{config['kind']}({options})"
