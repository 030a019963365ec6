"""Training checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

A checkpoint is a folder ``<checkpoint_dir>/step-<optimizer steps, 8 digits>/`` holding

- ``student.safetensors``: the student's parameters and buffers (BatchNorm statistics included);
- ``method.safetensors``: the method's ``state_dict()``: its trainable parts (adapters, trust models) and its
  persistent buffers (path weights, expert weights...);
- ``trainer.pt``: the optimizer, the learning-rate schedule, the gradient scaler (fp16 only), the torch (and CUDA)
  random states and the data loader's shuffling generator as it was at the start of the epoch in progress; only
  tensors, numbers and strings, read back with ``torch.load(..., weights_only=True)``;
- ``state.json``: where the run is (complete epochs, batches done in the epoch in progress, optimizer steps), the
  running loss sums of the epoch in progress, the history so far, the Python and NumPy random states, and the
  training options and world size it was written with (a resumed run must use the same ones).

The folder is written under a hidden temporary name in the same directory, every file and the folder are
fsynced, and only then is it renamed to its final name, so a run killed while writing leaves a temporary folder
that is never read as a checkpoint (and is removed by the next checkpoint written). Only the newest checkpoint is
kept. In a run of several processes the main one writes (its random states; the loss sums averaged over
processes) and every process reads, so the folder must be shared.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from amalgam.config import TrainConfig
from amalgam.errors import AmalgamError

FORMAT_VERSION = 2  # 2: the method's parts in an optimizer group of their own
STUDENT_FILE = "student.safetensors"
METHOD_FILE = "method.safetensors"
TRAINER_FILE = "trainer.pt"
STATE_FILE = "state.json"
_NAME = re.compile(r"step-(\d+)")
_TEMPORARY_PREFIX = ".tmp-"
# Options that change what a run computes: a resumed run must have the same ones as the run it continues.
RESUME_MUST_MATCH = ("epochs", "batch_size", "lr", "parts_lr", "weight_decay", "seed", "grad_accumulation",
                     "mixed_precision", "augment", "augment_views")


class CheckpointError(AmalgamError):
    """There is no checkpoint to resume from, or it does not fit the run that tries to resume from it."""


@dataclass
class Progress:
    """Where a run is: the counters and running sums a resumed run continues from."""

    epochs_done: int = 0
    batches_done: int = 0  # batches of epoch ``epochs_done + 1`` already trained (0 between epochs)
    optimizer_steps: int = 0
    loss_sums: dict[str, float] = field(default_factory=dict)
    epoch_seconds: float = 0.0  # time already spent in the epoch in progress
    history: list[dict] = field(default_factory=list)


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` gives back besides the weights it loaded into the student and the method."""

    path: Path
    progress: Progress
    trainer: dict[str, Any]  # optimizer, scheduler, scaler, torch random states, loader generator
    host_rng: dict[str, Any]  # Python's and NumPy's random states


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in ``directory`` (by optimizer steps), or None.

    Temporary folders of interrupted writes never match: only a fully written folder is renamed to ``step-N``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in directory.iterdir() if p.is_dir() and (m := _NAME.fullmatch(p.name))]
    return max(found)[1] if found else None


def check_checkpoint_dir(directory: str | os.PathLike, resume: bool, argument: str = "checkpoint_dir") -> Path | None:
    """Check before a run starts that ``directory`` suits it: with ``resume`` it must hold a checkpoint (returned),
    without it must hold none (a new run would otherwise mix its checkpoints with an earlier run's).

    ``argument`` names the caller's argument in the error messages.
    """
    latest = latest_checkpoint(directory)
    if resume and latest is None:
        raise CheckpointError(
            f"nothing to resume: {argument} {str(directory)!r} holds no complete checkpoint (a folder step-N written "
            "by a run with checkpoints). Pass the folder of the run to continue, or start a new run without resume."
        )
    if not resume and latest is not None:
        raise CheckpointError(
            f"{argument} {str(directory)!r} already holds a checkpoint of an earlier run ({latest.name}): pass "
            "resume=True (`amalgam run --resume RUN_DIR`) to continue that run, or use another folder."
        )
    return latest


def _capture_host_rng() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(state), gauss],
            "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)]}


def restore_rng(checkpoint: Checkpoint) -> None:
    """Set Python's, NumPy's and torch's random generators (CUDA's too) to where the checkpointed run had them."""
    version, state, gauss = checkpoint.host_rng["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, position, has_gauss, cached = checkpoint.host_rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(checkpoint.trainer["torch_rng"])
    if checkpoint.trainer["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint.trainer["cuda_rng"])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | os.PathLike,
    student: nn.Module,
    method: nn.Module,
    trainer: dict[str, Any],
    progress: Progress,
    run: dict[str, Any],
) -> Path:
    """Write a checkpoint atomically and return its folder; older checkpoints and leftovers of interrupted writes
    in ``directory`` are removed once it is in place.

    ``trainer`` holds the optimizer's and scheduler's ``state_dict()`` (``"optimizer"``, ``"scheduler"``, and
    ``"scaler"`` or None) and ``"loader_generator"``, the shuffling generator's state at the start of the epoch in
    progress; the random states are captured here. ``run`` (training options, world size) is stored to be checked
    on resume.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step-{progress.optimizer_steps:08d}"
    host_rng = _capture_host_rng()  # before anything below could draw random numbers
    trainer = {**trainer, "torch_rng": torch.get_rng_state(),
               "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    temporary = directory / f"{_TEMPORARY_PREFIX}{name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    save_model(student, str(temporary / STUDENT_FILE))
    save_model(method, str(temporary / METHOD_FILE))
    torch.save(trainer, temporary / TRAINER_FILE)
    state = {"format": FORMAT_VERSION, "progress": asdict(progress), "rng": host_rng, "run": run}
    (temporary / STATE_FILE).write_text(json.dumps(state))
    for file in temporary.iterdir():
        _fsync(file)
    _fsync(temporary)
    final = directory / name
    os.replace(temporary, final)
    _fsync(directory)  # the rename itself is durable
    for stale in directory.iterdir():
        match = _NAME.fullmatch(stale.name)
        if stale != final and stale.is_dir() and (match or stale.name.startswith(_TEMPORARY_PREFIX)):
            shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(path: Path, student: nn.Module, method: nn.Module, run: dict[str, Any]) -> Checkpoint:
    """Load the student's and method's weights from the checkpoint at ``path`` (strictly: every key must match) and
    return the rest. ``run`` is the resuming run's options, checked against the checkpoint's."""
    state = json.loads((path / STATE_FILE).read_text())
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {state.get('format')!r}; this version of amalgam "
                              f"reads format {FORMAT_VERSION}. Start a new run.")
    saved = state["run"]
    defaults = TrainConfig().to_dict()  # a checkpoint written before an option existed had its default
    for key in (*RESUME_MUST_MATCH, "num_processes", "transfer_samples"):
        if saved.get(key, defaults.get(key)) != run.get(key, defaults.get(key)):
            raise CheckpointError(
                f"cannot resume from {str(path)!r}: it was written with {key}={saved.get(key)!r}, this run has "
                f"{key}={run.get(key)!r}. Resume with the options of the run that wrote it, or start a new run."
            )
    for module, file, what in ((student, STUDENT_FILE, "student"), (method, METHOD_FILE, "method")):
        try:
            load_model(module, path / file, strict=True)  # copied into the module's tensors, on their device
        except RuntimeError as err:
            raise CheckpointError(f"the {what} of checkpoint {str(path)!r} does not fit this run's {what} (another "
                                  f"architecture or method?): {err}") from None
    trainer = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=True)
    return Checkpoint(path, Progress(**state["progress"]), trainer, state["rng"])
