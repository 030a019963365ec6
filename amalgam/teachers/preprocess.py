"""Turning a raw image batch into what one model expects: the view its own library's eval transform gives it.

A *raw* batch is what amalgam's data sets yield: float ``B x C x H x W`` in ``[0, 1]``, with ``C`` 1 (grey) or 3
(RGB), at the data's own size. Every model (each teacher, and the student) has an :class:`ImageSpec` that converts
it to its own input: channels, resize, centre crop, pixel scale and normalisation. Doing this per model is what
lets teachers of different libraries and input sizes be run on the same batch.

The resize and crop follow the model's library, on tensors:

- **timm** (:meth:`ImageSpec.from_timm_config`): ``resolve_data_config`` + ``transforms_imagenet_eval``: the
  image is scaled to ``floor(input_size / crop_pct)`` (shortest edge, or each edge for ``crop_mode="squash"``,
  or the longest edge with padding for ``"border"``) with the model's interpolation, then centre-cropped.
- **transformers** (:meth:`ImageSpec.from_transformers_processor`): an image processor's ``size`` (height/width,
  or shortest edge; ConvNeXt's ``crop_pct``), ``resample``, ``do_center_crop``/``crop_size``, ``rescale_factor``
  and ``image_mean``/``image_std``.

Resizing runs in torch with antialiasing (as torchvision and transformers' torch processors do); timm's PIL
reference differs by rounding to 8 bits. torch has no Lanczos, box or Hamming kernel: those use bicubic, area
and bilinear, the closest it has (tests/test_preprocess.py and bench/results/preprocessing.md give the error).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from amalgam.data.pictures import match_channels

TIMM_DEFAULT_CROP_PCT = 0.875  # what timm's resolve_data_config uses when a model's config names none
TIMM_DEFAULT_INTERPOLATION = "bicubic"
# How the image meets resize_size before the centre crop to size:
#   squash: to resize_size exactly; short-side: its shortest edge to resize_size[0], the other edge
#   int(side * long / short) (torchvision's Resize(int), transformers' shortest_edge); cover / fit: aspect kept,
#   scaled by the smaller / larger of the two edge ratios and rounded (timm's ResizeKeepRatio, longest 0 / 1).
RESIZE_MODES = ("squash", "short-side", "cover", "fit")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
_NEAREST_KERNEL = {"lanczos": "bicubic", "box": "area", "hamming": "bilinear", "random": "bilinear"}
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_TORCH_MODE = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic", "area": "area"}


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    height, width = (int(s) for s in size)
    return (height, width)


def interpolation_name(name: str | int) -> str:
    """A timm interpolation name or a PIL resample code as one of :data:`INTERPOLATIONS`.

    >>> interpolation_name("bicubic"), interpolation_name(3), interpolation_name("lanczos")
    ('bicubic', 'bicubic', 'bicubic')
    """
    if isinstance(name, int) and not isinstance(name, bool):
        if name not in PIL_RESAMPLE:
            raise ValueError(f"unknown PIL resample code {name}; known: {PIL_RESAMPLE}")
        name = PIL_RESAMPLE[name]
    name = _NEAREST_KERNEL.get(str(name).lower(), str(name).lower())
    if name not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {name!r}; expected one of {INTERPOLATIONS} (or lanczos, box, "
                         "hamming, or a PIL resample code)")
    return name


@dataclass(frozen=True)
class ImageSpec:
    """The input a model expects: ``channels`` x ``size`` images, normalised as ``(x * pixel_scale - mean) / std``.

    The image is first resized (``resize`` mode, to ``resize_size``, default ``size``, with ``interpolation``),
    then centre-cropped (or padded with ``fill``, in raw ``[0, 1]`` units) to ``size``; ``crop_offset`` is how an
    odd margin is split (``"round"``: torchvision / timm, ``"floor"``: transformers). The defaults squash the
    image to ``size`` (bilinear, antialiased).

    Example:
        >>> spec = ImageSpec(size=(32, 32), channels=3, mean=(0.5,), std=(0.5,))
        >>> spec(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 3, 32, 32])
        >>> timm_like = ImageSpec(size=224, resize="short-side", resize_size=256, interpolation="bicubic")
        >>> timm_like(torch.rand(1, 3, 300, 451)).shape  # shortest edge to 256 (256 x 384), centre 224 x 224
        torch.Size([1, 3, 224, 224])
    """

    size: tuple[int, int]
    channels: int = 3
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    resize: str = "squash"
    resize_size: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    crop_offset: str = "round"
    fill: tuple[float, ...] = (0.0,)
    pixel_scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _pair(self.size))
        resize_size = _pair(self.resize_size) if self.resize_size is not None else None
        object.__setattr__(self, "resize_size", None if resize_size == self.size else resize_size)  # one spelling
        for name in ("mean", "std", "fill"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        object.__setattr__(self, "interpolation", interpolation_name(self.interpolation))
        if self.channels not in (1, 3):
            raise ValueError(f"ImageSpec.channels must be 1 or 3, got {self.channels}")
        for name in ("mean", "std", "fill"):
            if len(getattr(self, name)) not in (1, self.channels):
                raise ValueError(f"ImageSpec.{name} needs 1 or {self.channels} values, got {getattr(self, name)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"ImageSpec.std must be positive, got {self.std}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"ImageSpec.resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.crop_offset not in ("round", "floor"):
            raise ValueError(f"ImageSpec.crop_offset must be 'round' or 'floor', got {self.crop_offset!r}")
        if min(*self.size, *(self.resize_size or (1,))) < 1 or self.pixel_scale <= 0:
            raise ValueError(f"ImageSpec sizes and pixel_scale must be positive, got size {self.size}, "
                             f"resize_size {self.resize_size}, pixel_scale {self.pixel_scale}")

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """The shape an image of ``height x width`` has after the resize (before the centre crop).

        >>> ImageSpec(size=224, resize="short-side", resize_size=256).resized_shape(300, 451)
        (256, 384)
        """
        target_h, target_w = self.resize_size or self.size
        if self.resize == "squash":
            return target_h, target_w
        if self.resize == "short-side":
            short, long = sorted((height, width))
            scaled = int(target_h * long / short)
            return (target_h, scaled) if height <= width else (scaled, target_h)
        ratio_h, ratio_w = height / target_h, width / target_w
        ratio = min(ratio_h, ratio_w) if self.resize == "cover" else max(ratio_h, ratio_w)
        return round(height / ratio), round(width / ratio)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Convert a raw ``[0, 1]`` batch (``B x 1|3 x H x W``) to this model's input."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"expected a raw image batch of shape B x 1|3 x H x W in [0, 1], got {tuple(images.shape)}"
            )
        images = self._centre_crop(self._resize(match_channels(images.float(), self.channels)))
        mean = images.new_tensor(self.mean).view(1, -1, 1, 1)
        std = images.new_tensor(self.std).view(1, -1, 1, 1)
        if self.pixel_scale != 1.0:
            images = images * self.pixel_scale
        return (images - mean).div_(std)  # in place on the fresh difference: one batch-sized buffer fewer

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        shape = self.resized_shape(*images.shape[-2:])
        if tuple(images.shape[-2:]) == shape:
            return images
        mode = _TORCH_MODE[self.interpolation]
        smooth = mode in ("bilinear", "bicubic")
        resized = F.interpolate(images, size=shape, mode=mode, antialias=smooth,
                                **({"align_corners": False} if smooth else {}))
        # bicubic overshoots; the libraries' 8-bit images clip, so the view does too
        return resized.clamp_(0.0, 1.0) if mode == "bicubic" else resized  # in place: resized is new

    def _centre_crop(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        crop_h, crop_w = self.size
        if crop_h > height or crop_w > width:  # pad to the crop (torchvision's split), with the fill value
            pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
            fill = images.new_tensor(self.fill).view(1, -1, 1, 1).expand(len(images), self.channels, 1, 1)
            canvas = fill.expand(-1, -1, height + pad_h, width + pad_w).clone()
            top, left = pad_h // 2, pad_w // 2
            canvas[..., top:top + height, left:left + width] = images
            images, height, width = canvas, height + pad_h, width + pad_w
        split = round if self.crop_offset == "round" else math.floor
        top, left = int(split((height - crop_h) / 2.0)), int(split((width - crop_w) / 2.0))
        return images[..., top:top + crop_h, left:left + crop_w]

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON (what run.json, the cache key and the card record); fields at their default (a plain
        squash to ``size``) are left out, so a spec reads as it did before they existed."""
        described: dict[str, Any] = {"size": list(self.size), "channels": self.channels, "mean": list(self.mean),
                                     "std": list(self.std)}
        for spec_field in fields(self)[4:]:
            value = getattr(self, spec_field.name)
            if value != spec_field.default:
                described[spec_field.name] = list(value) if isinstance(value, tuple) else value
        return described

    @classmethod
    def from_dict(cls, described: Mapping[str, Any]) -> "ImageSpec":
        """The inverse of :meth:`to_dict`.

        >>> spec = ImageSpec(size=224, resize="short-side", resize_size=256)
        >>> ImageSpec.from_dict(spec.to_dict()) == spec
        True
        """
        return cls(**dict(described))

    @classmethod
    def from_timm_config(cls, cfg: Mapping[str, Any]) -> "ImageSpec":
        """timm's eval transform for a ``pretrained_cfg`` / data config, as ``resolve_data_config`` and
        ``transforms_imagenet_eval`` build it: ``input_size``, ``crop_pct`` (default 0.875), ``crop_mode``
        (``center``, ``squash`` or ``border``), ``interpolation`` (default bicubic), ``mean``, ``std``.

        >>> spec = ImageSpec.from_timm_config({"input_size": (3, 224, 224), "crop_pct": 0.875})
        >>> spec.resize, spec.resize_size, spec.interpolation
        ('short-side', (256, 256), 'bicubic')
        """
        channels, height, width = cfg.get("input_size", (3, 224, 224))
        crop_pct = cfg.get("crop_pct") or TIMM_DEFAULT_CROP_PCT
        crop_mode = cfg.get("crop_mode") or "center"
        scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
        mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        if crop_mode == "squash":
            resize = "squash"
        elif crop_mode == "border":
            resize = "fit"
        elif crop_mode == "center":
            resize = "short-side" if scale[0] == scale[1] else "cover"
        else:
            raise ValueError(f"timm crop_mode {crop_mode!r} is not one of 'center', 'squash', 'border'")
        return cls(
            size=(height, width), channels=channels, mean=mean, std=cfg.get("std", (0.229, 0.224, 0.225)),
            resize=resize, resize_size=scale, interpolation=cfg.get("interpolation") or TIMM_DEFAULT_INTERPOLATION,
            fill=tuple(round(255 * m) / 255 for m in mean) if resize == "fit" else (0.0,),
        )

    @classmethod
    def from_transformers_processor(cls, processor: Mapping[str, Any], channels: int = 3) -> "ImageSpec":
        """A transformers image processor's eval transform, from its ``preprocessor_config.json``: ``size``
        (``{"height", "width"}``: squash; ``{"shortest_edge"}``: shortest edge, then ConvNeXt's ``crop_pct`` rule
        when the config has one), ``resample``, ``do_center_crop`` + ``crop_size``, ``do_rescale`` +
        ``rescale_factor``, ``do_normalize`` + ``image_mean`` / ``image_std``. A bare integer ``size`` is a square
        (a shortest edge when the processor also crops). Other size rules (``longest_edge``, ``max_height``) are
        warned about and read as a square of their value.

        >>> spec = ImageSpec.from_transformers_processor({"size": {"shortest_edge": 224}, "crop_pct": 0.875})
        >>> spec.resize, spec.resize_size, spec.size
        ('short-side', (256, 256), (224, 224))
        """
        size = processor.get("size", 224)
        crop = processor.get("crop_size") if processor.get("do_center_crop") else None
        if isinstance(size, int):
            size = {"shortest_edge": size} if crop or "crop_pct" in processor else {"height": size, "width": size}
        if "height" in size and "width" in size:
            resize, resize_size, final = "squash", (size["height"], size["width"]), (size["height"], size["width"])
        elif "shortest_edge" in size:
            edge = int(size["shortest_edge"])
            resize, resize_size, final = "short-side", (edge, edge), (edge, edge)
            if "crop_pct" in processor:  # ConvNeXt: below 384, shortest edge to edge / crop_pct, crop to edge
                if edge < 384:
                    resize_size = (int(edge / processor["crop_pct"]),) * 2
                else:
                    resize = "squash"
        else:
            edge = int(next(iter(size.values())))
            warnings.warn(f"image processor size {dict(size)} is not a height/width or shortest_edge rule; amalgam "
                          f"resizes to {edge}x{edge}", stacklevel=2)
            resize, resize_size, final = "squash", (edge, edge), (edge, edge)
        if crop:
            final = (crop["height"], crop["width"]) if isinstance(crop, Mapping) else _pair(int(crop))
        if processor.get("do_normalize", True):
            mean, std = processor.get("image_mean", (0.5,)), processor.get("image_std", (0.5,))
        else:
            mean, std = (0.0,), (1.0,)
        rescale = processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0
        if not processor.get("do_resize", True):
            resize, resize_size = "squash", final  # the model takes its own size: amalgam's batches need one
        return cls(size=final, channels=channels, mean=mean, std=std, resize=resize, resize_size=resize_size,
                   interpolation=interpolation_name(processor.get("resample", 2)), crop_offset="floor",
                   pixel_scale=float(rescale) * 255.0)
