"""``amalgamate``: teachers + data + method -> a trained, evaluated, saved student (a :class:`Pipeline` run)."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from amalgam.config import TrainConfig
from amalgam.engine.checkpoint import CheckpointError, check_checkpoint_dir
from amalgam.engine.label_free import LABEL_FREE, label_free_rows
from amalgam.engine.trainer import EpochCallback
from amalgam.knowledge import DEFAULT_MAX_CACHE_GB
from amalgam.pipeline import Knowledge, Pipeline
from amalgam.students import Student
from amalgam.teachers import LabelSpace, Teacher

DEFAULT_STUDENT = "test_efficientnet"


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


def amalgamate(
    teachers: Sequence[Teacher | str | os.PathLike | nn.Module],
    student: str | os.PathLike | nn.Module = DEFAULT_STUDENT,
    data: Any = "digits",
    method: str = "soft-targets",
    *,
    student_pretrained: bool = False,
    eval_data: Any = None,
    method_options: Mapping[str, Any] | None = None,
    label_mapping: Mapping[str, str] | Sequence[Mapping[str, str] | None] | None = None,
    labeled_fraction: float = 0.0,
    student_input_size: int | None = None,
    train: TrainConfig | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    cache_teachers: bool = True,
    knowledge_cache: bool | str | os.PathLike = True,
    max_cache_gb: float = DEFAULT_MAX_CACHE_GB,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    **train_options: Any,
) -> AmalgamationResult:
    """Train one student that covers the union of the teachers' classes.

    Args:
        teachers: :class:`Teacher` objects, or sources for :func:`load_teacher` (Hub ids, folders).
        student: a timm architecture name (built over the union classes, from scratch), a pretrained timm body
            to start from (``"hf-hub:timm/<name>[@revision]"``, a local timm folder with ``config.json`` +
            ``model.safetensors``, or a timm ``nn.Module``: its weights, normalisation and input size are kept,
            its classifier replaced; see :func:`amalgam.students.build_student`), or a ready :class:`Student`.
        student_pretrained: start a student named by a timm architecture from timm's pretrained weights of it
            (pulled from timm's Hub repo, so it needs the Hub or a cached copy).
        data: the transfer set: ``"digits"``, ``"fashion-mnist"``, a ``datasets`` Hub id, a folder of images
            (class sub-folders give labels; a flat or nested folder has none), a ``save_to_disk`` folder, a
            ``datasets.Dataset``, a list of image files, or :class:`ImageData` (see :func:`amalgam.load_data`). Its
            train split is the transfer set; its labels, if any, are used only for ``labeled_fraction`` of it.
        eval_data: labeled data that measures the student and the teachers (any form above; its test split, or
            all of it when it has none). Default: the test split of ``data``, which then must be labeled.
        method: a registered method name (``amalgam.methods.available_methods()``).
        method_options: the method's keyword options (checked before training starts).
        label_mapping: renames/merges teacher classes, see :meth:`LabelSpace.union`.
        labeled_fraction: stratified fraction of the transfer set whose labels the method may use.
        train: the training budget as a :class:`~amalgam.config.TrainConfig`; or give its fields as keywords
            (``epochs=10, batch_size=64, lr=3e-3, parts_lr=None, seed=0, mixed_precision="no",
            grad_accumulation=1, checkpoint_every=0, weight_decay=1e-4, cpu=False``), which also override
            ``train``'s. ``parts_lr`` is the learning rate of the method's own parts (adapters, common-feature
            blocks, trust or fusion weights), in a parameter group of their own (``None``: ``lr``);
            ``mixed_precision`` is ``"no"``, ``"bf16"`` (GPUs and CPUs) or ``"fp16"`` (GPUs);
            ``grad_accumulation`` batches make one optimizer step; ``checkpoint_every`` optimizer steps between
            checkpoints in ``run_dir/checkpoints`` (0: only at the end of each epoch).
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
        >>> pretrained = amalgamate(build_demo_zoo(), student="hf-hub:timm/tf_efficientnet_lite0.in1k",
        ...                         student_input_size=64, epochs=1, progress=False)  # doctest: +SKIP
    """
    started = time.perf_counter()
    config = train_config(train, train_options)
    checkpoints = Path(run_dir) / "checkpoints" if run_dir is not None else None
    if resume and checkpoints is None:
        raise CheckpointError("amalgamate(resume=True) needs run_dir: the folder of the run to continue")
    if checkpoints is not None:  # before any work: a resumed run needs a checkpoint there, a new one none
        check_checkpoint_dir(checkpoints, resume, argument="run_dir's checkpoint folder")
    run = Pipeline.plan(teachers, student, data, method, student_pretrained=student_pretrained,
                        eval_data=eval_data, method_options=method_options,
                        label_mapping=label_mapping,
                        labeled_fraction=labeled_fraction, student_input_size=student_input_size, config=config,
                        knowledge=Knowledge(cache_teachers, knowledge_cache, max_cache_gb))
    if resume:
        run.check_resumes(run_dir)
    elif run_dir is not None:  # written first, so a crashed run still says what it was
        run.record(run_dir)
    history = run.fit(progress=progress, on_epoch=on_epoch, should_stop=should_stop, checkpoint_dir=checkpoints,
                      resume=resume)
    metrics = run.evaluate(history) | {"seconds": time.perf_counter() - started}
    if run_dir is not None:
        run.save(run_dir, metrics)
    return AmalgamationResult(run.student, metrics, run.label_space, run.teachers,
                              Path(run_dir) if run_dir is not None else None, history)


def train_config(train: TrainConfig | None, options: Mapping[str, Any]) -> TrainConfig:
    """``train`` (default: :class:`TrainConfig`'s defaults) with ``options`` (its fields by name) overriding it;
    an unknown name is an error that lists the fields."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"amalgamate() got unexpected keyword argument(s) {unknown}; the training budget's are "
                        f"{sorted(known)}")
    return dataclasses.replace(train or TrainConfig(), **options)


def result_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The results table's rows, a header row first: each teacher on its own classes, the teachers together,
    the student; for a run without labels, the student's agreement with its target and with each teacher (not
    accuracy). The student's row starts with ``"student "``.

    >>> metrics = {"teachers": {"t": {"test_samples": 0}}, "test_samples": 4, "ensemble": {"accuracy": 0.5},
    ...            "concatenated": {"accuracy": 0.25}, "oracle": {"accuracy": 0.75},
    ...            "student": {"architecture": "s", "accuracy": 1.0}}
    >>> [row[2] for row in result_rows(metrics)]
    ['accuracy', 'n/a', '0.5000', '0.2500', '0.7500', '1.0000']
    """
    if metrics.get("kind") == LABEL_FREE:
        return [("label-free measure", "evaluated on", "agreement"),
                *((what, on, f"{value:.4f}") for what, on, value in label_free_rows(metrics))]
    rows = [("model", "evaluated on", "accuracy")]
    for name, result in metrics["teachers"].items():  # a teacher none of whose classes occur has no accuracy
        rows.append((f"teacher {name}", f"its own classes ({result['test_samples']} images)",
                     f"{result['accuracy_on_own_classes']:.4f}" if result["test_samples"] else "n/a"))
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
    return rows


def format_results(metrics: Mapping[str, Any]) -> str:
    """:func:`result_rows` as a fixed-width table."""
    return _table(result_rows(metrics))


def _table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
