"""One picture, whatever form it comes in (a PIL image, a numpy array, a file path, a tensor), as amalgam's raw
image: a ``C x H x W`` float tensor in ``[0, 1]`` at its own size (each model resizes it to its own input)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from amalgam.errors import DataError

Picture = Union[torch.Tensor, np.ndarray, "PIL.Image.Image", str, os.PathLike]  # noqa: F821 - PIL is lazy
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights: RGB -> grey (as PIL's "L" mode)


def _from_array(array: np.ndarray, where: str) -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise DataError(f"{where}: expected H x W or H x W x C (C of 1, 3 or 4) pixels, got shape {array.shape}")
    if array.shape[2] in (2, 4):  # grey or colour with alpha: the alpha channel carries no class
        array = array[:, :, :-1]
    if array.dtype in (np.uint8, np.uint16):  # in [0, 1] once scaled, so no clamp; 16-bit keeps its levels
        scaled = np.divide(array, 255.0 if array.dtype == np.uint8 else 65535.0, dtype=np.float32)
    else:
        scaled = np.clip(array.astype(np.float32), 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(scaled)).permute(2, 0, 1)


def _from_pil(image: Any) -> torch.Tensor:
    if image.mode in _SIXTEEN_BIT:
        return _from_array(np.asarray(image, dtype=np.int64).clip(0, 65535).astype(np.uint16), "image")
    if image.mode == "F":
        return _from_array(np.asarray(image, dtype=np.float32), "image")
    return _from_array(np.asarray(image.convert("L" if is_grey(image) else "RGB")), "image")


def is_grey(image: Any) -> bool:
    """Whether a PIL image holds one channel of levels: grey modes (1, L, LA, 16-bit, float) or a grey palette.

    >>> from PIL import Image
    >>> is_grey(Image.new("I;16", (2, 2))), is_grey(Image.new("RGB", (2, 2)))
    (True, False)
    """
    return image.mode in ("1", "L", "LA", "F", *_SIXTEEN_BIT) or (image.mode == "P" and _palette_is_grey(image))


def _palette_is_grey(image: Any) -> bool:
    palette = np.asarray(image.convert("RGB"))
    return bool((palette[..., 0] == palette[..., 1]).all() and (palette[..., 1] == palette[..., 2]).all())


def match_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """An image (``C x H x W``) or batch (``B x C x H x W``) with ``channels`` channels: grey repeated to RGB, or
    RGB to grey by luma (ITU-R BT.601, PIL's ``convert("L")`` weights).

    >>> round(match_channels(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1), 1).item(), 3)
    0.299
    >>> match_channels(torch.rand(2, 1, 4, 4), 3).shape
    torch.Size([2, 3, 4, 4])
    """
    if image.shape[-3] == channels:
        return image
    if channels == 3:
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:])
    return (image * image.new_tensor(LUMA).view(3, 1, 1)).sum(dim=-3, keepdim=True)


def picture_tensor(picture: Picture) -> torch.Tensor:
    """``picture`` as a ``C x H x W`` float tensor in ``[0, 1]`` (1 channel for grey, 3 for colour; alpha dropped;
    palette and CMYK images converted; 8-bit divided by 255, 16-bit by 65535).

    >>> from PIL import Image
    >>> picture_tensor(Image.new("RGBA", (5, 4), (255, 0, 0, 128))).shape
    torch.Size([3, 4, 5])
    >>> picture_tensor(np.full((2, 3), 65535, dtype=np.uint16)).max().item()
    1.0
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(picture, torch.Tensor):
        tensor = picture.detach()
        if tensor.ndim == 2:
            tensor = tensor[None]
        if tensor.ndim != 3:
            raise DataError(f"a picture tensor must be C x H x W or H x W, got shape {tuple(tensor.shape)}")
        return tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    if isinstance(picture, np.ndarray):
        return _from_array(picture, "array")
    if isinstance(picture, (str, os.PathLike)):
        path = Path(picture)
        try:
            with Image.open(path) as image:
                image.load()
                return _from_pil(image)
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            raise DataError(f"image file {str(path)!r} cannot be read as an image ({err})") from None
    if isinstance(picture, Image.Image):
        return _from_pil(picture)
    raise DataError(f"cannot read a picture from a {type(picture).__name__}: give a PIL image, a numpy array, a "
                    "file path or a C x H x W tensor")
