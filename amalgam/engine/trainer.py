"""Training a student against a method's losses, on accelerate (one code path from a laptop CPU to GPUs)."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from amalgam.errors import RunCancelled
from amalgam.knowledge import IndexedImages, TeacherSignals
from amalgam.methods.base import Method, StepInputs
from amalgam.teachers.taps import capture_features, resolve_modules


@dataclass
class TrainConfig:
    """The training budget. Every method of a comparison should get the same one."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16", passed to accelerate
    cpu: bool = False  # force the CPU even when a GPU is present

    def __post_init__(self) -> None:
        for field, value in (("epochs", self.epochs), ("batch_size", self.batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")

    def to_dict(self) -> dict:
        return asdict(self)


EpochCallback = Callable[[dict], None]


def train(
    model: nn.Module,
    method: Method,
    signals: TeacherSignals | None,
    transfer: Dataset,
    config: TrainConfig,
    evaluate: Callable[[nn.Module], float] | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict]:
    """Minimise the sum of ``method``'s loss terms over ``transfer``, and return one record per epoch.

    ``model`` maps raw image batches to logits (a :class:`~amalgam.students.Student`); ``signals`` gives the
    teachers' outputs for each batch (live or cached; ``None`` for a method without teachers);
    ``evaluate(model)`` (if given) is the test accuracy logged after each epoch, and
    ``on_epoch`` receives each record as it is made (for live plots).
    ``should_stop`` is asked before each batch; when it returns True, training ends and :class:`RunCancelled`
    is raised.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu)
    set_seed(config.seed)
    loader = DataLoader(
        IndexedImages(transfer),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(transfer) > config.batch_size,
        generator=torch.Generator().manual_seed(config.seed),
    )
    student_taps = method.student_taps(model)
    tapped = resolve_modules(model, student_taps, "the student", student_taps)
    if student_taps or any(method.teacher_taps()):
        _probe(model, method, signals, transfer, student_taps, tapped)
    method_parameters = [p for p in method.parameters() if p.requires_grad]
    parameters = [p for p in model.parameters() if p.requires_grad] + method_parameters
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    loader = accelerator.prepare(loader)  # process i of n takes batches i, i + n, ...: len(loader) is its steps
    # accelerate steps a prepared scheduler n times per optimizer step, so the schedule counts n per step
    total_steps = config.epochs * max(1, len(loader)) * accelerator.num_processes
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    method.to(accelerator.device)
    if signals is not None:
        signals.to(accelerator.device)

    history = []
    show = progress and accelerator.is_local_main_process
    for epoch in range(1, config.epochs + 1):
        model.train()
        method.train()
        method.start_epoch(epoch, config.epochs)
        started = time.perf_counter()
        sums: dict[str, float] = defaultdict(float)
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not show, leave=False, unit="batch")
        for images, labels, indices in bar:
            if should_stop is not None and should_stop():
                raise RunCancelled(f"training was cancelled in epoch {epoch}/{config.epochs}")
            teacher_outputs = signals(images, indices) if signals is not None else []
            with accelerator.autocast(), capture_features(model, student_taps, tapped) as student_features:
                logits = model(images)
                losses = method(StepInputs(logits, teacher_outputs, labels, images, student_features))
                loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if accelerator.num_processes > 1:  # the method's own parts (adapters...) are not DDP-wrapped
                for part in method_parameters:
                    if part.grad is not None:
                        part.grad = accelerator.reduce(part.grad, reduction="mean")
            optimizer.step()
            schedule.step()
            for key, value in losses.items():
                sums[key] += float(value.detach())
            sums["loss"] += float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if accelerator.num_processes > 1:  # each process summed its own batches: log the mean over processes
            local = torch.tensor(list(sums.values()), dtype=torch.float64, device=accelerator.device)
            sums = dict(zip(sums, accelerator.reduce(local, reduction="mean").tolist()))
        record = {"epoch": epoch, **{k: v / max(1, len(loader)) for k, v in sums.items()}}
        record["seconds"] = time.perf_counter() - started
        record.update(method.end_epoch(accelerator.unwrap_model(model)))
        if evaluate is not None:
            record["test_accuracy"] = evaluate(accelerator.unwrap_model(model))
        history.append(record)
        if show:
            tqdm.write(
                f"epoch {epoch}/{config.epochs}  loss {record['loss']:.4f}"
                + (f"  test accuracy {record['test_accuracy']:.4f}" if "test_accuracy" in record else "")
            )
        if on_epoch is not None:
            on_epoch(record)
    accelerator.unwrap_model(model).eval()
    return history


@torch.no_grad()
def _probe(model: nn.Module, method: Method, signals: TeacherSignals | None, transfer: Dataset,
           student_taps: list[str], tapped: list[nn.Module]) -> None:
    """Show the method the student's and teachers' features on two transfer samples, before its parts are
    optimised, so it can size its adapters."""
    images = torch.stack([transfer[i][0] for i in range(min(2, len(transfer)))])
    was_training = model.training
    model.eval()
    with capture_features(model, student_taps, tapped) as features:
        model(images)
    model.train(was_training)
    outputs = signals(images, torch.arange(len(images))) if signals is not None else []
    method.attach(dict(features), outputs)
