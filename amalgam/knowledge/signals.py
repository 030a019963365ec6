"""Where teacher knowledge comes from during training: the teachers themselves, or outputs computed once.

Teachers are frozen and a transfer image's views are finite and deterministic (amalgam.data.augment), so a
teacher's output for a view is the same every time: :class:`CachedSignals` computes the logits once, in memory, and every later epoch costs
only the student. :class:`~amalgam.knowledge.cache.KnowledgeCache` does the same for logits and tapped features
on disk, reused across runs; :class:`LiveSignals` runs the teachers on every batch.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from amalgam.knowledge.inputs import InputSpec
from amalgam.teachers.teacher import Teacher, TeacherOutput

CACHE_BATCH = 256


class TeacherSignals(Protocol):
    """Gives the teachers' outputs for a batch of transfer images, by their rows in the transfer set (with
    augmentation, the rows of their views: :class:`~amalgam.data.augment.TransferViews`)."""

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> list[TeacherOutput]: ...

    def to(self, device: torch.device | str) -> None:
        """Move whatever the signals compute with to the training device."""


class LiveSignals:
    """Runs the (frozen) teachers on every batch, with the feature taps the method asked for."""

    def __init__(self, teachers: Sequence[Teacher], taps: Sequence[Sequence[str]] | None = None) -> None:
        self.teachers = list(teachers)
        self.taps = [list(t) for t in taps] if taps is not None else [[] for _ in self.teachers]

    def to(self, device: torch.device | str) -> None:
        for teacher in self.teachers:  # frozen: moved, never wrapped for distributed training
            teacher.to(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> list[TeacherOutput]:
        return [teacher(images, taps=self.taps[k]) for k, teacher in enumerate(self.teachers)]

    @property
    def input_specs(self) -> list[InputSpec]:
        """Each teacher's input transform, to apply in the loader's workers (:class:`WithTeacherInputs`)."""
        return [teacher.input_spec for teacher in self.teachers]

    def run_prepared(self, inputs: Sequence[torch.Tensor]) -> list[TeacherOutput]:
        """The teachers on a batch already in each one's input (``input_specs`` applied, in the same order)."""
        return [teacher.run_prepared(x, taps=self.taps[k]) for k, (teacher, x) in enumerate(zip(self.teachers, inputs))]


class CachedSignals:
    """Every teacher's logits for every transfer image, computed once (one teacher at a time) and kept in memory.

    Example:
        >>> import timm
        >>> from amalgam.data import TensorImages
        >>> from amalgam.teachers import load_teacher
        >>> teacher = load_teacher(timm.create_model("test_resnet", num_classes=3), class_names=["a", "b", "c"])
        >>> images = TensorImages(torch.zeros(5, 1, 8, 8, dtype=torch.uint8), torch.zeros(5, dtype=torch.long))
        >>> signals = CachedSignals.compute([teacher], images, progress=False)
        >>> signals(torch.zeros(2, 1, 8, 8), torch.tensor([0, 4]))[0].logits.shape
        torch.Size([2, 3])
    """

    def __init__(self, logits: Sequence[torch.Tensor]) -> None:
        self.logits = list(logits)

    @classmethod
    @torch.no_grad()
    def compute(cls, teachers: Sequence[Teacher], data: Dataset, progress: bool = True) -> "CachedSignals":
        logits = []
        for teacher in teachers:
            loader = DataLoader(data, batch_size=CACHE_BATCH, shuffle=False)
            rows = [
                teacher(batch[0]).logits.cpu()
                for batch in tqdm(loader, desc=f"teacher {teacher.name}", disable=not progress, leave=False)
            ]
            logits.append(torch.cat(rows))
        return cls(logits)

    def to(self, device: torch.device | str) -> None:
        """Nothing to move: rows are sent to the batch's device as they are looked up."""

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> list[TeacherOutput]:
        rows = indices.cpu()
        return [TeacherOutput(logits=table[rows].to(images.device)) for table in self.logits]
