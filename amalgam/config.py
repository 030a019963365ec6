"""The training budget, as one dataclass that the API, the recipe's ``[train]`` table and the engine share."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from amalgam.errors import AmalgamError

from amalgam.fields import check_types

if TYPE_CHECKING:
    from amalgam.data.augment import Augmentation


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
    augment: str = ""  # consistent augmentation, comma-separated: crop, flip, mixup, cutmix (amalgam.data.augment)
    augment_views: int = 4  # views per transfer image with augmentation (the knowledge cache stores each)
    num_workers: int | None = None  # DataLoader worker processes; None: one per CPU core beyond the first, at most 8

    def __post_init__(self) -> None:
        if isinstance(self.augment, (list, tuple)):  # the API may name them as a list
            self.augment = ",".join(map(str, self.augment))
        check_types(self)  # before the ranges: `epochs = true` must not pass as 1
        for field, value in (("epochs", self.epochs), ("batch_size", self.batch_size),
                             ("grad_accumulation", self.grad_accumulation), ("augment_views", self.augment_views)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be 0 (off) or a positive number of optimizer steps, got "
                             f"{self.checkpoint_every!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be 0 or a positive integer, got {self.seed}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be 0 or positive, got {self.weight_decay}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.parts_lr is not None and self.parts_lr <= 0:
            raise ValueError(f"parts_lr must be positive (or None for lr), got {self.parts_lr}")
        try:
            self.augment = ",".join(self.augmentation.names) if self.augmentation is not None else ""
        except AmalgamError as err:
            raise ValueError(str(err)) from None
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 (load in the training process), a positive number of worker "
                             f"processes, or None (from the CPU count), got {self.num_workers}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")

    @property
    def augmentation(self) -> "Augmentation | None":
        """The augmentation ``augment`` and ``augment_views`` name (``None``: none)."""
        from amalgam.data.augment import Augmentation

        return Augmentation.parse(self.augment, views=self.augment_views)

    def loader_workers(self, data: Any = None) -> int:
        """``num_workers``, or a default: none for images already in memory (``data`` a
        :class:`~amalgam.data.TensorImages`, through any views) without augmentation, which leave nothing to
        decode; else one per CPU core beyond the first (the training process's), at most 8."""
        from amalgam.data.images import in_memory

        if self.num_workers is not None:
            return self.num_workers
        if not self.augment and data is not None and in_memory(data):
            return 0
        return max(0, min(8, (os.cpu_count() or 1) - 1))

    def to_dict(self) -> dict:
        return asdict(self)
