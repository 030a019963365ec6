"""Data: built-in real sets (``digits``, ``fashion-mnist``), ``datasets`` Hub ids and local image folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from amalgam.data.builtin import BUILTIN, load_digits, load_fashion_mnist
from amalgam.data.hf import load_hf_images
from amalgam.data.images import UNLABELED, ImageData, RelabeledImages, TensorImages, stratified_indices
from amalgam.errors import DataError


def load_data(source: Any, image_size: int | None = None, role: str = "transfer",
              skip_unreadable: bool = False) -> ImageData:
    """Load a data set: ``"digits"``, ``"fashion-mnist"``, a ``datasets`` Hub id, a folder of images (with class
    sub-folders: labeled; flat or nested otherwise: unlabeled), a folder written by ``save_to_disk``, a
    ``datasets.Dataset`` / ``DatasetDict``, or a list of image files (unlabeled). ``role="eval"`` asks for
    evaluation data: it must be labeled, and a set without a test split of its own is evaluated whole.
    ``skip_unreadable=True`` leaves out local image files that cannot be read (listed in ``ImageData.skipped``)
    instead of refusing the set.

    Example:
        >>> data = load_data("digits")
        >>> len(data.train), len(data.test), data.class_names[:3]
        (1437, 360, ['0', '1', '2'])
    """
    if role not in ("transfer", "eval"):
        raise ValueError(f"role must be 'transfer' or 'eval', got {role!r}")
    if isinstance(source, ImageData):
        if role == "eval" and not source.labeled:
            raise DataError(f"evaluation data {source.name!r} has no labels: give a labeled set")
        return source
    if isinstance(source, (list, tuple)) or type(source).__module__.startswith("datasets."):
        return load_hf_images(list(source) if isinstance(source, tuple) else source, image_size=image_size,
                              role=role, skip_unreadable=skip_unreadable)  # image files, or datasets objects
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"data must be a data set name, Hub id, folder, list of image files or datasets object, "
                        f"got {source!r}")
    if source in BUILTIN:
        return BUILTIN[source]()
    if Path(source).expanduser().is_dir() or "/" in source:
        return load_hf_images(source, image_size=image_size, role=role, skip_unreadable=skip_unreadable)
    raise DataError(
        f"unknown data set {source!r}: use one of the built-in sets {sorted(BUILTIN)}, a `datasets` Hub id "
        "('org/name'), or a folder of images"
    )


__all__ = [
    "UNLABELED", "ImageData", "RelabeledImages", "TensorImages", "load_data", "load_digits",
    "load_fashion_mnist", "load_hf_images", "stratified_indices",
]
