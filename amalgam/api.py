"""``amalgamate``: teachers + data + method -> a trained, evaluated, saved student."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from amalgam.data import ImageData, RelabeledImages, load_data, stratified_indices
from amalgam.engine import (
    TrainConfig, accuracy, confusion_matrix, evaluate_teachers, head_accuracies, member_probabilities,
    per_class_accuracy, target_accuracy, train,
)
from amalgam.engine.uncertainty import ensemble_report
from amalgam.engine.checkpoint import CheckpointError, check_checkpoint_dir
from amalgam.engine.trainer import EpochCallback
from amalgam.errors import DataError, MethodError, StudentError, TeacherError
from amalgam.knowledge import DEFAULT_MAX_CACHE_GB, CachedSignals, KnowledgeCache, LiveSignals, TeacherSignals
from amalgam.methods import LabeledSet, Method, create_method
from amalgam.students import Head, Student, default_input_size
from amalgam.teachers import LabelSpace, Teacher, load_teacher

DEFAULT_STUDENT = "test_efficientnet"
logger = logging.getLogger(__name__)


@dataclass
class AmalgamationResult:
    """What :func:`amalgamate` returns: the trained student, its metrics, and where the run was saved."""

    student: Student
    metrics: dict[str, Any]
    label_space: LabelSpace
    teachers: list[Teacher]
    run_dir: Path | None = None
    history: list[dict] = field(default_factory=list)

    def table(self) -> str:
        """The run's results as a plain-text table (what ``amalgam run`` prints)."""
        return format_results(self.metrics)


def data_label_map(data: ImageData, label_space: LabelSpace) -> list[int]:
    """Union index of each of the data set's classes, -1 for classes no teacher knows."""
    mapping = [label_space.index_of(name) for name in data.class_names]
    if all(j is None for j in mapping):
        raise DataError(
            f"the data set {data.name!r} shares no class with the teachers: its classes are {data.class_names}, "
            f"the teachers' are {list(label_space.class_names)}. Pass label_mapping to align the names."
        )
    return [-1 if j is None else j for j in mapping]


def check_student(student: Student, label_space: LabelSpace, heads: Sequence[Head] | None, serve: str | None,
                  method: str) -> None:
    """A given student must predict the union classes and have the heads the method trains (or none), served
    as the method serves them."""
    if list(student.class_names) != list(label_space.class_names):
        raise StudentError(f"the student's classes {student.class_names} differ from the teachers' union "
                           f"{list(label_space.class_names)}")
    if list(student.head_specs) != list(heads or []) or student.serve != serve:
        wanted = [h.to_dict() for h in heads] if heads else "none (one classifier)"
        raise StudentError(f"method {method!r} trains a student with heads {wanted} (served by {serve!r}); the "
                           f"student given has {[h.to_dict() for h in student.head_specs] or 'none'} (served by "
                           f"{student.serve!r}). Pass the architecture name "
                           "instead, and amalgamate builds the student the method needs.")


def amalgamate(
    teachers: Sequence[Teacher | str | os.PathLike | nn.Module],
    student: str | Student = DEFAULT_STUDENT,
    data: str | ImageData = "digits",
    method: str = "soft-targets",
    *,
    method_options: Mapping[str, Any] | None = None,
    label_mapping: Mapping[str, str] | Sequence[Mapping[str, str] | None] | None = None,
    labeled_fraction: float = 0.0,
    student_input_size: int | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    parts_lr: float | None = None,
    seed: int = 0,
    mixed_precision: str = "no",
    grad_accumulation: int = 1,
    checkpoint_every: int = 0,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    cache_teachers: bool = True,
    knowledge_cache: bool | str | os.PathLike = True,
    max_cache_gb: float = DEFAULT_MAX_CACHE_GB,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> AmalgamationResult:
    """Train one student that covers the union of the teachers' classes.

    Args:
        teachers: :class:`Teacher` objects, or sources for :func:`load_teacher` (Hub ids, folders).
        student: a timm architecture name (built over the union classes), or a ready :class:`Student`.
        data: ``"digits"``, ``"fashion-mnist"``, a ``datasets`` Hub id, an image folder, or :class:`ImageData`.
            Its train split is the transfer set; its labels are used only for ``labeled_fraction`` of it.
        method: a registered method name (``amalgam.methods.available_methods()``).
        method_options: the method's keyword options (checked before training starts).
        label_mapping: renames/merges teacher classes, see :meth:`LabelSpace.union`.
        labeled_fraction: stratified fraction of the transfer set whose labels the method may use.
        parts_lr: learning rate of the method's own trainable parts (adapters, common-feature blocks, trust or
            fusion weights), which train in a parameter group of their own; ``None``: the student's ``lr``.
        mixed_precision: ``"no"``, ``"bf16"`` (GPUs and CPUs) or ``"fp16"`` (GPUs), passed to accelerate.
        grad_accumulation: batches whose gradients are averaged into one optimizer step (an effective batch of
            ``batch_size * grad_accumulation`` in the memory of ``batch_size``).
        checkpoint_every: optimizer steps between checkpoints in ``run_dir/checkpoints`` (0: only at the end of
            each epoch; without ``run_dir`` there are none).
        run_dir: where to save ``student/``, ``metrics.json``, ``run.json`` and the training checkpoints
            (``checkpoints/``, the newest only); nothing saved if ``None``. A new run needs a folder without
            checkpoints.
        resume: continue the run in ``run_dir`` from its newest checkpoint, with the same arguments it was started
            with; it ends with the weights an uninterrupted run would have.
        cache_teachers: compute the teachers' outputs on the transfer set once, instead of every batch (the
            teachers are frozen, so results are the same). ``False`` runs the teachers live on every batch.
        knowledge_cache: where the computed outputs are kept: ``True``, on disk under
            ``$AMALGAM_HOME/knowledge`` (logits and the features the method taps, reused by later runs with the
            same teacher weights, data, input transform and taps); a folder, on disk there; ``False``, in
            memory for this run only (logits only: a method that taps features then runs the teachers live).
        max_cache_gb: the most a run may write to the knowledge cache; a larger cache is refused with an error.
        should_stop: asked between training batches; when it returns True the run ends, raising
            :class:`~amalgam.errors.RunCancelled` (``run.json`` and the newest checkpoint stay, nothing else is
            saved).

    Example:
        >>> from amalgam.zoo import build_demo_zoo
        >>> result = amalgamate(build_demo_zoo(), data="digits", epochs=1, progress=False)  # doctest: +SKIP
        >>> result.metrics["student"]["accuracy"] > 0.1  # doctest: +SKIP
        True
    """
    started = time.perf_counter()
    if not teachers:
        raise TeacherError("amalgamate needs at least one teacher")
    teachers = [t if isinstance(t, Teacher) else load_teacher(t) for t in teachers]
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, parts_lr=parts_lr, seed=seed,
                         mixed_precision=mixed_precision,
                         grad_accumulation=grad_accumulation, checkpoint_every=checkpoint_every)
    checkpoints = Path(run_dir) / "checkpoints" if run_dir is not None else None
    if resume and checkpoints is None:
        raise CheckpointError("amalgamate(resume=True) needs run_dir: the folder of the run to continue")
    if checkpoints is not None:  # before any work: a resumed run needs a checkpoint there, a new one none
        check_checkpoint_dir(checkpoints, resume, argument="run_dir's checkpoint folder")
    data = load_data(data)
    label_space = LabelSpace.union([t.class_names for t in teachers], label_mapping)
    label_map = data_label_map(data, label_space)
    torch.manual_seed(seed)  # the initial weights of the method's parts and the student are part of ``seed``
    method_module = create_method(method, label_space, teachers, dict(method_options or {}))
    heads = method_module.student_heads()
    if isinstance(student, str):
        student = Student(
            student,
            class_names=label_space.class_names,
            input_size=student_input_size or default_input_size(data.size),
            channels=data.channels,
            heads=heads,
            serve=method_module.student_serve(),
        )
    else:
        check_student(student, label_space, heads, method_module.student_serve(), method)

    visible = stratified_indices(data.train_labels, labeled_fraction, seed)
    if method_module.requires_labels and not visible.size:
        raise MethodError(f"method {method!r} fits part of itself on labels: give it a labeled_fraction > 0 "
                          "(for example 0.02)")
    transfer = RelabeledImages(data.train, label_map, visible=visible)
    test = RelabeledImages(data.test, label_map)
    run_path = Path(run_dir) if run_dir is not None else None
    description = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "teachers": [t.describe() for t in teachers],
        "label_space": {"classes": list(label_space.class_names), "overlaps": label_space.overlaps(),
                        "mapping": label_mapping},
        "data": {"name": data.name, "transfer_samples": len(transfer), "labeled_samples": int(visible.size),
                 "labeled_fraction": labeled_fraction, "test_samples": len(test)},
        "method": {"name": method, "options": dict(method_options or {}), "paper": method_module.paper,
                   "summary": method_module.summary},
        "student": {"architecture": student.architecture, "parameters": student.num_parameters,
                    "input": student.input_spec.to_dict(), "heads": [h.to_dict() for h in student.head_specs]},
        "train": config.to_dict(),
    }
    if run_path is not None and not resume:  # written first, so a crashed run still says what it was
        run_path.mkdir(parents=True, exist_ok=True)
        (run_path / "run.json").write_text(json.dumps(description, indent=2))

    signals = _teacher_signals(teachers, method_module, transfer, data.name, cache_teachers, knowledge_cache,
                               max_cache_gb, progress)
    if signals is not None:
        labeled = LabeledSet.gather(transfer, visible, signals) if visible.size else None
        method_module.prepare(labeled, getattr(signals, "logits", None))  # whole-set logits when computed once
    history = train(
        student, method_module, signals, transfer, config,
        evaluate=lambda model: accuracy(model, test), progress=progress, on_epoch=on_epoch,
        should_stop=should_stop, checkpoint_dir=checkpoints, resume=resume,
    )
    members, targets = member_probabilities(student, test)  # heads x samples x classes
    predictions = members.mean(dim=0).argmax(dim=-1)
    calibration = ensemble_report(members, targets)
    metrics = {
        "student": {
            "architecture": student.architecture,
            "parameters": student.num_parameters,
            "accuracy": calibration.pop("accuracy"),
            "calibration": calibration,  # NLL, ECE, Brier; with several heads, their uncertainty decomposition
            "heads": head_accuracies(student, test),  # each classification head on the classes it knows
            "per_class": per_class_accuracy(predictions, targets, label_space.class_names),
            "confusion": confusion_matrix(predictions, targets, label_space.num_classes),
        },
        **evaluate_teachers(teachers, label_space, test),
        "method_target": {"accuracy": target_accuracy(method_module.to(teachers[0].device).eval(), teachers, test)},
        "test_samples": int(targets.numel()),
        "excluded_test_samples": int(sum(1 for y in data.test_labels if label_map[int(y)] < 0)),
        "method": method,
        "data": data.name,
        "labeled_samples": int(visible.size),
        "history": history,
        "seconds": time.perf_counter() - started,
    }
    if run_path is not None:
        student.save_pretrained(run_path / "student")
        (run_path / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return AmalgamationResult(student, metrics, label_space, teachers, run_path, history)


def _teacher_signals(teachers: Sequence[Teacher], method: Method, transfer: RelabeledImages, data_name: str,
                     cache: bool, knowledge_cache: bool | str | os.PathLike, max_cache_gb: float,
                     progress: bool) -> TeacherSignals | None:
    from accelerate import PartialState

    if not method.uses_teachers:
        return None
    state = PartialState()
    for teacher in teachers:
        teacher.to(state.device)
    if method.runs_teachers:  # it runs them itself, on inputs or sub-networks of its own: nothing to precompute
        return None
    taps = method.teacher_taps()
    if cache and knowledge_cache is not False:
        root = None if knowledge_cache is True else Path(knowledge_cache)
        with state.local_main_process_first():  # one process writes a missing cache, the others then read it
            return KnowledgeCache.build(teachers, transfer, data_name=data_name, taps=taps, root=root,
                                        max_cache_gb=max_cache_gb, progress=progress and state.is_local_main_process)
    if cache and not any(taps):
        return CachedSignals.compute(teachers, transfer, progress=progress)
    # Live teachers see exactly the batch the student sees: the path for random augmentation, should it be added.
    logger.info("teacher signals: live teachers on every batch (%s); cached signals would hold only for "
                "un-augmented images, and amalgam applies no random augmentation",
                "cache_teachers=False" if not cache else "knowledge_cache=False keeps only logits in memory and the "
                "method taps features")
    return LiveSignals(teachers, taps)


def format_results(metrics: Mapping[str, Any]) -> str:
    """A fixed-width table: each teacher on its own classes, the teachers together, the student."""
    rows = [("model", "evaluated on", "accuracy")]
    for name, result in metrics["teachers"].items():
        rows.append((f"teacher {name}", f"its own classes ({result['test_samples']} images)",
                     f"{result['accuracy_on_own_classes']:.4f}"))
    union = f"all union classes ({metrics['test_samples']} images)"
    rows.append(("teachers together (mean)", union, f"{metrics['ensemble']['accuracy']:.4f}"))
    rows.append(("teachers concatenated", union, f"{metrics['concatenated']['accuracy']:.4f}"))
    if metrics.get("method_target", {}).get("accuracy") is not None:
        rows.append((f"teachers combined by {metrics['method']}", union,
                     f"{metrics['method_target']['accuracy']:.4f}"))
    rows.append(("teacher oracle (reference)", union, f"{metrics['oracle']['accuracy']:.4f}"))
    student = metrics["student"]
    rows.append((f"student {student['architecture']}", union, f"{student['accuracy']:.4f}"))
    for name, head in student.get("heads", {}).items():
        rows.append((f"  its head {name}", f"its own classes ({head['test_samples']} images)",
                     f"{head['accuracy_on_own_classes']:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
