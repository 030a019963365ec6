"""Hydra: one head per teacher on a shared body, so the student keeps the ensemble's disagreement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from amalgam.methods.base import StepInputs
from amalgam.methods.losses import kd_loss, label_cross_entropy
from amalgam.methods.heads.members import PerTeacherHeads
from amalgam.methods.registry import register_method
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher


@register_method
class Hydra(PerTeacherHeads):
    """Hydra (Tran et al., 2020; shared/METHODS.md §7): a shared body with one head per teacher.

    Phase 1 (the first ``phase_one_share`` of the epochs) trains the first head as in Hinton KD on the teachers'
    mean: ``tau^2 KL(mean_m softmax(z_m / tau) || softmax(h_1 / tau))``. At its end the first head is copied
    into every head (plus Gaussian noise of ``init_noise_std``), and phase 2 trains head ``m`` on teacher ``m``:
    ``tau^2 / M * sum_m KL(softmax(z_m / tau) || softmax(h_m / tau))``. The student predicts with the mean of
    its heads' probabilities, and the spread of its heads is the ensemble's model uncertainty
    (:mod:`amalgam.engine.uncertainty`).

    Each teacher's probabilities are placed in the union label space by class name (zero on the classes it does
    not know), so teachers with different label spaces work too; Hydra is made for teachers of one label space
    (an ensemble). Inferred (no official code; the paper was read only through its abstract and a summary):
    linear heads on the pooled feature (``head_hidden`` adds a hidden layer), the copy at the phase switch, the
    50/50 split of the epochs. Ours: ``label_weight`` adds cross-entropy on the labeled fraction to the
    trained heads (0 gives the paper's label-free objective).

    Args:
        temperature: ``tau``.
        phase_one_share: the share of the epochs (rounded down) spent on the first head alone.
        init_noise_std: std of the noise added to the copies of the first head at the phase switch.
        head_hidden: width of a hidden layer in each head (0: linear heads).
        label_weight: weight of the cross-entropy on labeled samples (per head, averaged over the heads trained).
    """

    name = "hydra"
    paper = ("Tran, Veeling, Roth, Swiatkowski, Dillon, Snoek, Mandt, Salimans, Nowozin, Jenatton. Hydra: "
             "Preserving Ensemble Diversity for Model Distillation. arXiv 2001.04694, 2020")
    summary = "One student head per teacher on a shared body: the ensemble's accuracy and its uncertainty."

    @dataclass
    class Options(PerTeacherHeads.Options):
        """``temperature``: ``tau``; ``phase_one_share``: the share of the epochs spent on the first head
        alone; ``init_noise_std``: the noise on the copies of the first head; ``label_weight``: the labeled
        cross-entropy's weight (see the class)."""

        temperature: float = 4.0
        phase_one_share: float = 0.5
        init_noise_std: float = 0.0
        label_weight: float = 1.0

        def __post_init__(self) -> None:
            super().__post_init__()
            self.require(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
            self.require(0.0 <= self.phase_one_share <= 1.0,
                         f"phase_one_share must be in [0, 1], got {self.phase_one_share}")
            self.require(self.init_noise_std >= 0, f"init_noise_std must be >= 0, got {self.init_noise_std}")

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        o = self.options
        self.temperature = float(o.temperature)
        self.phase_one_share = float(o.phase_one_share)
        self.init_noise_std = float(o.init_noise_std)
        self.label_weight = float(o.label_weight)
        self.epoch = 0  # the epoch in progress (start_epoch), 0 before training
        self.phase_one_epochs = 0

    @property
    def phase(self) -> int:
        """1 while the first head alone learns the teachers' mean, then 2."""
        return 1 if 0 < self.epoch <= self.phase_one_epochs else 2

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.epoch = epoch
        self.phase_one_epochs = int(self.phase_one_share * epochs)

    @torch.no_grad()
    def end_epoch(self, student: nn.Module) -> dict[str, float]:
        """At the end of phase 1, every head becomes a copy of the first (plus noise)."""
        if self.phase == 1 and self.epoch == self.phase_one_epochs:
            first = student.heads[self.head_names[0]]
            for name in self.head_names[1:]:
                for target, source in zip(student.heads[name].parameters(), first.parameters()):
                    target.copy_(source + self.init_noise_std * torch.randn_like(source))
        return {"phase": float(self.phase)}

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        heads = self.head_outputs(step)
        targets = self.member_targets([out.logits for out in step.teacher_outputs], self.temperature)
        if self.phase == 1:
            pairs = [(heads[self.head_names[0]], torch.stack(targets).mean(dim=0))]
        else:
            pairs = [(heads[name], target) for name, target in zip(self.head_names, targets)]
        losses = {"soft": sum(kd_loss(z, p, self.temperature) for z, p in pairs) / len(pairs)}
        if self.label_weight > 0:
            losses["labels"] = self.label_weight * sum(
                label_cross_entropy(z, step.labels, step.label_mix) for z, _ in pairs) / len(pairs)
        return losses
