"""UCR/UEA time-series classification sets, read from the ``.ts`` files that ship inside the ``aeon`` wheel.

aeon (``pip install "amalgam[sequences]"``) ships a few sets for offline use (OSULeaf, ACSF1, JapaneseVowels,
BasicMotions, ...) under ``aeon/datasets/data/<NAME>/<NAME>_TRAIN.ts``. amalgam never imports aeon (which
imports numba): it finds those files and parses them itself, so the sets also load from

- a folder named by ``$AMALGAM_UCR_DIR`` (or ``root=``) holding ``<NAME>/<NAME>_TRAIN.ts`` or the files
  directly, or
- an aeon wheel (``pip download aeon --no-deps``) named by ``$AMALGAM_UCR_DIR`` or ``root=``: a wheel is a
  zip, and the files are read from it without installing anything.

A series is a ``L x D`` float tensor (time steps x channels). Sets whose series differ in length are padded at
the end with NaN to the longest one; the models in :mod:`amalgam.sequences.models` read each series' length
from the padding.
"""

from __future__ import annotations

import importlib.util
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from amalgam.errors import DataError

UCR_DIR_ENV = "AMALGAM_UCR_DIR"
PACKAGES = ("aeon", "sktime")  # packages that ship .ts files under <package>/datasets/data/<NAME>/


class SequenceSet(Dataset):
    """In-memory sequences ``N x L x D`` (NaN after a series' end) with labels; yields ``(series, label)``.

    >>> s = SequenceSet(torch.zeros(3, 5, 1), torch.tensor([0, 1, 1]))
    >>> len(s), s[2][0].shape, s[2][1]
    (3, torch.Size([5, 1]), 1)
    """

    def __init__(self, series: torch.Tensor, labels: torch.Tensor) -> None:
        if series.ndim != 3 or len(series) != len(labels):
            raise ValueError(f"expected N x L x D series and N labels, got {tuple(series.shape)} and {len(labels)}")
        self.series = series.float()
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.series[index], int(self.labels[index])

    def label_array(self) -> np.ndarray:
        return self.labels.numpy()


@dataclass
class SequenceData:
    """A labeled sequence data set with the UCR train/test split (the same fields as ``ImageData`` where they
    mean the same: ``train`` is the transfer set, ``test`` measures students and teachers)."""

    name: str
    class_names: list[str]
    train: SequenceSet
    test: SequenceSet
    channels: int
    length: int

    @property
    def train_labels(self) -> np.ndarray:
        return self.train.label_array()

    @property
    def test_labels(self) -> np.ndarray:
        return self.test.label_array()

    def __repr__(self) -> str:
        return (f"SequenceData({self.name!r}, {len(self.class_names)} classes, train {len(self.train)}, "
                f"test {len(self.test)}, length {self.length}, {self.channels} channel(s))")


def parse_ts(lines: Iterable[str]) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Parse the text of a ``.ts`` file: the series (each ``L_i x D``), their labels, and the declared classes.

    Header lines start with ``@`` (``@classLabel true a b c`` declares the classes), comments with ``#``;
    after ``@data`` each line is ``dim1 values:dim2 values:...:label`` with comma-separated values and ``?`` or
    ``NaN`` for a missing value. Timestamped series (``@timeStamps true``) are not supported.

    >>> series, labels, classes = parse_ts(["@classLabel true a b", "@data", "1,2,3:4,5,6:b", "7,8:9,10:a"])
    >>> [s.shape for s in series], labels, classes
    ([(3, 2), (2, 2)], ['b', 'a'], ['a', 'b'])
    """
    series: list[np.ndarray] = []
    labels: list[str] = []
    classes: list[str] = []
    in_data = False
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            words = line.split()
            key = words[0].lower()
            if key == "@timestamps" and len(words) > 1 and words[1].lower() == "true":
                raise DataError("timestamped .ts series are not supported")
            if key == "@classlabel" and len(words) > 2 and words[1].lower() == "true":
                classes = words[2:]
            in_data = key == "@data"
            continue
        *dims, label = line.split(":")
        if not dims:
            raise DataError(f".ts line {number}: expected 'values:...:label', got {line[:60]!r}")
        values = [[float("nan") if v.strip() in ("?", "") else float(v) for v in d.split(",")] for d in dims]
        length = max(len(v) for v in values)
        array = np.full((length, len(values)), np.nan, dtype=np.float32)
        for d, v in enumerate(values):
            array[: len(v), d] = v
        series.append(array)
        labels.append(label.strip())
    if not series:
        raise DataError("the .ts file has no series after @data")
    return series, labels, classes


def _pad(series: Sequence[np.ndarray], length: int) -> torch.Tensor:
    """Stack ``L_i x D`` arrays into ``N x length x D``, NaN after each series' end."""
    out = np.full((len(series), length, series[0].shape[1]), np.nan, dtype=np.float32)
    for i, s in enumerate(series):
        out[i, : len(s)] = s
    return torch.from_numpy(out)


def _package_dirs() -> list[Path]:
    """``<package>/datasets/data`` of the installed packages that ship UCR files; the packages are not imported."""
    found = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            folder = Path(location) / "datasets" / "data"
            if folder.is_dir():
                found.append(folder)
    return found


def _read_texts(name: str, root: str | os.PathLike | None) -> tuple[list[str], list[str], str]:
    """The lines of ``<name>_TRAIN.ts`` and ``<name>_TEST.ts``, and where they were found."""
    files = [f"{name}_TRAIN.ts", f"{name}_TEST.ts"]
    places: list[Path] = []
    if root is not None:
        places.append(Path(root).expanduser())
    elif os.environ.get(UCR_DIR_ENV):
        places.append(Path(os.environ[UCR_DIR_ENV]).expanduser())
    places += [] if root is not None else _package_dirs()
    for place in places:
        if place.is_file() and zipfile.is_zipfile(place):  # a wheel: read the files from the zip
            with zipfile.ZipFile(place) as wheel:
                members = {Path(m).name: m for m in wheel.namelist() if Path(m).parent.name == name}
                if all(f in members for f in files):
                    texts = [wheel.read(members[f]).decode("utf-8", errors="replace").splitlines() for f in files]
                    return texts[0], texts[1], str(place)
            continue
        for folder in (place / name, place):
            if all((folder / f).is_file() for f in files):
                texts = [(folder / f).read_text(encoding="utf-8", errors="replace").splitlines() for f in files]
                return texts[0], texts[1], str(folder)
    raise DataError(
        f"UCR set {name!r} not found (looked in {[str(p) for p in places] or 'no place'}). Install the optional "
        f"extra, `pip install \"amalgam[sequences]\"` (aeon ships OSULeaf, ACSF1, JapaneseVowels, ...), or point "
        f"${UCR_DIR_ENV} at a folder of .ts files or at an aeon wheel (`pip download aeon --no-deps`)."
    )


def ucr_available(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether :func:`load_ucr` can find ``name``."""
    try:
        _read_texts(name, root)
    except DataError:
        return False
    return True


def load_ucr(name: str, root: str | os.PathLike | None = None, standardize: bool = True) -> SequenceData:
    """Load a UCR/UEA set with its own train/test split.

    Classes are sorted as declared in the file's ``@classLabel`` line (else in sorted order) and named by their
    label there. With ``standardize``, each channel is shifted and scaled by the train split's mean and standard
    deviation (the test split with the same numbers).

    Example (needs the files; see the module docstring):
        >>> data = load_ucr("OSULeaf")  # doctest: +SKIP
        >>> data.train.series.shape, data.test.series.shape, data.class_names  # doctest: +SKIP
        (torch.Size([200, 427, 1]), torch.Size([242, 427, 1]), ['1', '2', '3', '4', '5', '6'])
    """
    train_lines, test_lines, _ = _read_texts(name, root)
    train_series, train_labels, declared = parse_ts(train_lines)
    test_series, test_labels, _ = parse_ts(test_lines)
    class_names = declared or sorted(set(train_labels) | set(test_labels))
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted((set(train_labels) | set(test_labels)) - set(index))
    if unknown:
        raise DataError(f"UCR set {name!r} has labels {unknown} that its @classLabel line does not declare")
    length = max(len(s) for s in train_series + test_series)
    train_x, test_x = _pad(train_series, length), _pad(test_series, length)
    if standardize:
        flat = train_x.reshape(-1, train_x.shape[-1]).double()
        mean = flat.nanmean(dim=0)
        std = ((flat - mean).pow(2).nanmean(dim=0)).sqrt().clamp(min=1e-8)
        train_x = ((train_x - mean) / std).float()
        test_x = ((test_x - mean) / std).float()
    to_labels = lambda labels: torch.tensor([index[y] for y in labels], dtype=torch.long)  # noqa: E731
    return SequenceData(
        name=name,
        class_names=list(class_names),
        train=SequenceSet(train_x, to_labels(train_labels)),
        test=SequenceSet(test_x, to_labels(test_labels)),
        channels=train_x.shape[-1],
        length=length,
    )


def series_lengths(series: torch.Tensor) -> torch.Tensor:
    """Each series' length in a ``B x L x D`` batch: the steps before the trailing all-NaN padding.

    >>> x = torch.tensor([[[1.0], [2.0], [float("nan")]], [[1.0], [2.0], [3.0]]])
    >>> series_lengths(x)
    tensor([2, 3])
    """
    present = ~torch.isnan(series).all(dim=-1)  # B x L
    steps = torch.arange(1, series.shape[1] + 1, device=series.device)
    return (present * steps).amax(dim=1).clamp(min=1)


def chance_level(labels: Sequence[int] | np.ndarray) -> float:
    """Accuracy of always predicting the most frequent class: the bar a classifier must clear.

    >>> chance_level([0, 0, 1, 2])
    0.5
    """
    counts = np.bincount(np.asarray(labels))
    return float(counts.max() / max(1, counts.sum())) if len(counts) else math.nan
