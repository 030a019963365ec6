"""Training a student against a method's losses, on accelerate (one code path from a laptop CPU to GPUs)."""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from amalgam.engine.checkpoint import (
    Checkpoint, CheckpointError, Progress, check_checkpoint_dir, load_checkpoint, restore_rng, save_checkpoint,
)
from amalgam.errors import RunCancelled
from amalgam.knowledge import IndexedImages, TeacherSignals
from amalgam.methods.base import Method, StepInputs
from amalgam.methods.blocks import mean_over_processes
from amalgam.teachers.taps import capture_features, resolve_modules

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass
class TrainConfig:
    """The training budget. Every method of a comparison should get the same one."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16", passed to accelerate (fp16 autocasts on GPUs only)
    cpu: bool = False  # force the CPU even when a GPU is present
    grad_accumulation: int = 1  # batches whose gradients make one optimizer step (effective batch: batch_size x this)
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: only at the end of each epoch)
    parts_lr: float | None = None  # learning rate of the method's own parts (adapters, blocks); None: ``lr``

    def __post_init__(self) -> None:
        for field, value in (("epochs", self.epochs), ("batch_size", self.batch_size),
                             ("grad_accumulation", self.grad_accumulation)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be 0 (off) or a positive number of optimizer steps, got "
                             f"{self.checkpoint_every!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.parts_lr is not None and self.parts_lr <= 0:
            raise ValueError(f"parts_lr must be positive (or None for lr), got {self.parts_lr}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")

    def to_dict(self) -> dict:
        return asdict(self)


EpochCallback = Callable[[dict], None]


def parameter_groups(model: nn.Module, method_parameters: list[nn.Parameter], config: TrainConfig) -> list[dict]:
    """The student's trainable weights, then the method's own parts in a group of their own at ``parts_lr``
    (the papers' official codes train adapters and fusion blocks at their own rate: shared/METHODS.md §11.5)."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "name": "student"}]
    if method_parameters:
        groups.append({"params": method_parameters, "name": "method",
                       "lr": config.lr if config.parts_lr is None else config.parts_lr})
    return groups


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
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> list[dict]:
    """Minimise the sum of ``method``'s loss terms over ``transfer``, and return one record per epoch.

    ``model`` maps raw image batches to logits (a :class:`~amalgam.students.Student`); ``signals`` gives the
    teachers' outputs for each batch (live or cached; ``None`` for a method without teachers);
    ``evaluate(model)`` (if given) is the test accuracy logged after each epoch, and
    ``on_epoch`` receives each record as it is made (for live plots).
    ``should_stop`` is asked before each batch; when it returns True, training ends and :class:`RunCancelled`
    is raised.

    With ``checkpoint_dir``, a checkpoint (see :mod:`amalgam.engine.checkpoint`) is written at the end of every
    epoch and every ``config.checkpoint_every`` optimizer steps; the folder must not hold checkpoints of another
    run. ``resume=True`` continues from its newest checkpoint instead, with the same results as a run never
    interrupted. The method must have been set up as for the original run (``prepare()`` called with the same
    data): its ``state_dict()`` is loaded after that and after :meth:`Method.attach`, and any state it changes
    while training must be in that state dict (parameters or persistent buffers).
    """
    from accelerate import Accelerator
    from accelerate.data_loader import skip_first_batches
    from accelerate.utils import set_seed

    if resume and checkpoint_dir is None:
        raise CheckpointError("train(resume=True) needs the checkpoint_dir of the run to continue")
    latest = check_checkpoint_dir(checkpoint_dir, resume) if checkpoint_dir is not None else None
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu,
                              gradient_accumulation_steps=config.grad_accumulation)
    set_seed(config.seed)
    shuffling = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(
        IndexedImages(transfer),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(transfer) > config.batch_size,
        generator=shuffling,
    )
    student_taps = method.student_taps(model)
    tapped = resolve_modules(model, student_taps, "the student", student_taps)
    if student_taps or any(method.teacher_taps()):
        _probe(model, method, signals, transfer, student_taps, tapped)
    method_parameters = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameter_groups(model, method_parameters, config), lr=config.lr,
                                  weight_decay=config.weight_decay)
    loader = accelerator.prepare(loader)  # process i of n takes batches i, i + n, ...: len(loader) is its steps
    batches = max(1, len(loader))
    # the schedule counts optimizer steps; a prepared scheduler is stepped n times per step of n processes
    total_steps = config.epochs * math.ceil(batches / config.grad_accumulation) * accelerator.num_processes
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    method.to(accelerator.device)
    if signals is not None:
        signals.to(accelerator.device)
    # the last group of an epoch may hold fewer batches: its gradient is scaled to a mean over the batches it has
    short_group = batches % config.grad_accumulation
    run = {**config.to_dict(), "num_processes": accelerator.num_processes, "transfer_samples": len(transfer)}

    state = Progress()
    resumed: Checkpoint | None = None
    if latest is not None:  # after prepare() and attach(), which create and set what the checkpoint overwrites
        resumed = load_checkpoint(latest, accelerator.unwrap_model(model), method, run)
        optimizer.load_state_dict(resumed.trainer["optimizer"])
        schedule.load_state_dict(resumed.trainer["scheduler"])
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(resumed.trainer["scaler"])
        shuffling.set_state(resumed.trainer["loader_generator"])
        state = resumed.progress
        if state.batches_done == 0:  # saved between epochs, where the loop below is about to start one
            restore_rng(resumed)

    show = progress and accelerator.is_local_main_process
    if resumed is not None and show:
        tqdm.write(f"resuming from {latest} (epoch {state.epochs_done + 1}, batch {state.batches_done}, "
                   f"optimizer step {state.optimizer_steps})")

    def checkpoint(epoch_start_shuffling: torch.Tensor) -> None:
        if checkpoint_dir is None or not accelerator.is_main_process:
            return
        trainer = {"optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
                   "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                   "loader_generator": epoch_start_shuffling}
        save_checkpoint(checkpoint_dir, accelerator.unwrap_model(model), method, trainer, state, run)

    history = state.history
    optimizer.zero_grad(set_to_none=True)
    for epoch in range(state.epochs_done + 1, config.epochs + 1):
        model.train()
        method.train()
        method.start_epoch(epoch, config.epochs)
        started = time.perf_counter() - state.epoch_seconds
        sums: dict[str, float] = defaultdict(float, state.loss_sums)
        epoch_start_shuffling = shuffling.get_state()
        skip, state.batches_done, state.epoch_seconds = state.batches_done, 0, 0.0
        if skip:  # resuming mid-epoch: the same shuffled order (same generator state), without the batches done
            restore_rng(resumed)
            epoch_loader = skip_first_batches(loader, skip)
        else:
            epoch_loader = loader
        bar = tqdm(epoch_loader, desc=f"epoch {epoch}/{config.epochs}", disable=not show, leave=False,
                   unit="batch", initial=skip, total=len(loader))
        for batch, (images, labels, indices) in enumerate(bar, start=skip):
            if should_stop is not None and should_stop():
                raise RunCancelled(f"training was cancelled in epoch {epoch}/{config.epochs}")
            teacher_outputs = signals(images, indices) if signals is not None else []
            images = method.training_inputs(images)
            with accelerator.accumulate(model):
                with (accelerator.autocast(), capture_features(model, student_taps, tapped) as student_features,
                      method.student_output_transform(accelerator.unwrap_model(model), teacher_outputs)):
                    logits = model(images)
                    losses = method(StepInputs(logits, teacher_outputs, labels, images, student_features, indices))
                    loss = sum(losses.values())
                in_short_group = short_group and batch >= batches - short_group
                accelerator.backward(loss * (config.grad_accumulation / short_group) if in_short_group else loss)
                if accelerator.sync_gradients and accelerator.num_processes > 1:
                    for part in method_parameters:  # the method's own parts (adapters...) are not DDP-wrapped
                        if part.grad is not None:
                            part.grad = accelerator.reduce(part.grad, reduction="mean")
                optimizer.step()  # all three act only when sync_gradients, at the end of a group of batches
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in losses.items():
                sums[key] += float(value.detach())
            sums["loss"] += float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if accelerator.sync_gradients:
                state.optimizer_steps += 1
                if (config.checkpoint_every and state.optimizer_steps % config.checkpoint_every == 0
                        and batch + 1 < batches):  # the epoch's last step is checkpointed with the epoch's record
                    # every rank continues from the mean, so the epoch's logged mean is unchanged
                    state.batches_done, state.loss_sums = batch + 1, _mean_over_processes(accelerator, sums)
                    state.epoch_seconds = time.perf_counter() - started
                    checkpoint(epoch_start_shuffling)
        state.batches_done, state.loss_sums, state.epoch_seconds = 0, {}, 0.0
        sums = _mean_over_processes(accelerator, sums)  # each process summed its own batches
        record = {"epoch": epoch, **{k: v / batches for k, v in sums.items()}}
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
        state.epochs_done = epoch
        checkpoint(shuffling.get_state())  # the next epoch starts from the generator as it is now
    accelerator.unwrap_model(model).eval()
    return history


def _mean_over_processes(accelerator: Accelerator, sums: dict[str, float]) -> dict[str, float]:
    """``sums`` averaged over the processes (itself in one process); every process must call it."""
    if accelerator.num_processes == 1:
        return dict(sums)
    local = torch.tensor(list(sums.values()), dtype=torch.float64, device=accelerator.device)
    return dict(zip(sums, mean_over_processes(local).tolist()))


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
