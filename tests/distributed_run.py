"""One training run of ``amalgam.engine.train`` that records what each process saw; driven by test_distributed.py.

Launched as ``python -m torch.distributed.run --nproc_per_node 2 tests/distributed_run.py OUT --batch-size B``
(two processes, gloo on CPU) or as ``python tests/distributed_run.py OUT --batch-size 2B`` (one process). For each
scenario (a method and a kind of teacher signals) every process writes ``OUT/<method>-rank<r>-of<n>.pt`` with,
for each training step, the transfer-set indices of its batch, the per-sample teacher weights the method used,
the loss terms the method returned and the learning rate of that step, plus the returned history and the final
student weights. The one-process run also writes the teacher weights of every transfer sample computed in one
call (the reference the distributed weights are compared with).

Nothing of the engine is patched: the method is subclassed to record what its own ``teacher_weights`` and
``forward`` return, the signals are wrapped to record the indices they are asked for, and the learning rate is
read by a global optimizer step hook.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

SEED = 0
TRANSFER_SIZE = 120  # with 16 per process: 7 batches of 16, so 3 steps of 2 x 16 per epoch and one batch dropped
LABELED_ROWS = range(TRANSFER_SIZE, TRANSFER_SIZE + 60)  # the trust model's labeled set (outside the transfer set)
EPOCHS = 2
STUDENT = "test_efficientnet_gn"  # GroupNorm: a sample's output does not depend on the rest of its batch
SCENARIOS = {"selective-learning": "live", "trust-learner": "cached"}


def recording(base: type) -> type:
    """``base`` (a method class) that also keeps what its ``teacher_weights`` and ``loss`` returned."""

    class Recording(base):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.recording = False
            self.weights_log: list[torch.Tensor] = []
            self.losses_log: list[dict[str, float]] = []

        def teacher_weights(self, teacher_logits, images):
            weights = super().teacher_weights(teacher_logits, images)
            if self.recording:
                self.weights_log.append(weights.detach().cpu().clone())
            return weights

        def loss(self, step):
            losses = super().loss(step)
            if self.recording:
                self.losses_log.append({k: float(v.detach()) for k, v in losses.items()})
            return losses

    Recording.__name__ = f"Recording{base.__name__}"
    return Recording


class RecordingSignals:
    """Teacher signals that remember the transfer-set indices of every batch they are asked for."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.indices: list[list[int]] = []

    def to(self, device) -> None:
        self.inner.to(device)

    def __call__(self, images: torch.Tensor, indices: torch.Tensor):
        self.indices.append(indices.cpu().tolist())
        return self.inner(images, indices)


def build_teachers():
    import timm

    from amalgam.teachers import ImageSpec, load_teacher

    torch.manual_seed(SEED)
    teachers = []
    for classes in (["0", "1", "2", "3", "4"], ["5", "6", "7", "8", "9"]):
        model = timm.create_model("test_resnet", num_classes=len(classes), in_chans=1)
        with torch.no_grad():  # random teachers with spread-out logits, so no two entropies nearly tie
            model.get_classifier().weight.mul_(20.0)
        spec = ImageSpec(size=16, channels=1, mean=(0.5,), std=(0.5,))
        teachers.append(load_teacher(model, class_names=classes, input_spec=spec))
    return teachers


def run_scenario(method_name: str, signal_kind: str, batch_size: int, out: Path) -> None:
    from accelerate import PartialState

    from amalgam.data import TensorImages, load_digits
    from amalgam.engine import TrainConfig, train
    from amalgam.knowledge import CachedSignals, LiveSignals
    from amalgam.methods import LabeledSet
    from amalgam.methods.base import Setup
    from amalgam.methods.registry import get_method
    from amalgam.students import Student
    from amalgam.teachers import LabelSpace

    state = PartialState(cpu=True)
    digits = load_digits()
    base = digits.train
    transfer = TensorImages(base.images[:TRANSFER_SIZE], torch.full((TRANSFER_SIZE,), -1))  # all unlabeled
    teachers = build_teachers()
    space = LabelSpace.union([t.class_names for t in teachers])

    torch.manual_seed(SEED)  # the method's own parts (the trust model), then the student
    options = {"trust_epochs": 50} if method_name == "trust-learner" else {}
    method = recording(get_method(method_name))(space, teachers, **options)
    student = Student(STUDENT, class_names=space.class_names, input_size=32, channels=1)

    inner = LiveSignals(teachers) if signal_kind == "live" else CachedSignals.compute(teachers, transfer,
                                                                                       progress=False)
    labeled = None
    if method.needs().labels:
        rows = list(LABELED_ROWS)
        images = torch.stack([base[i][0] for i in rows])
        labels = torch.tensor([base[i][1] for i in rows])  # digit d is union class d
        labeled = LabeledSet(images, labels, [t(images) for t in teachers])

    record: dict = {"world_size": state.num_processes, "rank": state.process_index, "batch_size": batch_size}
    if state.num_processes == 1:  # the reference: every transfer sample's weights, computed in one call
        reference = copy.deepcopy(method)  # set up as train() sets up the method (a trust model is fitted there)
        reference.setup(Setup(labeled=labeled))
        all_images = torch.stack([transfer[i][0] for i in range(len(transfer))])
        all_indices = torch.arange(len(transfer))
        with torch.no_grad():
            logits = [out.logits for out in inner(all_images, all_indices)]
            record["reference_weights"] = reference.teacher_weights(logits, all_images).detach().cpu().clone()
    record["method_parameters"] = torch.cat([p.detach().flatten() for p in method.parameters()] or [torch.zeros(0)])

    signals = RecordingSignals(inner)
    learning_rates: list[float] = []

    def step_hook(optimizer, args, kwargs) -> None:
        if isinstance(optimizer, torch.optim.AdamW):  # the student's, not the trust model's fit in setup (Adam)
            learning_rates.append(float(optimizer.param_groups[0]["lr"]))

    config = TrainConfig(epochs=EPOCHS, batch_size=batch_size, seed=SEED, cpu=True)
    method.recording = True
    handle = register_optimizer_step_pre_hook(step_hook)
    try:
        history = train(student, method, signals, transfer, config, labeled=labeled, progress=False)
    finally:
        handle.remove()
        method.recording = False

    steps_per_epoch = len(signals.indices) // EPOCHS
    assert len(signals.indices) == len(method.weights_log) == len(method.losses_log) == len(learning_rates)
    record["steps"] = [
        {"epoch": 1 + n // steps_per_epoch, "indices": indices, "weights": weights, "losses": losses, "lr": lr}
        for n, (indices, weights, losses, lr) in enumerate(
            zip(signals.indices, method.weights_log, method.losses_log, learning_rates)
        )
    ]
    record["history"] = [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    record["student"] = torch.cat([p.detach().flatten().cpu() for p in student.parameters()])
    torch.save(record, out / f"{method_name}-rank{state.process_index}-of{state.num_processes}.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, required=True, help="the batch size of each process")
    parser.add_argument("--methods", nargs="*", default=list(SCENARIOS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for name in args.methods:
        run_scenario(name, SCENARIOS[name], args.batch_size, args.out)


if __name__ == "__main__":
    main()
