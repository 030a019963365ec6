"""Runs in the app: a queue of background amalgamations with a concurrency limit, and the runs saved on disk."""

from __future__ import annotations

import json
import math
import logging
import re
import shutil
import tempfile
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from amalgam.api import DEFAULT_STUDENT, amalgamate
from amalgam.app.teachers import TeacherCatalog
from amalgam.data.augment import Augmentation
from amalgam.engine.label_free import student_score
from amalgam.errors import AmalgamError, RunCancelled
from amalgam.methods.registry import check_method, create_method
from amalgam.students import check_student_source
from amalgam.teachers import LabelSpace, Teacher

logger = logging.getLogger(__name__)

QUEUED, RUNNING, FINISHED, FAILED, CANCELLED = "queued", "running", "finished", "failed", "cancelled"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
OUTCOME_FILE = "outcome.json"  # how a run without a student ended (runs.write_outcome)


class RequestError(AmalgamError):
    """A run request that cannot run; ``problems`` says what is wrong with each field, by the field's name."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__("; ".join(self.problems.values()))


@dataclass(frozen=True)
class RunRequest:
    """What a user asked for: teacher sources, data, method and training budget (``amalgamate``'s arguments).

    Fields come as the page sends them (a number box left empty is ``None``): :meth:`problems` says what is
    wrong with each before anything runs.

    Example:
        >>> for field, problem in RunRequest(teachers=(), data="digits", epochs=None).problems().items():
        ...     print(f"{field}: {problem}")
        teachers: add at least one teacher before starting a run
        epochs: epochs: enter a whole number of at least 1
    """

    teachers: tuple[str, ...]
    data: str
    method: str = "soft-targets"
    method_options: Mapping[str, Any] = field(default_factory=dict)
    labeled_fraction: float = 0.0
    epochs: int = 5
    lr: float = 3e-3
    student: str = DEFAULT_STUDENT
    eval_data: str | None = None  # labeled data to measure on (default: the data's test split; none: label-free)
    augment: str = ""  # consistent augmentation, comma-separated (amalgam.data.augment)

    def problems(self, teachers: Sequence[Teacher] | None = None) -> dict[str, str]:
        """What would fail only later, in the background, by field: no teachers, bad method options, a student
        timm does not know, a budget out of range or left empty, an unknown augmentation; with the loaded
        ``teachers``, also a method that fits part of itself on labels in a run without any."""
        found: dict[str, str] = {}

        def check(name: str, test: Callable[[], Any]) -> None:
            try:
                test()
            except (AmalgamError, ValueError) as err:
                found[name] = str(err)

        if not self.teachers:
            found["teachers"] = "add at least one teacher before starting a run"
        check("method_options", lambda: check_method(self.method, dict(self.method_options)))
        check("student", lambda: check_student_source(self.student))
        if not _number(self.labeled_fraction) or not 0.0 <= self.labeled_fraction <= 1.0:
            found["labeled_fraction"] = f"the labeled fraction must be within [0, 1], got {self.labeled_fraction}"
        if not _number(self.epochs) or int(self.epochs) != self.epochs or self.epochs < 1:
            found["epochs"] = "epochs: enter a whole number of at least 1" + (
                f", got {self.epochs}" if self.epochs is not None else "")
        if not _number(self.lr) or self.lr <= 0:
            found["lr"] = "the learning rate must be a positive number" + (
                f", got {self.lr}" if self.lr is not None else "")
        check("augment", lambda: Augmentation.parse(self.augment))
        if teachers and not {"method_options", "labeled_fraction"} & found.keys() and self.labeled_fraction == 0:
            space = LabelSpace.union([t.class_names for t in teachers])
            if create_method(self.method, space, teachers, dict(self.method_options)).needs().labels:
                found["labeled_fraction"] = (f"{self.method} fits part of itself on labels: give it a labeled "
                                             "fraction above 0 (for example 0.02)")
        return found

    def check(self, teachers: Sequence[Teacher] | None = None) -> None:
        """Raise :class:`RequestError` with every field's problem (:meth:`problems`), if there is any."""
        found = self.problems(teachers)
        if found:
            raise RequestError(found)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class RunState:
    """A run the app started: its status, per-epoch history (appended as training goes) and outcome."""

    run_id: str
    request: RunRequest
    run_dir: Path
    status: str = QUEUED
    history: list[dict] = field(default_factory=list)
    message: str = ""
    metrics: dict | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self.ended.is_set()

    @property
    def fraction(self) -> float:
        """How much of the training is done, from 0 to 1."""
        return 1.0 if self.status == FINISHED else len(self.history) / self.request.epochs

    def describe(self) -> str:
        """One line for people: where the run stands."""
        epochs = self.request.epochs
        if self.status == QUEUED:
            return "queued: waiting for a free slot"
        if self.status == RUNNING:
            if not self.history:
                return f"running: preparing data and teachers' outputs, then epoch 1/{epochs}"
            last = self.history[-1]
            step = f"epoch {last['epoch']}/{epochs} done · loss {last['loss']:.4f}"
            if "test_accuracy" in last:
                step += f" · test accuracy {last['test_accuracy']:.4f}"
            return f"running: {step}"
        if self.status == FINISHED and self.metrics is not None:
            measure, value = student_score(self.metrics)
            return f"finished: student {measure} {value:.4f}"
        return f"{self.status}: {self.message}"


class RunManager:
    """Runs ``amalgamate`` in background threads, at most ``max_concurrent`` at once; the rest wait in a queue.

    Each run saves into ``runs_dir/<run id>`` (``run.json``, ``metrics.json``, ``student/``), so the runs outlive
    the app; :func:`list_runs` reads them back.

    Example:
        >>> manager = RunManager("runs", max_concurrent=1)
        >>> state = manager.submit(RunRequest(teachers=("zoo/cnn",), data="digits", epochs=1))  # doctest: +SKIP
        >>> manager.cancel(state.run_id)  # doctest: +SKIP
        True
    """

    def __init__(self, runs_dir: str | Path, max_concurrent: int = 1, max_waiting: int = 8,
                 catalog: TeacherCatalog | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.max_waiting = max_waiting
        self.catalog = catalog or TeacherCatalog()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="amalgam-run")
        self._runs: dict[str, RunState] = {}
        self._lock = threading.Lock()

    def submit(self, request: RunRequest) -> RunState:
        """Check ``request`` (its teachers loaded, so a method that needs labels is caught here too) and queue
        it; returns its state at once (the run goes on in the background)."""
        request.check()
        request.check([self.catalog.load(source) for source in request.teachers])
        with self._lock:
            waiting = sum(1 for state in self._runs.values() if state.status == QUEUED)
            if waiting >= self.max_waiting:
                raise AmalgamError(f"{waiting} runs are already waiting; try again when one has started")
            run_id = self._new_run_id(request)
            state = RunState(run_id, request, self.runs_dir / run_id)
            self._runs[run_id] = state
        self._pool.submit(self._run, state)
        return state

    def get(self, run_id: str) -> RunState | None:
        with self._lock:
            return self._runs.get(run_id)

    def live(self) -> list[RunState]:
        """Runs that are queued or running."""
        with self._lock:
            return [state for state in self._runs.values() if not state.done]

    def cancel(self, run_id: str) -> bool:
        """Ask run ``run_id`` to stop (a queued run never starts); False if it is unknown or already over."""
        state = self.get(run_id)
        if state is None or state.done:
            return False
        state.cancel_requested.set()
        return True

    def delete(self, run_id: str) -> None:
        """Delete run ``run_id``'s folder; a run still queued or running is refused (cancel it first)."""
        folder = run_folder(self.runs_dir, run_id)
        state = self.get(run_id)
        if state is not None and not state.done:
            raise AmalgamError(f"run {run_id} is still {state.status}: cancel it before deleting it")
        if not folder.is_dir():
            raise AmalgamError(f"there is no run {run_id} to delete")
        shutil.rmtree(folder)
        with self._lock:
            self._runs.pop(run_id, None)

    def shutdown(self) -> None:
        """Cancel every live run and wait for the threads to end (used when the app closes)."""
        for state in self.live():
            state.cancel_requested.set()
        self._pool.shutdown(wait=True)

    def _new_run_id(self, request: RunRequest) -> str:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        data = Path(request.data).name if Path(request.data).is_dir() else request.data
        base = _UNSAFE.sub("-", f"{stamp}-{request.method}-{data}").strip("-")
        run_id, n = base, 1
        while run_id in self._runs or (self.runs_dir / run_id).exists():
            n += 1
            run_id = f"{base}-{n}"
        return run_id

    def _run(self, state: RunState) -> None:
        request = state.request
        try:
            if state.cancel_requested.is_set():
                raise RunCancelled("cancelled before it started")
            state.status = RUNNING
            teachers = [self.catalog.load(source) for source in request.teachers]
            result = amalgamate(
                teachers, student=request.student, data=request.data, method=request.method,
                method_options=dict(request.method_options), labeled_fraction=request.labeled_fraction,
                eval_data=request.eval_data, augment=request.augment,
                epochs=int(request.epochs), lr=request.lr, run_dir=state.run_dir, progress=False,
                on_epoch=state.history.append, should_stop=state.cancel_requested.is_set,
            )
            state.metrics = result.metrics
            state.status = FINISHED
        except RunCancelled as err:
            state.status, state.message = CANCELLED, str(err)
        except AmalgamError as err:
            state.status, state.message = FAILED, str(err)
        except Exception as err:  # noqa: BLE001 - a background run must end with a status, whatever went wrong
            logger.exception("run %s failed", state.run_id)
            state.status, state.message = FAILED, f"{type(err).__name__}: {err}"
        finally:
            # a failed run (even one that failed before its folder was made) and a cancelled one that had started
            # say so on disk, so the run list shows them, and why, after a restart
            if state.status == FAILED or (state.status == CANCELLED and state.run_dir.exists()):
                write_outcome(state)
            state.ended.set()


def write_outcome(state: RunState) -> None:
    """``outcome.json`` in the run's folder: how a run that did not finish ended, why, and what was asked."""
    request = state.request
    state.run_dir.mkdir(parents=True, exist_ok=True)
    ended = datetime.now(timezone.utc).isoformat(timespec="seconds")
    outcome = {"status": state.status, "message": state.message, "ended": ended, "method": request.method,
               "data": request.data, "teachers": list(request.teachers)}
    (state.run_dir / OUTCOME_FILE).write_text(json.dumps(outcome, indent=2))


def read_outcome(run_dir: Path) -> dict | None:
    """What :func:`write_outcome` wrote in ``run_dir`` (``None``: no outcome, or an unreadable one)."""
    try:
        return json.loads((run_dir / OUTCOME_FILE).read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class RunSummary:
    """A run folder on disk, as the run list shows it."""

    run_id: str
    path: Path
    created: str
    method: str
    data: str
    teachers: tuple[str, ...]
    accuracy: float | None  # the student's; None while the run is unfinished (running, failed or cancelled)
    outcome: str = ""  # for a run without a student: "failed: <why>", "cancelled: ..." or "" (interrupted)
    labeled_fraction: float = 0.0  # of the transfer data's labels, that the run used
    measure: str = "accuracy"  # what ``accuracy`` is (a run measured without labels gives its agreement)
    ensemble: float | None = None  # the teachers together (mean) on the same test images
    oracle: float | None = None  # the teacher oracle on the same test images

    @property
    def finished(self) -> bool:
        return self.accuracy is not None

    @property
    def label(self) -> str:
        ending = f"student {self.accuracy:.3f}" if self.finished else (self.outcome.split(":")[0] or "unfinished")
        return f"{self.run_id} · {' + '.join(self.teachers)} · {ending}"


def read_run(run_dir: Path) -> tuple[dict, dict | None]:
    """``run.json`` and ``metrics.json`` of a run folder (``None`` for metrics the run has not written yet).

    >>> read_run(Path("no/such/run"))
    Traceback (most recent call last):
    ...
    amalgam.errors.AmalgamError: no/such/run is not a run folder: it has no readable run.json
    """
    try:
        description = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        raise AmalgamError(f"{run_dir} is not a run folder: it has no readable run.json") from None
    metrics_file = run_dir / "metrics.json"
    has_student = (run_dir / "student" / "model.safetensors").is_file()
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() and has_student else None
    return description, metrics


def list_runs(runs_dir: str | Path) -> list[RunSummary]:
    """The run folders under ``runs_dir`` (those with a ``run.json``), newest first.

    Example:
        >>> list_runs("no/such/folder")
        []
    """
    summaries = []
    folders = {path.parent for pattern in ("*/run.json", f"*/{OUTCOME_FILE}") for path in Path(runs_dir).glob(pattern)}
    for folder in folders:
        outcome = read_outcome(folder)
        ended = f"{outcome['status']}: {outcome['message']}" if outcome else ""
        try:
            if not (folder / "run.json").is_file() and outcome is not None:  # it failed before it was planned
                summaries.append(RunSummary(
                    run_id=folder.name, path=folder, created=str(outcome["ended"]), method=str(outcome["method"]),
                    data=Path(str(outcome["data"])).name, teachers=tuple(map(str, outcome["teachers"])),
                    accuracy=None, outcome=ended))
                continue
            description, metrics = read_run(folder)
            measure, score = student_score(metrics) if metrics else ("accuracy", None)
            summaries.append(RunSummary(
                run_id=folder.name,
                path=folder,
                created=str(description.get("created", "")),
                method=description["method"]["name"],
                data=str(description["data"]["name"]),
                teachers=tuple(t["name"] for t in description["teachers"]),
                accuracy=score,
                outcome=ended,
                labeled_fraction=float(description["data"].get("labeled_fraction") or 0.0),
                measure=measure,
                ensemble=(metrics or {}).get("ensemble", {}).get("accuracy"),
                oracle=(metrics or {}).get("oracle", {}).get("accuracy"),
            ))
        except (AmalgamError, ValueError, KeyError, TypeError) as err:
            logger.warning("skipping %s: %s", folder, err)  # one damaged folder must not hide the others
    return sorted(summaries, key=lambda s: (s.created, s.run_id), reverse=True)


def archive_run(run_dir: Path) -> Path:
    """A zip of a finished run, in a fresh temporary folder: its ``student/`` (what ``Student.from_pretrained``
    loads once unzipped), ``run.json`` and ``metrics.json``.

    >>> archive_run(Path("no/such/run"))
    Traceback (most recent call last):
    ...
    amalgam.errors.AmalgamError: run 'run' has no student to download (it did not finish)
    """
    if not (run_dir / "student" / "model.safetensors").is_file():
        raise AmalgamError(f"run {run_dir.name!r} has no student to download (it did not finish)")
    archive = Path(tempfile.mkdtemp(prefix="amalgam-download-")) / f"{run_dir.name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        files = [path for path in sorted((run_dir / "student").rglob("*")) if path.is_file()]
        for path in [*files, run_dir / "run.json", run_dir / "metrics.json"]:
            zipped.write(path, path.relative_to(run_dir).as_posix())
    return archive


def run_folder(runs_dir: str | Path, run_id: str | None) -> Path:
    """The folder of run ``run_id`` directly under ``runs_dir``; the id comes from the page, so it is checked.

    >>> run_folder("runs", "20250101-120000-soft-targets-digits").as_posix()
    'runs/20250101-120000-soft-targets-digits'
    >>> run_folder("runs", "../etc")
    Traceback (most recent call last):
    ...
    amalgam.errors.AmalgamError: '../etc' is not a run of this app; choose one from the list of runs
    """
    if not run_id:
        raise AmalgamError("choose a run first (start one, or pick one from the list of runs)")
    if not _RUN_ID.match(run_id):
        raise AmalgamError(f"{run_id!r} is not a run of this app; choose one from the list of runs")
    return Path(runs_dir) / run_id
