"""One amalgamation run as one object: plan -> fit -> evaluate -> save.

:func:`amalgam.amalgamate`, the CLI, the app (through ``amalgamate``), the sequence protocol, the benchmarks
and the tests' helpers all run through :class:`Pipeline`, so the steps are wired once: the method's needs decide
which teacher signals are computed, the labeled fraction and the teachers' whole-transfer logits reach
:meth:`~amalgam.methods.Method.setup`, the engine trains, and the same evaluation fills every run's metrics.

Example:
    >>> from amalgam.zoo import build_demo_zoo
    >>> from amalgam.config import TrainConfig
    >>> run = Pipeline.plan(build_demo_zoo(), data="digits", config=TrainConfig(epochs=1))  # doctest: +SKIP
    >>> history = run.fit(progress=False)                                                 # doctest: +SKIP
    >>> run.evaluate(history)["student"]["accuracy"] > 0.1                                  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from amalgam.config import TrainConfig
from amalgam.data import ImageData, RelabeledImages, load_data, stratified_indices
from amalgam.data.augment import TransferViews
from amalgam.engine import (
    accuracy, confusion_matrix, evaluate_teachers, head_accuracies, member_probabilities, per_class_accuracy,
    target_accuracy, train,
)
from amalgam.engine.checkpoint import RESUME_MUST_MATCH, CheckpointError
from amalgam.engine.label_free import LABEL_FREE, label_free_report
from amalgam.engine.trainer import EpochCallback
from amalgam.engine.uncertainty import ensemble_report
from amalgam.errors import DataError, MethodError, StudentError, TeacherError
from amalgam.knowledge import DEFAULT_MAX_CACHE_GB, CachedSignals, KnowledgeCache, LiveSignals, TeacherSignals
from amalgam.methods import LabeledSet, Method, create_method
from amalgam.students import Student, build_student
from amalgam.teachers import LabelSpace, Teacher, load_teacher

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"  # what a run is (written before training), in its run folder
LABEL_FREE_SHARE, LABEL_FREE_MAX = 0.1, 2000  # transfer images held out to measure a run without labels


@dataclass(frozen=True)
class Knowledge:
    """Where the teachers' outputs come from during training (see :func:`amalgam.amalgamate`'s arguments)."""

    cache_teachers: bool = True
    knowledge_cache: bool | str | os.PathLike = True
    max_cache_gb: float = DEFAULT_MAX_CACHE_GB


def data_label_map(data: ImageData, label_space: LabelSpace) -> list[int]:
    """Union index of each of the data set's classes, -1 for classes no teacher knows; a data set that shares
    no class with the teachers is an error."""
    mapping = label_space.map_classes(data.class_names)
    if all(j < 0 for j in mapping):
        raise DataError(
            f"the data set {data.name!r} shares no class with the teachers: its classes are {data.class_names}, "
            f"the teachers' are {list(label_space.class_names)}. Pass label_mapping to align the names."
        )
    return mapping


def warn_lost_accuracy(data: ImageData, label_space: LabelSpace, label_map: Sequence[int],
                       teachers: Sequence[Teacher]) -> list[str]:
    """Warn (and return the warnings) where a run loses accuracy without failing: a teacher none of whose classes
    occur in the data (its outputs only mislead the student here), and data classes no teacher knows (their test
    images are left out of every accuracy, counted in ``excluded_test_samples``)."""
    found = []
    present = {j for j in label_map if j >= 0}
    for k, teacher in enumerate(teachers):
        if not present & set(label_space.teacher_indices[k]):
            found.append(f"teacher {teacher.name!r} knows none of the data's classes (its {len(teacher.class_names)} "
                         f"classes: {_some(teacher.class_names)}; the data's: {_some(data.class_names)}): the student "
                         "learns its outputs on images that are none of them. Leave it out, or align the names with "
                         "label_mapping.")
    unknown = [name for name, j in zip(data.class_names, label_map) if j < 0]
    if unknown:
        found.append(f"data classes {unknown} are known to no teacher: their {excluded_test_samples(data, label_map)} "
                     "test images are left out of every accuracy (excluded_test_samples). Align the names with "
                     "label_mapping if a teacher knows them under another name.")
    for message in found:
        warnings.warn(message, stacklevel=3)
    return found


def label_free_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The transfer rows trained on and the rows held out to measure a run without labels: a seeded
    :data:`LABEL_FREE_SHARE` of them, at most :data:`LABEL_FREE_MAX` (and at least one).

    >>> train, check = label_free_split(100, seed=0)
    >>> len(train), len(check), len(set(train) & set(check))
    (90, 10, 0)
    """
    if count < 2:
        raise DataError(f"a run without labels holds some transfer images out to measure the student; "
                        f"{count} image(s) are too few")
    held = min(LABEL_FREE_MAX, max(1, round(LABEL_FREE_SHARE * count)))
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])


def excluded_test_samples(data: ImageData, label_map: Sequence[int]) -> int:
    """The test images of classes no teacher knows (``label_map`` -1): left out of every accuracy."""
    return int(sum(1 for y in data.test_labels if label_map[int(y)] < 0))


def _some(names: Sequence[str], shown: int = 5) -> str:
    return ", ".join(map(repr, names[:shown])) + (", ..." if len(names) > shown else "")


def check_student(student: Student, label_space: LabelSpace, method: Method) -> None:
    """A given student must predict the union classes and have the heads the method trains (or none), served
    as the method serves them."""
    needs = method.needs()
    if list(student.class_names) != list(label_space.class_names):
        raise StudentError(f"the student's classes {student.class_names} differ from the teachers' union "
                           f"{list(label_space.class_names)}")
    if list(student.head_specs) != list(needs.heads or []) or student.serve != needs.serve:
        wanted = [h.to_dict() for h in needs.heads] if needs.heads else "none (one classifier)"
        raise StudentError(f"method {method.name!r} trains a student with heads {wanted} (served by {needs.serve!r}); "
                           f"the student given has {[h.to_dict() for h in student.head_specs] or 'none'} (served by "
                           f"{student.serve!r}). Pass the architecture name "
                           "instead, and amalgamate builds the student the method needs.")


@dataclass
class Pipeline:
    """A planned run: teachers, label space, method, student, transfer and test sets, the labeled rows and the
    budget. :meth:`plan` builds one from what a user names; code with parts of its own (the sequence protocol,
    tests) builds one directly, passing ``signals`` it computed once for many runs."""

    teachers: list
    label_space: LabelSpace
    method: Method
    student: nn.Module
    transfer: Dataset
    test: Dataset
    visible: np.ndarray
    config: TrainConfig
    knowledge: Knowledge = field(default_factory=Knowledge)
    data_name: str = ""
    signals: TeacherSignals | None = None
    description: dict[str, Any] = field(default_factory=dict)  # run.json: what the run is
    excluded_test_samples: int = 0  # test images of classes no teacher knows
    label_free: bool = False  # no labeled data: ``test`` is unlabeled transfer images held out of training

    @classmethod
    def plan(
        cls,
        teachers: Sequence[Teacher | str | os.PathLike | nn.Module],
        student: str | os.PathLike | nn.Module = "test_efficientnet",
        data: Any = "digits",
        method: str = "soft-targets",
        *,
        student_pretrained: bool = False,
        eval_data: Any = None,
        method_options: Mapping[str, Any] | None = None,
        label_mapping: Mapping[str, str] | Sequence[Mapping[str, str] | None] | None = None,
        labeled_fraction: float = 0.0,
        student_input_size: int | None = None,
        config: TrainConfig | None = None,
        knowledge: Knowledge | None = None,
    ) -> "Pipeline":
        """Load and check everything a run needs, before any training: teachers, data, label space, method
        (options checked), student (built for the method's heads by :func:`~amalgam.students.build_student`, from
        scratch or pretrained weights; or a :class:`Student` given, checked), labeled rows."""
        if not teachers:
            raise TeacherError("amalgamate needs at least one teacher")
        config = config or TrainConfig()
        teachers = [t if isinstance(t, Teacher) else load_teacher(t) for t in teachers]
        data = load_data(data)
        scored = load_data(eval_data, role="eval") if eval_data is not None else data  # what the test split is of
        if labeled_fraction and not data.labeled:
            raise DataError(f"labeled_fraction={labeled_fraction} asks for labels of the transfer data "
                            f"{data.name!r}, which has none: leave it at 0, or use labeled transfer data")
        label_space = LabelSpace.union([t.class_names for t in teachers], label_mapping)
        label_free = not scored.labeled
        transfer_rows, check_rows = label_free_split(len(data.train), config.seed) if label_free else (None, None)
        if label_free:
            warnings.warn(
                f"no labeled data: the run is measured label-free on {len(check_rows)} transfer images held out of "
                f"training (agreement with the teachers, not accuracy). For accuracy, give labeled evaluation data "
                "(eval_data=..., `amalgam run --eval-data ...`, [data] eval = ...)", stacklevel=2)
            label_map = transfer_map = []
        else:
            label_map = data_label_map(scored, label_space)
            warn_lost_accuracy(scored, label_space, label_map, teachers)
            transfer_map = label_map if scored is data else label_space.map_classes(data.class_names)
        torch.manual_seed(config.seed)  # the initial weights of the method's parts and the student belong to the seed
        method_module = create_method(method, label_space, teachers, dict(method_options or {}))
        needs = method_module.needs()
        if isinstance(student, Student):
            if student_pretrained:
                raise StudentError("student_pretrained=True starts a student named by architecture from timm's "
                                   "weights; the Student given has its weights already: leave it off")
            check_student(student, label_space, method_module)
        else:
            student = build_student(student, label_space.class_names, pretrained=student_pretrained,
                                    input_size=student_input_size, data_size=data.size, channels=data.channels,
                                    heads=needs.heads, serve=needs.serve)
        visible = stratified_indices(data.train_labels, labeled_fraction, config.seed)
        if needs.labels and not visible.size:
            raise MethodError(f"method {method!r} fits part of itself on labels: give it a labeled_fraction > 0 "
                              "(for example 0.02)")
        if label_free:
            transfer = RelabeledImages(Subset(data.train, transfer_rows), transfer_map)
            test = RelabeledImages(Subset(data.train, check_rows), label_map)
        else:
            transfer = RelabeledImages(data.train, transfer_map, visible=visible)
            test = RelabeledImages(scored.test, label_map)
        description = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "teachers": [t.describe() for t in teachers],
            "label_space": {"classes": list(label_space.class_names), "overlaps": label_space.overlaps(),
                            "mapping": label_mapping},
            "data": {"name": data.name, "transfer_samples": len(transfer), "labeled_samples": int(visible.size),
                     "labeled_fraction": labeled_fraction, "test_samples": len(test),
                     "eval": scored.name if scored is not data else None,
                     "measured": LABEL_FREE if label_free else "labeled",
                     "skipped_images": len(data.skipped) + (len(scored.skipped) if scored is not data else 0)},
            "method": {"name": method, "options": dict(method_options or {}), "paper": method_module.paper,
                       "summary": method_module.summary},
            "student": {"architecture": student.architecture, "origin": student.origin,
                        "parameters": student.num_parameters,
                        "input": student.input_spec.to_dict(), "heads": [h.to_dict() for h in student.head_specs]},
            "train": config.to_dict(),
        }
        return cls(teachers, label_space, method_module, student, transfer, test, visible, config,
                   knowledge or Knowledge(), data.name, description=description,
                   excluded_test_samples=0 if label_free else excluded_test_samples(scored, label_map),
                   label_free=label_free)

    def teacher_signals(self, progress: bool = True) -> TeacherSignals | None:
        """The teachers' outputs as the method needs them: ``None`` when it reads none (or runs the teachers
        itself), else cached once (on disk or in memory) or live on every batch."""
        if self.signals is not None:
            return self.signals
        needs = self.method.needs()
        if needs.teacher_signals == "none":
            return None
        from accelerate import PartialState

        state = PartialState()
        for teacher in self.teachers:
            teacher.to(state.device)
        if needs.teacher_signals == "live":  # it runs them on inputs or sub-networks of its own
            return None
        taps = needs.taps_per_teacher(len(self.teachers))
        cache, where = self.knowledge.cache_teachers, self.knowledge.knowledge_cache
        views = self.views()
        if cache and where is not False:
            root = None if where is True else Path(where)
            # every process computes its shard of a missing cache; the main one joins them (KnowledgeCache.build)
            self.signals = KnowledgeCache.build(
                self.teachers, views, data_name=self.data_name, taps=taps, root=root,
                max_cache_gb=self.knowledge.max_cache_gb, mixed_precision=self.config.mixed_precision,
                num_workers=self.config.loader_workers(self.transfer), progress=progress and state.is_local_main_process)
        elif cache and not any(taps):
            self.signals = CachedSignals.compute(self.teachers, views, progress=progress)
        else:
            # Live teachers see exactly the views the student sees, as the cache does.
            logger.info("teacher signals: live teachers on every batch (%s)",
                        "cache_teachers=False" if not cache else
                        "knowledge_cache=False keeps only logits in memory and the method taps features")
            self.signals = LiveSignals(self.teachers, taps)
        return self.signals

    def views(self) -> TransferViews:
        """The transfer set as training reads it: its augmented views (one per image without augmentation)."""
        return TransferViews(self.transfer, self.config.augmentation, self.config.seed)

    def fit(
        self,
        *,
        progress: bool = True,
        test_each_epoch: bool = True,
        on_epoch: EpochCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> list[dict]:
        """Set the method up and train the student (see :func:`amalgam.engine.train`); one record per epoch,
        with the test accuracy after each epoch unless ``test_each_epoch`` is off."""
        signals = self.teacher_signals(progress)
        labeled = None
        if signals is not None and self.visible.size:
            # with augmentation the signals are the views'; the labeled images themselves are shown to the teachers
            clean = signals if not self.config.augment else LiveSignals(
                self.teachers, self.method.needs().taps_per_teacher(len(self.teachers)))
            labeled = LabeledSet.gather(self.transfer, self.visible, clean)
        return train(
            self.student, self.method, signals, self.transfer, self.config,
            labeled=labeled, transfer_logits=getattr(signals, "logits", None),
            evaluate=(lambda model: accuracy(model, self.test)) if test_each_epoch and not self.label_free else None,
            progress=progress,
            on_epoch=on_epoch, should_stop=should_stop, checkpoint_dir=checkpoint_dir, resume=resume,
        )

    def evaluate(self, history: list[dict]) -> dict[str, Any]:
        """The run's metrics on the test split: the student (accuracy, calibration, per head, per class,
        confusion), the teachers, the method's combined target, and the training history."""
        student, test = self.student, self.test
        if self.label_free:
            report = label_free_report(student, self.method.to(self.teachers[0].device).eval(), self.teachers,
                                       self.label_space, test)
            report["student"] = {"architecture": student.architecture, "parameters": student.num_parameters,
                                 **report["student"]}
            return {**report, **self._run_facts(history)}
        members, targets = member_probabilities(student, test)  # heads x samples x classes
        predictions = members.mean(dim=0).argmax(dim=-1)
        calibration = ensemble_report(members, targets)
        return {
            "student": {
                "architecture": student.architecture,
                "parameters": student.num_parameters,
                "accuracy": calibration.pop("accuracy"),
                "calibration": calibration,  # NLL, ECE, Brier; with several heads, their uncertainty decomposition
                "heads": head_accuracies(student, test),  # each classification head on the classes it knows
                "per_class": per_class_accuracy(predictions, targets, self.label_space.class_names),
                "confusion": confusion_matrix(predictions, targets, self.label_space.num_classes),
            },
            **evaluate_teachers(self.teachers, self.label_space, test),
            "method_target": {"accuracy": target_accuracy(self.method.to(self.teachers[0].device).eval(),
                                                          self.teachers, test)},
            "kind": "labeled",
            "test_samples": int(targets.numel()),
            "excluded_test_samples": self.excluded_test_samples,
            **self._run_facts(history),
        }

    def _run_facts(self, history: list[dict]) -> dict[str, Any]:
        return {"method": self.method.name, "data": self.data_name, "labeled_samples": int(self.visible.size),
                "skipped_images": self.description.get("data", {}).get("skipped_images", 0), "history": history}

    def check_resumes(self, run_dir: str | os.PathLike) -> None:
        """Refuse to resume the run recorded in ``run_dir/run.json`` with anything that shapes the result
        changed (teachers, classes, data, labeled fraction, method and options, student, training budget): the
        error names the first difference, so a resumed run never saves one run's student under another's record."""
        path = Path(run_dir) / RUN_FILE
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot resume {str(run_dir)!r}: its run.json (what the run is) is unreadable "
                                  f"({err}); start a new run") from None
        difference = first_difference(_result_shaping(recorded), _result_shaping(self.description))
        if difference is not None:
            where, was, now = difference
            raise CheckpointError(
                f"cannot resume {str(run_dir)!r} with a different run: {where} was {was!r} when it started, and is "
                f"{now!r} now. Resume with what it was started with (its recipe.json), or start a new run."
            )

    def record(self, run_dir: str | os.PathLike) -> None:
        """Write ``run.json`` (what the run is), first, so that a crashed run still says what it was."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_FILE).write_text(json.dumps(self.description, indent=2))

    def save(self, run_dir: str | os.PathLike, metrics: Mapping[str, Any]) -> None:
        """Write the trained student (``student/``) and ``metrics.json`` into ``run_dir``."""
        run_dir = Path(run_dir)
        self.student.save_pretrained(run_dir / "student")
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def _result_shaping(description: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a ``run.json`` that change what a run computes (not when it was created, nor the cosmetic
    parts: the method's citation, where checkpoints go, the device); JSON-normalised, as it is stored."""
    shaping = {key: description.get(key) for key in ("teachers", "label_space", "data", "student")}
    # what follows from the data named (how it is measured, files skipped) is not compared on its own, and a
    # run.json written before these keys existed (or before students had an origin) still resumes
    shaping["data"] = {k: v for k, v in (shaping["data"] or {}).items() if k not in ("measured", "skipped_images")}
    shaping["student"] = {"origin": None, **(shaping["student"] or {})}
    shaping["method"] = {k: description.get("method", {}).get(k) for k in ("name", "options")}
    defaults = TrainConfig().to_dict()  # a run.json written before an option existed had its default
    shaping["train"] = {k: description.get("train", {}).get(k, defaults[k]) for k in RESUME_MUST_MATCH}
    return json.loads(json.dumps(shaping))


def first_difference(before: Any, after: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """The first place (``"method.name"``, ``"teachers[1].classes"``) where two JSON-like values differ, with
    both values there; ``None`` when they are equal.

    >>> first_difference({"method": {"name": "wsl"}}, {"method": {"name": "soft-targets"}})
    ('method.name', 'wsl', 'soft-targets')
    """
    if isinstance(before, dict) and isinstance(after, dict):
        for key in [*before, *(k for k in after if k not in before)]:
            found = first_difference(before.get(key), after.get(key), f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (a, b) in enumerate(zip(before, after)):
            found = first_difference(a, b, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    return None if before == after else (where, before, after)
