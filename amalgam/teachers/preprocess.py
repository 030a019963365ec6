"""Turning a raw image batch into what one model expects.

A *raw* batch is what amalgam's data sets yield: float ``B x C x H x W`` in ``[0, 1]``, with ``C`` 1 (grey) or 3
(RGB). Every model (each teacher, and the student) has an :class:`ImageSpec` that converts it to its own input:
channels, size and normalisation. Doing this per model is what lets teachers of different libraries and input
sizes be run on the same batch (timm's distillation task re-normalises for its teacher the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, the usual RGB -> grey conversion (PIL's "L" mode uses the same).
_LUMA = (0.299, 0.587, 0.114)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    height, width = (int(s) for s in size)
    return (height, width)


@dataclass(frozen=True)
class ImageSpec:
    """The input a model expects: ``channels`` x ``size`` images, normalised as ``(x - mean) / std``.

    Example:
        >>> spec = ImageSpec(size=(32, 32), channels=3, mean=(0.5,), std=(0.5,))
        >>> spec(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 3, 32, 32])
    """

    size: tuple[int, int]
    channels: int = 3
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _pair(self.size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channels not in (1, 3):
            raise ValueError(f"ImageSpec.channels must be 1 or 3, got {self.channels}")
        for field, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ValueError(f"ImageSpec.{field} needs 1 or {self.channels} values, got {values}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"ImageSpec.std must be positive, got {self.std}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Convert a raw ``[0, 1]`` batch (``B x 1|3 x H x W``) to this model's input."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"expected a raw image batch of shape B x 1|3 x H x W in [0, 1], got {tuple(images.shape)}"
            )
        images = images.float()
        if images.shape[1] != self.channels:
            if self.channels == 3:
                images = images.expand(-1, 3, -1, -1)
            else:
                luma = images.new_tensor(_LUMA).view(1, 3, 1, 1)
                images = (images * luma).sum(dim=1, keepdim=True)
        if tuple(images.shape[-2:]) != self.size:
            images = F.interpolate(images, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        mean = images.new_tensor(self.mean).view(1, -1, 1, 1)
        std = images.new_tensor(self.std).view(1, -1, 1, 1)
        return (images - mean) / std

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "channels": self.channels, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_timm_config(cls, cfg: Mapping[str, Any]) -> "ImageSpec":
        """From a timm ``pretrained_cfg`` / data config (``input_size``, ``mean``, ``std``)."""
        channels, height, width = cfg.get("input_size", (3, 224, 224))
        return cls(
            size=(height, width),
            channels=channels,
            mean=cfg.get("mean", (0.485, 0.456, 0.406)),
            std=cfg.get("std", (0.229, 0.224, 0.225)),
        )

    @classmethod
    def from_transformers_processor(cls, processor: Mapping[str, Any], channels: int = 3) -> "ImageSpec":
        """From a transformers ``preprocessor_config.json`` (``size``, ``image_mean``, ``image_std``).

        Only resize and normalisation are reproduced: a processor's centre crop is treated as a resize to the
        crop size, which keeps every pixel of amalgam's already-square data sets.
        """
        size = processor.get("crop_size") if processor.get("do_center_crop") else None
        size = size or processor.get("size") or 224
        if isinstance(size, Mapping):
            if "height" in size:
                size = (size["height"], size["width"])
            else:
                size = size.get("shortest_edge", 224)
        if processor.get("do_normalize", True):
            mean = processor.get("image_mean", (0.5,))
            std = processor.get("image_std", (0.5,))
        else:
            mean, std = (0.0,), (1.0,)
        return cls(size=_pair(size), channels=channels, mean=mean, std=std)
