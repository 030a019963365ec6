"""What a publish reads: a finished run folder, or a bare student folder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amalgam.errors import PublishError

# What ``amalgamate(..., run_dir=...)`` writes; ``run.json`` comes first, so a crashed run lacks the others.
RUN_FILES = ("run.json", "metrics.json", "student/config.json", "student/model.safetensors")


@dataclass(frozen=True)
class RunRecord:
    """A student folder (``config.json`` + ``model.safetensors``) and what is known about how it was made.

    ``description`` is ``run.json`` (teachers, label space, data, method, student, training) and ``metrics``
    is ``metrics.json``; a student published without its run has only ``description["student"]`` and no metrics.

    Example:
        >>> record = RunRecord.for_student(Path("student"), {"architecture": "test_efficientnet",
        ...     "class_names": ["cat", "dog"], "input_size": 32, "channels": 3, "mean": [0.5], "std": [0.5]})
        >>> record.class_names, record.has_run
        (['cat', 'dog'], False)
    """

    student_dir: Path
    student_config: dict[str, Any]
    description: dict[str, Any]
    metrics: dict[str, Any] | None = None

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.student_config["class_names"]]

    @property
    def has_run(self) -> bool:
        return self.metrics is not None

    @classmethod
    def for_student(cls, student_dir: Path, config: dict[str, Any], parameters: int | None = None) -> "RunRecord":
        """A record for a student whose run is unknown: the card then describes only the student."""
        size = config["input_size"]
        spec = {"size": [size, size] if isinstance(size, int) else list(size), "channels": config["channels"],
                "mean": list(config["mean"]), "std": list(config["std"])}
        student = {"architecture": config["architecture"], "origin": config.get("origin"), "parameters": parameters,
                   "input": spec}
        return cls(Path(student_dir), dict(config), {"student": student})


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PublishError(f"cannot read {path}: {err}") from None


def load_run(run_dir: str | os.PathLike) -> RunRecord:
    """Read the run folder that ``amalgamate(..., run_dir=...)`` or ``amalgam run`` wrote.

    Example:
        >>> load_run("no/such/run")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        amalgam.errors.PublishError: no/such/run is not a finished amalgam run folder: run.json, ... missing. ...
    """
    run_dir = Path(run_dir)
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise PublishError(
            f"{run_dir} is not a finished amalgam run folder: {', '.join(missing)} missing. Publish a folder "
            "written by amalgamate(..., run_dir=...) or `amalgam run`."
        )
    return RunRecord(
        student_dir=run_dir / "student",
        student_config=read_json(run_dir / "student" / "config.json"),
        description=read_json(run_dir / "run.json"),
        metrics=read_json(run_dir / "metrics.json"),
    )
