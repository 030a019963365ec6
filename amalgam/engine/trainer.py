"""Training a student against a method's losses, on accelerate (one code path from a laptop CPU to GPUs)."""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from amalgam.config import TrainConfig
from amalgam.engine.checkpoint import (
    Checkpoint, CheckpointError, Progress, check_checkpoint_dir, load_checkpoint, restore_rng, save_checkpoint,
)
from amalgam.errors import RunCancelled
from amalgam.data.augment import LabelMix, TransferViews, ViewSampler
from amalgam.knowledge import LiveSignals, TeacherSignals
from amalgam.knowledge.inputs import InputSpec, WithTeacherInputs
from amalgam.methods.base import Batch, LabeledSet, Method, Setup, StudentForward
from amalgam.parallel import mean_over_processes
from amalgam.students.stages import part_modules, resolve_stages, stage_modules

if TYPE_CHECKING:
    from accelerate import Accelerator


EpochCallback = Callable[[dict], None]
LOG_EVERY = 20  # batches between reads of the running loss for the progress bar (each read waits for the device)

__all__ = ["EpochCallback", "TrainConfig", "Trainable", "parameter_groups", "probe", "train"]


class Trainable(nn.Module):
    """The student and the method's own parts as one module, so accelerate prepares (and, on several processes,
    wraps for DDP) both together: its forward is the method's training step, which returns the named loss terms.
    """

    def __init__(self, student: nn.Module, method: Method, stages: Sequence[int], parts: Sequence[str] = ()) -> None:
        super().__init__()
        self.student = student
        self.method = method
        self.forward_with_taps = StudentForward(student, stages, stage_modules(student, stages), parts,
                                                part_modules(student, parts))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.method.step(batch, self.forward_with_taps)


def parameter_groups(model: nn.Module, method_parameters: list[nn.Parameter], config: TrainConfig) -> list[dict]:
    """The student's trainable weights, then the method's own parts in a group of their own at ``parts_lr``
    (the papers' official codes train adapters and fusion blocks at their own rate: shared/METHODS.md §11.5)."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "name": "student"}]
    if method_parameters:
        groups.append({"params": method_parameters, "name": "method",
                       "lr": config.lr if config.parts_lr is None else config.parts_lr})
    return groups


def adamw(groups: list[dict], config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """The run's AdamW over ``groups`` (:func:`parameter_groups`). On CPUs and CUDA GPUs it is torch's fused
    kernel, one pass over all parameters: the default loops over them tensor by tensor, which on a small student
    with a method's parts costs 5-8x as long (3.5 ms against 0.4 ms a step for 1.5 M parameters on 2 CPU cores)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)


def train(
    model: nn.Module,
    method: Method,
    signals: TeacherSignals | None,
    transfer: Dataset,
    config: TrainConfig,
    labeled: LabeledSet | None = None,
    transfer_logits: Sequence[torch.Tensor] | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> list[dict]:
    """Minimise the sum of ``method``'s loss terms over ``transfer``, and return one record per epoch.

    A record holds the epoch, each loss term's mean over its batches and their sum (``loss``), ``loss_terms``
    (the terms' names), ``seconds``, the numbers :meth:`Method.end_epoch` logs, and ``test_accuracy``.

    ``model`` maps raw image batches to logits (a :class:`~amalgam.students.Student`); ``signals`` gives the
    teachers' outputs for each batch (live or cached; ``None`` for a method that reads none);
    ``labeled`` (the labeled fraction) and ``transfer_logits`` (the teachers' logits on the whole transfer set)
    go to :meth:`Method.setup`, which is called once, after the run is seeded;
    ``evaluate(model)`` (if given) is the test accuracy logged after each epoch, and
    ``on_epoch`` receives each record as it is made (for live plots).
    ``should_stop`` is asked before each batch; when it returns True, training ends and :class:`RunCancelled`
    is raised.

    With ``checkpoint_dir``, a checkpoint (see :mod:`amalgam.engine.checkpoint`) is written at the end of every
    epoch and every ``config.checkpoint_every`` optimizer steps; the folder must not hold checkpoints of another
    run. ``resume=True`` continues from its newest checkpoint instead, with the same results as a run never
    interrupted, given the same arguments: the method's ``state_dict()`` is loaded after :meth:`Method.setup`,
    and any state it changes while training must be in that state dict (parameters or persistent buffers).
    """
    from accelerate import Accelerator
    from accelerate.data_loader import skip_first_batches
    from accelerate.utils import DistributedDataParallelKwargs
    from accelerate.utils import set_seed

    if resume and checkpoint_dir is None:
        raise CheckpointError("train(resume=True) needs the checkpoint_dir of the run to continue")
    latest = check_checkpoint_dir(checkpoint_dir, resume) if checkpoint_dir is not None else None
    # a method's parts may sit out a step (a phase, a branch without labels): DDP must not wait for their gradients
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu,
                              gradient_accumulation_steps=config.grad_accumulation,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    set_seed(config.seed)
    shuffling = torch.Generator().manual_seed(config.seed)
    views = TransferViews(transfer, config.augmentation, config.seed)
    sampler = ViewSampler(views, shuffling, config.seed)
    needs = method.needs()
    if needs.teacher_signals != "outputs":
        signals = None  # the method runs the teachers itself, or has none
    # on a CPU, live teachers' inputs are made in the loader's workers, beside the step (knowledge/inputs.py)
    prepare = (isinstance(signals, LiveSignals) and accelerator.device.type == "cpu"
               and config.loader_workers(views.base) > 0)
    loader = transfer_loader(views, sampler, config, accelerator.device, signals.input_specs if prepare else ())
    stages = resolve_stages(model, needs.student_stages)
    trainable = Trainable(model, method, stages, needs.student_parts)
    probed = probe(trainable, signals, transfer) if needs.taps_features else {}
    method.setup(Setup(labeled, list(transfer_logits) if transfer_logits is not None else None, model, stages,
                       transfer_rows=getattr(signals, "rows", None), transfer=transfer, **probed))
    method_parameters = [p for p in method.parameters() if p.requires_grad]
    optimizer = adamw(parameter_groups(model, method_parameters, config), config, accelerator.device)
    loader = accelerator.prepare(loader)  # process i of n takes batches i, i + n, ...: len(loader) is its steps
    batches = max(1, len(loader))
    # the schedule counts optimizer steps; a prepared scheduler is stepped n times per step of n processes
    total_steps = config.epochs * math.ceil(batches / config.grad_accumulation) * accelerator.num_processes
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    wrapped, optimizer, schedule = accelerator.prepare(trainable, optimizer, schedule)
    if signals is not None:
        signals.to(accelerator.device)
    # the last group of an epoch may hold fewer batches: its gradient is scaled to a mean over the batches it has
    short_group = batches % config.grad_accumulation
    mixes = views.augmentation is not None and views.augmentation.mixes
    total_dtype = torch.float32 if accelerator.device.type == "mps" else torch.float64  # mps has no float64
    run = {**config.to_dict(), "num_processes": accelerator.num_processes, "transfer_samples": len(transfer)}

    state = Progress()
    resumed: Checkpoint | None = None
    if latest is not None:  # after setup(), which creates and sets what the checkpoint overwrites
        resumed = load_checkpoint(latest, model, method, run)
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
        save_checkpoint(checkpoint_dir, model, method, trainer, state, run)

    history = state.history
    optimizer.zero_grad(set_to_none=True)
    for epoch in range(state.epochs_done + 1, config.epochs + 1):
        wrapped.train()
        method.start_epoch(epoch, config.epochs)
        sampler.use_epoch(epoch)
        started = time.perf_counter() - state.epoch_seconds
        sums: dict[str, float | torch.Tensor] = defaultdict(float, state.loss_sums)  # on the device until read
        epoch_start_shuffling = shuffling.get_state()
        skip, state.batches_done, state.epoch_seconds = state.batches_done, 0, 0.0
        if skip:  # resuming mid-epoch: the same shuffled order (same generator state), without the batches done
            restore_rng(resumed)
            epoch_loader = skip_first_batches(loader, skip)
        else:
            epoch_loader = loader
        bar = tqdm(epoch_loader, desc=f"epoch {epoch}/{config.epochs}", disable=not show, leave=False,
                   unit="batch", initial=skip, total=len(loader))
        for batch, (images, labels, indices, rows, partners, label_weights, *prepared) in enumerate(bar, start=skip):
            if should_stop is not None and should_stop():
                raise RunCancelled(f"training was cancelled in epoch {epoch}/{config.epochs}")
            mix = LabelMix(partners, label_weights) if mixes else None
            with accelerator.accumulate(wrapped):
                with accelerator.autocast():  # live teachers too run in the run's mixed precision
                    teacher_outputs = (signals.run_prepared(prepared[0]) if prepared else signals(images, rows)
                                       if signals is not None else [])
                    losses = wrapped(Batch(images, labels, indices, teacher_outputs, rows, mix))
                    loss = sum(losses.values())
                in_short_group = short_group and batch >= batches - short_group
                accelerator.backward(loss * (config.grad_accumulation / short_group) if in_short_group else loss)
                optimizer.step()  # all three act only when sync_gradients, at the end of a group of batches
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
            for key, value in losses.items():  # no host sync per step: read every LOG_EVERY batches
                sums[key] = sums[key] + value.detach().to(total_dtype)
            sums["loss"] = sums["loss"] + loss.detach().to(total_dtype)
            if show and (batch + 1) % LOG_EVERY == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if accelerator.sync_gradients:
                state.optimizer_steps += 1
                if (config.checkpoint_every and state.optimizer_steps % config.checkpoint_every == 0
                        and batch + 1 < batches):  # the epoch's last step is checkpointed with the epoch's record
                    # every rank continues from the mean, so the epoch's logged mean is unchanged
                    state.batches_done, state.loss_sums = batch + 1, _mean_over_processes(accelerator, _read(sums))
                    state.epoch_seconds = time.perf_counter() - started
                    checkpoint(epoch_start_shuffling)
        state.batches_done, state.loss_sums, state.epoch_seconds = 0, {}, 0.0
        sums = _mean_over_processes(accelerator, _read(sums))  # each process summed its own batches
        record = {"epoch": epoch, **{k: v / batches for k, v in sums.items()}}
        record["loss_terms"] = sorted(set(sums) - {"loss"})  # which of the numbers the total loss sums (for plots)
        record["seconds"] = time.perf_counter() - started
        record.update(method.end_epoch(model))
        if evaluate is not None:
            record["test_accuracy"] = evaluate(model)
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
    model.eval()
    return history


def transfer_loader(views: TransferViews, sampler: ViewSampler, config: TrainConfig, device: torch.device,
                    teacher_specs: Sequence[InputSpec] = ()) -> DataLoader:
    """The training loader: decoding and augmentation in ``config.loader_workers()`` persistent worker processes,
    pinned memory on CUDA. Batches do not depend on the number of workers: a view depends only on its row.
    With ``teacher_specs``, each batch ends with the list of its images in each teacher's input."""
    workers = config.loader_workers(views.base)
    data = WithTeacherInputs(views, teacher_specs) if teacher_specs else views
    # the generator also seeds the workers (one draw per epoch, as DataLoader(shuffle=True, generator=...) does)
    return DataLoader(data, batch_size=config.batch_size, sampler=sampler, drop_last=len(sampler) > config.batch_size,
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                      generator=sampler.generator)


def _read(sums: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """The loss sums as numbers: one transfer from the device for all of them."""
    tensors = [v for v in sums.values() if isinstance(v, torch.Tensor)]
    if not tensors:
        return {k: float(v) for k, v in sums.items()}
    like = tensors[0]
    values = torch.stack([torch.as_tensor(v, device=like.device, dtype=like.dtype) for v in sums.values()])
    return dict(zip(sums, values.cpu().tolist()))


def _mean_over_processes(accelerator: Accelerator, sums: dict[str, float]) -> dict[str, float]:
    """``sums`` averaged over the processes (itself in one process); every process must call it."""
    if accelerator.num_processes == 1:
        return dict(sums)
    local = torch.tensor(list(sums.values()), dtype=torch.float64, device=accelerator.device)
    return dict(zip(sums, mean_over_processes(local).tolist()))


@torch.no_grad()
def probe(trainable: Trainable, signals: TeacherSignals | None, transfer: Dataset) -> dict:
    """The student's stage outputs and the teachers' outputs on two transfer samples, for :class:`Setup`
    (before the method's parts are optimised, so it can size its adapters)."""
    images = torch.stack([transfer[i][0] for i in range(min(2, len(transfer)))])
    student = trainable.student
    was_training = student.training
    student.eval()
    _, features = trainable.forward_with_taps(images)
    student.train(was_training)
    outputs = signals(images, torch.arange(len(images))) if signals is not None else []
    return {"student_features": dict(features), "teacher_outputs": outputs}
