"""Built-in real data, `datasets` image folders, the labeled fraction, and what a run may see of labels."""

import numpy as np
import pytest
import torch

from amalgam.data import UNLABELED, RelabeledImages, load_data, load_fashion_mnist, stratified_indices
from amalgam.data.builtin import FASHION_MNIST_DIR
from amalgam.errors import DataError


def test_digits_split_is_stratified_and_fixed():
    data = load_data("digits")
    assert (len(data.train), len(data.test)) == (1437, 360)
    assert data.channels == 1 and data.size == (8, 8)
    image, label = data.test[0]
    assert image.shape == (1, 8, 8) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert np.bincount(data.test_labels).min() >= 35  # about 36 per class
    assert np.array_equal(load_data("digits").test_labels, data.test_labels)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install -y dataset-fashion-mnist")
def test_fashion_mnist_from_the_debian_package():
    data = load_data("fashion-mnist")
    assert (len(data.train), len(data.test), data.size) == (60000, 10000, (28, 28))
    assert data.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert data.class_names[9] == "Ankle boot"
    assert float(data.train.images[:1000].float().mean() / 255) == pytest.approx(0.286, abs=0.02)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_local_image_folder_through_datasets(tmp_path):
    from PIL import Image

    digits = load_data("digits")
    for i in range(40):
        image, label = digits.train[i]
        folder = tmp_path / ("even" if label % 2 == 0 else "odd")
        folder.mkdir(exist_ok=True)
        Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).convert("RGB").save(folder / f"{i}.png")
    data = load_data(str(tmp_path))
    assert data.class_names == ["even", "odd"]
    assert len(data.train) + len(data.test) == 40 and len(data.test) == 8  # 20% held out, stratified
    image, label = data.train[0]
    assert image.shape == (3, 8, 8) and label in (0, 1)
    assert data.train_labels.tolist() == [data.train[i][1] for i in range(len(data.train))]


def test_stratified_fraction_keeps_every_class():
    labels = np.repeat(np.arange(10), 100)
    chosen = stratified_indices(labels, 0.02, seed=0)
    assert chosen.size == 20 and np.bincount(labels[chosen]).tolist() == [2] * 10
    assert not np.array_equal(chosen, stratified_indices(labels, 0.02, seed=1))
    assert stratified_indices(labels, 0.0, seed=0).size == 0
    with pytest.raises(ValueError, match="within \\[0, 1\\]"):
        stratified_indices(labels, 1.5, seed=0)


def test_transfer_view_hides_labels_outside_the_labeled_fraction():
    from amalgam.data import TensorImages

    base = TensorImages(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2, 1]))
    view = RelabeledImages(base, label_map=[5, -1, 7], visible=np.array([1, 2]))
    assert [view[i][1] for i in range(4)] == [UNLABELED, -1, 7, UNLABELED]
    assert [RelabeledImages(base, [5, -1, 7])[i][1] for i in range(4)] == [5, -1, 7, -1]


@pytest.mark.parametrize(("source", "message"), [
    ("mnist", "unknown data set 'mnist'"),
    ("", "data must be a data set name"),
    ("org/bad name", "malformed Hub repo id 'org/bad name' for the data set"),
])
def test_bad_data_sources(source, message):
    with pytest.raises(DataError, match=message):
        load_data(source)
