"""Image data from a ``datasets`` Hub id, a ``datasets`` object or folder, a local image folder or a list of
image files, through the real ``datasets`` loaders (labeled or not)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from amalgam.data.folders import check_image_files, folder_layout_problem, image_files
from amalgam.data.images import UNLABELED, ImageData
from amalgam.data.pictures import is_grey, match_channels, picture_tensor
from amalgam.errors import DataError
from amalgam.hub import check_repo_id

TEST_SPLITS = ("test", "validation", "valid", "val")
GENERATED_TEST_FRACTION = 0.2
SIZE_SAMPLE = 64  # images whose median size is the set's default size
MAX_SIDE = 512  # the default size's longer side at most: big photos are shrunk (aspect kept), not held whole


class HFImages(Dataset):
    """A ``datasets`` split of images (any PIL mode, any size), yielded as ``C x H x W`` floats at one size, with
    their class (``UNLABELED`` for a set without a label column). Rows are decoded as they are read (16-bit
    images keep their levels; see :func:`amalgam.data.pictures.picture_tensor`) and resized with torch's
    antialiased bilinear resize; each model then takes its own view of that (amalgam.teachers.preprocess)."""

    def __init__(self, split: Any, image_column: str, label_column: str | None, channels: int,
                 size: tuple[int, int]):
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
            image = match_channels(picture_tensor(row[self.image_column]), self.channels)
        except (OSError, SyntaxError, ValueError) as err:
            where = getattr(row[self.image_column], "filename", "") or f"row {index}"
            raise DataError(f"image {where} of the data set cannot be decoded ({type(err).__name__}: {err}); "
                            "remove or replace it") from None
        if tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image[None], size=self.size, mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp(0, 1)
        label = UNLABELED if self.label_column is None else int(row[self.label_column])
        return image, label


def _columns(split: Any, where: str, need_labels: bool) -> tuple[str, str | None, list[str]]:
    """The image column, the class-label column (``None`` for an unlabeled set) and the class names."""
    from datasets import ClassLabel, Image

    images = [name for name, feature in split.features.items() if isinstance(feature, Image)]
    labels = [name for name, feature in split.features.items() if isinstance(feature, ClassLabel)]
    if not images:
        raise DataError(f"{where} has no image column (a datasets Image feature); its features are "
                        f"{dict(split.features)}")
    if not labels and need_labels:
        hint = next((f" Its column {name!r} holds numbers or names: dataset.class_encode_column({name!r}) makes "
                     "it one." for name in ("label", "labels", "class") if name in split.features), "")
        raise DataError(
            f"{where} has images but no class-label column (a datasets ClassLabel feature, which names the "
            f"classes amalgam matches with the teachers'); evaluation needs one. Its features are "
            f"{dict(split.features)}.{hint}"
        )
    if not labels:
        return images[0], None, []
    return images[0], labels[0], list(split.features[labels[0]].names)


def _is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` was written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _files_dataset(files: Sequence[str | os.PathLike]) -> Any:
    """Image files as an unlabeled ``datasets`` split: their paths in Arrow, each decoded when it is read."""
    import datasets

    return datasets.Dataset.from_dict({"image": [str(f) for f in files]}).cast_column("image", datasets.Image())


def _without_files(loaded: Any, left_out: set[Path]) -> Any:
    """``loaded`` (a ``DatasetDict`` of local image files) without the rows of ``left_out``."""
    import datasets

    def kept(split: Any) -> Any:
        paths = split.cast_column("image", datasets.Image(decode=False))["image"]
        return split.select([i for i, image in enumerate(paths) if Path(image["path"]).resolve() not in left_out])

    return datasets.DatasetDict({name: kept(split) for name, split in loaded.items()})


def _open(source: Any, revision: str | None, role: str, skip_unreadable: bool) -> tuple[Any, str, list[str]]:
    """``source`` as a ``DatasetDict``, the name a run records for it, and the unreadable files left out."""
    import datasets

    if isinstance(source, datasets.Dataset):
        return datasets.DatasetDict({"train": source}), source.info.dataset_name or "dataset", []
    if isinstance(source, datasets.DatasetDict):
        return source, next(iter(source.values())).info.dataset_name or "dataset", []
    if isinstance(source, (list, tuple)):
        files = [Path(f) for f in source]
        readable = check_image_files(files, skip_unreadable)
        return (datasets.DatasetDict({"train": _files_dataset(readable)}), f"{len(source)} image files",
                sorted(str(f) for f in set(files) - set(readable)))
    path = Path(source).expanduser()
    try:
        if path.is_dir() and _is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))  # memory-mapped where it lies: no copy
            return (datasets.DatasetDict({"train": loaded}) if isinstance(loaded, datasets.Dataset) else loaded,
                    str(source), [])
        if path.is_dir():  # before datasets reads it: a bad layout or file is named, not found mid-run
            files = image_files(path)
            problem = folder_layout_problem(path, files)
            if problem is not None and (role == "eval" or not files):
                raise DataError(problem)
            readable = check_image_files(files, skip_unreadable)
            left_out = sorted(set(files) - set(readable))
            if problem is not None:
                warnings.warn(f"{problem}. Its {len(files)} images are read as unlabeled transfer images.",
                              stacklevel=4)
                return datasets.DatasetDict({"train": _files_dataset(readable)}), str(source), list(map(str, left_out))
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
            if left_out:
                loaded = _without_files(loaded, {p.resolve() for p in left_out})
            return loaded, str(source), list(map(str, left_out))
        return (datasets.load_dataset(check_repo_id(source, "data set", DataError), revision=revision), str(source),
                [])
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"could not load data set {source!r}: {err}") from None


def _test_split(loaded: Any, train: Any, label_column: str | None, name: str, role: str) -> tuple[Any, Any]:
    """The train and test splits: the set's own test split; else, for evaluation, all of it; else 20% of train
    (stratified where it can be); an unlabeled set has no test split."""
    test_name = next((split for split in TEST_SPLITS if split in loaded), None)
    if test_name is not None:
        return train, loaded[test_name]
    if label_column is None:
        return train, train.select([])
    if role == "eval":
        return train, train
    try:
        parts = train.train_test_split(test_size=GENERATED_TEST_FRACTION, stratify_by_column=label_column, seed=0)
    except ValueError as err:  # a class of one image cannot be stratified
        warnings.warn(f"data set {name!r}: its test split (20% of train) is drawn without stratifying, as "
                      f"datasets cannot stratify it ({err}); give it a test split of its own", stacklevel=4)
        parts = train.train_test_split(test_size=GENERATED_TEST_FRACTION, seed=0)
    return parts["train"], parts["test"]


def default_size(images: Sequence[Any]) -> tuple[int, int]:
    """The size a set of images is read at: the median height and width of ``images`` (so that one odd image
    does not set the size of all), shrunk with its aspect kept until the longer side is at most
    :data:`MAX_SIDE`.

    >>> from PIL import Image
    >>> default_size([Image.new("L", (30, 20)), Image.new("L", (1, 1)), Image.new("L", (30, 20))])
    (20, 30)
    >>> default_size([Image.new("RGB", (4000, 3000))])
    (384, 512)
    """
    height = float(np.median([image.size[1] for image in images]))
    width = float(np.median([image.size[0] for image in images]))
    scale = min(1.0, MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def load_hf_images(source: Any, image_size: int | None = None, revision: str | None = None,
                   role: str = "transfer", skip_unreadable: bool = False) -> ImageData:
    """Load a ``datasets`` Hub id, a folder written by ``save_to_disk``, a ``Dataset`` / ``DatasetDict``, a local
    image folder, or a list of image files.

    A folder of class sub-folders (``class_name/image.png``) is labeled; any other folder of images (flat or
    nested) and a list of files are unlabeled, as is a data set without a ClassLabel column: as transfer data
    (``role="transfer"``) that is fine, as evaluation data (``role="eval"``) an error. A labeled set without a
    test split gets 20% of train (stratified) as its test split, or, for evaluation, is its test split whole.
    Images are converted to RGB (grey if every image of the first rows is grey) and resized to ``image_size``
    (default: :func:`default_size` of the first images: their median size, the longer side at most 512).
    Every local image file is checked first: an unreadable one is a :class:`DataError` naming it, or, with
    ``skip_unreadable``, left out and listed in ``ImageData.skipped``.
    """
    loaded, name, skipped = _open(source, revision, role, skip_unreadable)
    if "train" not in loaded:
        raise DataError(f"data set {name!r} has no 'train' split; its splits are {list(loaded)}")
    image_column, label_column, class_names = _columns(loaded["train"], f"data set {name!r}", role == "eval")
    train, test = _test_split(loaded, loaded["train"], label_column, name, role)
    first = [train[i][image_column] for i in range(min(SIZE_SAMPLE, len(train)))]
    channels = 1 if all(is_grey(image) for image in first[:8]) else 3
    size = (image_size, image_size) if image_size else default_size(first)

    def labels(split: Any) -> np.ndarray:
        if label_column is None:
            return np.full(len(split), UNLABELED, dtype=np.int64)
        return np.asarray(split[label_column], dtype=np.int64)

    return ImageData(
        name=name,
        class_names=class_names,
        train=HFImages(train, image_column, label_column, channels, size),
        test=HFImages(test, image_column, label_column, channels, size),
        train_labels=labels(train),
        test_labels=labels(test),
        channels=channels,
        size=size,
        skipped=skipped,
    )
