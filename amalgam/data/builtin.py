"""Built-in real data sets that work offline: scikit-learn's digits and Fashion-MNIST from Debian."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from amalgam.data.images import ImageData, TensorImages
from amalgam.errors import DataError

FASHION_MNIST_DIR = Path(os.environ.get("AMALGAM_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def _tensor_data(name, classes, train_x, train_y, test_x, test_y) -> ImageData:
    train_x, test_x = torch.from_numpy(train_x), torch.from_numpy(test_x)
    return ImageData(
        name=name,
        class_names=list(classes),
        train=TensorImages(train_x, torch.from_numpy(train_y)),
        test=TensorImages(test_x, torch.from_numpy(test_y)),
        train_labels=train_y,
        test_labels=test_y,
        channels=train_x.shape[1],
        size=tuple(train_x.shape[-2:]),
    )


def load_digits() -> ImageData:
    """scikit-learn's 1,797 8x8 digits, split 80/20 stratified with a fixed seed (1,437 train / 360 test)."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    x, y = sklearn_digits(return_X_y=True)
    images = np.round(x.reshape(-1, 1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)  # pixel values are 0..16
    train_x, test_x, train_y, test_y = train_test_split(
        images, y.astype(np.int64), test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return _tensor_data("digits", [str(d) for d in range(10)], train_x, train_y, test_x, test_y)


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def load_fashion_mnist(folder: Path | None = None) -> ImageData:
    """Fashion-MNIST, 60,000 train / 10,000 test 28x28 grey images, from the Debian package's IDX files."""
    folder = Path(folder or FASHION_MNIST_DIR)
    files = {
        split: (folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz")
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }
    missing = [str(p) for pair in files.values() for p in pair if not p.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST files not found: {missing}. Install them with `sudo apt-get install -y "
            "dataset-fashion-mnist` (Debian/Ubuntu), or set AMALGAM_FASHION_MNIST_DIR to a folder with the IDX files."
        )
    arrays = {}
    for split, (images_path, labels_path) in files.items():
        images = _read_idx(images_path, header=16).reshape(-1, 1, 28, 28)
        labels = _read_idx(labels_path, header=8).astype(np.int64)
        arrays[split] = (images.copy(), labels)
    return _tensor_data("fashion-mnist", FASHION_MNIST_CLASSES, *arrays["train"], *arrays["test"])


BUILTIN = {"digits": load_digits, "fashion-mnist": load_fashion_mnist}
