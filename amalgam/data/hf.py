"""Image data from a ``datasets`` Hub id or a local image folder, through the real ``datasets`` loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from amalgam.data.folders import check_image_folder
from amalgam.data.images import ImageData
from amalgam.errors import DataError
from amalgam.hub import check_repo_id

TEST_SPLITS = ("test", "validation", "valid", "val")
GENERATED_TEST_FRACTION = 0.2


class HFImages(Dataset):
    """A ``datasets`` split of images (any PIL mode, any size), yielded as ``C x H x W`` floats at one size."""

    def __init__(self, split: Any, image_column: str, label_column: str, channels: int, size: tuple[int, int]):
        self.split = split
        self.image_column = image_column
        self.label_column = label_column
        self.channels = channels
        self.size = size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.split[int(index)]
        try:  # PIL opens lazily: a broken file fails here, and the error must say which one
            image = row[self.image_column].convert("L" if self.channels == 1 else "RGB")
        except (OSError, SyntaxError, ValueError) as err:
            where = getattr(row[self.image_column], "filename", "") or f"row {index}"
            raise DataError(f"image {where} of the data set cannot be decoded ({type(err).__name__}: {err}); "
                            "remove or replace it") from None
        if image.size != (self.size[1], self.size[0]):
            image = image.resize((self.size[1], self.size[0]))
        array = np.asarray(image, dtype=np.uint8).reshape(image.size[1], image.size[0], self.channels)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0, int(row[self.label_column])


def _columns(split: Any, where: str) -> tuple[str, str, list[str]]:
    from datasets import ClassLabel, Image

    images = [name for name, feature in split.features.items() if isinstance(feature, Image)]
    labels = [name for name, feature in split.features.items() if isinstance(feature, ClassLabel)]
    if not images or not labels:
        raise DataError(
            f"{where} needs an image column and a class-label column; its features are {dict(split.features)}"
        )
    return images[0], labels[0], list(split.features[labels[0]].names)


def load_hf_images(source: str, image_size: int | None = None, revision: str | None = None) -> ImageData:
    """Load a ``datasets`` Hub id or a local image folder (``class_name/image.png`` layout).

    A missing test split is made from 20% of train, stratified. Images are converted to RGB (grey if every
    image of the first rows is grey) and resized to ``image_size`` (default: the first image's size).
    """
    import datasets

    path = Path(source).expanduser()
    if path.is_dir():  # before datasets reads it: a bad layout or file is named, not found mid-run
        check_image_folder(path)
    try:
        if path.is_dir():
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        else:
            loaded = datasets.load_dataset(check_repo_id(source, "data set", DataError), revision=revision)
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError, ValueError) as err:
        raise DataError(f"could not load data set {source!r}: {err}") from None
    if "train" not in loaded:
        raise DataError(f"data set {source!r} has no 'train' split; its splits are {list(loaded)}")
    train = loaded["train"]
    image_column, label_column, class_names = _columns(train, f"data set {source!r}")
    test_name = next((name for name in TEST_SPLITS if name in loaded), None)
    if test_name is None:
        parts = train.train_test_split(test_size=GENERATED_TEST_FRACTION, stratify_by_column=label_column, seed=0)
        train, test = parts["train"], parts["test"]
    else:
        test = loaded[test_name]
    first = train[0][image_column]
    channels = 1 if all(train[i][image_column].mode in ("L", "1") for i in range(min(8, len(train)))) else 3
    size = (image_size, image_size) if image_size else (first.size[1], first.size[0])
    return ImageData(
        name=str(source),
        class_names=class_names,
        train=HFImages(train, image_column, label_column, channels, size),
        test=HFImages(test, image_column, label_column, channels, size),
        train_labels=np.asarray(train[label_column], dtype=np.int64),
        test_labels=np.asarray(test[label_column], dtype=np.int64),
        channels=channels,
        size=size,
    )
