"""The training budget, as one dataclass that the API, the recipe's ``[train]`` table and the engine share."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from amalgam.fields import check_types


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
        check_types(self)  # before the ranges: `epochs = true` must not pass as 1
        for field, value in (("epochs", self.epochs), ("batch_size", self.batch_size),
                             ("grad_accumulation", self.grad_accumulation)):
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
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")

    def to_dict(self) -> dict:
        return asdict(self)
