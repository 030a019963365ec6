"""Data: built-in real sets (``digits``, ``fashion-mnist``), ``datasets`` Hub ids and local image folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amalgam.data.builtin import BUILTIN, load_digits, load_fashion_mnist
from amalgam.data.hf import load_hf_images
from amalgam.data.images import UNLABELED, ImageData, RelabeledImages, TensorImages, stratified_indices
from amalgam.errors import DataError


def load_data(source: Any, image_size: int | None = None) -> ImageData:
    """Load a data set: ``"digits"``, ``"fashion-mnist"``, a ``datasets`` Hub id, a folder of class folders of
    images or one written by ``save_to_disk``, or a ``datasets.Dataset`` / ``DatasetDict`` (labeled, for now).

    Example:
        >>> data = load_data("digits")
        >>> len(data.train), len(data.test), data.class_names[:3]
        (1437, 360, ['0', '1', '2'])
    """
    if isinstance(source, ImageData):
        return source
    if type(source).__module__.startswith("datasets."):  # a Dataset or DatasetDict object
        return load_hf_images(source, image_size=image_size)
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"data must be a data set name, Hub id or folder, got {source!r}")
    if source in BUILTIN:
        return BUILTIN[source]()
    if Path(source).expanduser().is_dir() or "/" in source:
        return load_hf_images(source, image_size=image_size)
    raise DataError(
        f"unknown data set {source!r}: use one of the built-in sets {sorted(BUILTIN)}, a `datasets` Hub id "
        "('org/name'), or a folder of images in class sub-folders"
    )


__all__ = [
    "UNLABELED", "ImageData", "RelabeledImages", "TensorImages", "load_data", "load_digits",
    "load_fashion_mnist", "load_hf_images", "stratified_indices",
]
