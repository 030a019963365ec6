"""Image data from a ``datasets`` Hub id or a local image folder, through the real ``datasets`` loaders."""

from __future__ import annotations

import warnings
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
SIZE_SAMPLE = 64  # images whose median size is the set's default size


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
    if not images:
        raise DataError(f"{where} has no image column (a datasets Image feature); its features are "
                        f"{dict(split.features)}")
    if not labels:
        hint = next((f" Its column {name!r} holds numbers or names: dataset.class_encode_column({name!r}) makes "
                     "it one." for name in ("label", "labels", "class") if name in split.features), "")
        raise DataError(
            f"{where} has images but no class-label column (a datasets ClassLabel feature, which names the "
            f"classes amalgam matches with the teachers'); its features are {dict(split.features)}.{hint}"
        )
    return images[0], labels[0], list(split.features[labels[0]].names)


def _is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` was written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _open(source: Any, revision: str | None) -> tuple[Any, str]:
    """``source`` as a ``DatasetDict`` and the name a run records for it."""
    import datasets

    if isinstance(source, datasets.Dataset):
        return datasets.DatasetDict({"train": source}), source.info.dataset_name or "dataset"
    if isinstance(source, datasets.DatasetDict):
        return source, next(iter(source.values())).info.dataset_name or "dataset"
    path = Path(source).expanduser()
    try:
        if path.is_dir() and _is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))  # memory-mapped where it lies: no copy
            return (datasets.DatasetDict({"train": loaded}) if isinstance(loaded, datasets.Dataset) else loaded,
                    str(source))
        if path.is_dir():  # before datasets reads it: a bad layout or file is named, not found mid-run
            check_image_folder(path)
            return datasets.load_dataset("imagefolder", data_dir=str(path)), str(source)
        return datasets.load_dataset(check_repo_id(source, "data set", DataError), revision=revision), str(source)
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"could not load data set {source!r}: {err}") from None


def load_hf_images(source: Any, image_size: int | None = None, revision: str | None = None) -> ImageData:
    """Load a ``datasets`` Hub id, a folder written by ``save_to_disk``, a ``Dataset`` / ``DatasetDict``, or a
    local image folder (``class_name/image.png`` layout).

    A missing test split is made from 20% of train, stratified. Images are converted to RGB (grey if every
    image of the first rows is grey) and resized to ``image_size`` (default: the median size of the first
    images, so that one odd image does not set the size of all).
    """
    loaded, name = _open(source, revision)
    source = name
    if "train" not in loaded:
        raise DataError(f"data set {source!r} has no 'train' split; its splits are {list(loaded)}")
    train = loaded["train"]
    image_column, label_column, class_names = _columns(train, f"data set {source!r}")
    test_name = next((name for name in TEST_SPLITS if name in loaded), None)
    if test_name is None:
        try:
            parts = train.train_test_split(test_size=GENERATED_TEST_FRACTION, stratify_by_column=label_column,
                                           seed=0)
        except ValueError as err:  # a class of one image cannot be stratified
            warnings.warn(f"data set {source!r}: its test split (20% of train) is drawn without stratifying, as "
                          f"datasets cannot stratify it ({err}); give it a test split of its own", stacklevel=3)
            parts = train.train_test_split(test_size=GENERATED_TEST_FRACTION, seed=0)
        train, test = parts["train"], parts["test"]
    else:
        test = loaded[test_name]
    first = [train[i][image_column] for i in range(min(SIZE_SAMPLE, len(train)))]
    channels = 1 if all(image.mode in ("L", "1") for image in first[:8]) else 3
    size = (image_size, image_size) if image_size else (int(np.median([im.size[1] for im in first])),
                                                         int(np.median([im.size[0] for im in first])))
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
