"""Image data sets as amalgam sees them: raw ``[0, 1]`` tensors, integer labels, named classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

UNLABELED = -1


class TensorImages(Dataset):
    """In-memory images (``uint8``, ``N x C x H x W``) with labels; yields ``(float image in [0, 1], label)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float() / 255.0, int(self.labels[index])

    def label_array(self) -> np.ndarray:
        return self.labels.numpy()


def in_memory(data: Dataset) -> bool:
    """Whether ``data`` reads its images from tensors in memory (a :class:`TensorImages`, through any views of
    it), so that loading it in worker processes would only add copying.

    >>> in_memory(RelabeledImages(TensorImages(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2)), [0]))
    True
    """
    while not isinstance(data, TensorImages):
        inner = getattr(data, "base", None)
        inner = getattr(data, "dataset", None) if inner is None else inner
        if inner is None:
            return False
        data = inner
    return True


class RelabeledImages(Dataset):
    """A view of ``base`` whose labels go through ``label_map`` and are hidden outside ``visible``.

    This is how a run sees its transfer set: labels mapped into the union label space, and kept only for the
    labeled fraction (``UNLABELED`` elsewhere), so a method cannot use labels it was not given.
    """

    def __init__(self, base: Dataset, label_map: Sequence[int], visible: np.ndarray | None = None) -> None:
        self.base = base
        self.label_map = list(label_map)
        self.visible = None if visible is None else set(int(i) for i in visible)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        if label < 0 or (self.visible is not None and index not in self.visible):
            return image, UNLABELED
        return image, self.label_map[label]


@dataclass
class ImageData:
    """A labeled image data set with a train and a test split.

    ``train`` is used as the transfer set (its labels only for the labeled fraction); ``test`` measures the
    student and the teachers. Both yield ``(image, label)`` with ``image`` a ``C x H x W`` float tensor in
    ``[0, 1]`` and ``label`` an index into ``class_names``. An unlabeled set has no ``class_names``, every label
    ``UNLABELED`` and an empty ``test``: it is transfer data only.
    """

    name: str
    class_names: list[str]
    train: Dataset
    test: Dataset
    train_labels: np.ndarray
    test_labels: np.ndarray
    channels: int
    size: tuple[int, int]
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (skip_unreadable=True)

    @property
    def labeled(self) -> bool:
        return bool(self.class_names)

    def __repr__(self) -> str:
        return (
            f"ImageData({self.name!r}, {len(self.class_names)} classes, train {len(self.train)}, "
            f"test {len(self.test)}, {self.channels}x{self.size[0]}x{self.size[1]})"
        )


def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified sample of ``fraction`` of the indices (at least one per class present), sorted.

    >>> stratified_indices(np.array([0, 0, 0, 0, 1, 1, 1, 1]), 0.5, seed=0).size
    4
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be within [0, 1], got {fraction}")
    if fraction == 0.0:
        return np.array([], dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = max(1, int(round(fraction * members.size)))
        chosen.append(rng.choice(members, size=min(count, members.size), replace=False))
    return np.sort(np.concatenate(chosen))
