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


def _digits_dataset(count: int = 40):
    import datasets
    from PIL import Image

    digits = load_data("digits")
    images = [Image.fromarray((digits.train[i][0][0].numpy() * 255).astype(np.uint8)) for i in range(count)]
    labels = [int(digits.train[i][1]) for i in range(count)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=digits.class_names)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features), labels


def test_a_dataset_object_and_a_save_to_disk_folder(tmp_path):
    import datasets

    dataset, labels = _digits_dataset()
    with pytest.warns(UserWarning, match="without stratifying"):  # 40 images: a class has only one
        data = load_data(dataset)
    assert data.class_names[:2] == ["0", "1"] and len(data.train) + len(data.test) == 40
    parts = datasets.DatasetDict({"train": dataset.select(range(30)), "test": dataset.select(range(30, 40))})
    parts.save_to_disk(tmp_path / "saved")
    saved = load_data(str(tmp_path / "saved"))  # its own test split kept
    assert (len(saved.train), len(saved.test)) == (30, 10) and saved.test_labels.tolist() == labels[30:]
    image, label = saved.train[0]
    assert image.shape == (1, 8, 8) and label == labels[0]


def test_evaluation_data_without_class_labels_says_what_it_lacks():
    dataset, _ = _digits_dataset(10)
    with pytest.raises(DataError, match="has images but no class-label column"):
        load_data(dataset.remove_columns("label"), role="eval")
    numbers = dataset.cast_column("label", __import__("datasets").Value("int64"))
    with pytest.raises(DataError, match=r"class_encode_column\('label'\)"):
        load_data(numbers, role="eval")


def test_one_odd_image_does_not_set_the_size_of_all(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.new("L", (12, 10)).save(tmp_path / name / f"{i}.png")
    Image.new("L", (1, 1)).save(tmp_path / "a" / "0.png")  # the first image datasets reads
    assert load_data(str(tmp_path)).size == (10, 12)


def _png_folder(root, digits, indices, by_class: bool, sizes=((8, 8),)):
    """Digits as PNGs under ``root``: in class folders, or loose with some in nested folders (no labels), at
    mixed sizes. (Sub-folders alone would read as classes: a list of the files reads them unlabeled.)"""
    from PIL import Image

    for n, i in enumerate(indices):
        image, label = digits.train[i] if by_class is not None else digits.test[i]
        folder = root / digits.class_names[label] if by_class else root / ("more/deeper" if n % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray((image[0].numpy() * 255).astype(np.uint8))
        picture.resize(sizes[n % len(sizes)]).save(folder / f"{i}.png")
    return root


def test_unlabeled_transfer_data_in_every_form(tmp_path):
    import datasets

    digits = load_data("digits")
    nested = _png_folder(tmp_path / "nested", digits, range(30), by_class=False, sizes=((8, 8), (16, 16), (12, 9)))
    with pytest.warns(UserWarning, match="read as unlabeled transfer images"):
        data = load_data(str(nested))
    assert (data.labeled, len(data.train), len(data.test), data.size) == (False, 30, 0, (9, 12))  # median H, W
    assert set(data.train_labels.tolist()) == {UNLABELED} and data.train[0][1] == UNLABELED
    files = sorted(nested.rglob("*.png"))
    listed = load_data(files[:10])
    assert not listed.labeled and len(listed.train) == 10 and listed.train[0][0].shape == (1, *listed.size)
    images = datasets.Dataset.from_dict({"image": [str(f) for f in files]}).cast_column("image", datasets.Image())
    assert not load_data(images).labeled
    with pytest.raises(DataError, match="has images but no class-label column.*evaluation needs one"):
        load_data(images, role="eval")


def test_a_run_on_unlabeled_images_uses_labeled_eval_data_whole(tmp_path):
    import warnings

    import amalgam
    from tests.tiny import tiny_teachers

    digits = load_data("digits")
    teachers = tiny_teachers([str(d) for d in range(5)], [str(d) for d in range(5, 10)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = load_data(str(_png_folder(tmp_path / "flat", digits, range(40), by_class=False)))
    with pytest.raises(DataError, match="labeled_fraction=0.1 asks for labels"):
        amalgam.amalgamate(teachers, data=flat, eval_data="digits", labeled_fraction=0.1, epochs=1, progress=False)
    labeled = _png_folder(tmp_path / "eval", digits, range(50), by_class=True)
    result = amalgam.amalgamate(teachers, data=flat, eval_data=str(labeled), epochs=1, batch_size=16,
                                progress=False, knowledge_cache=False, run_dir=tmp_path / "run")
    assert result.metrics["test_samples"] == 50  # a folder without a test split is evaluated whole
    assert result.metrics["labeled_samples"] == 0

    from amalgam.publish.card import render_model_card
    from amalgam.publish.run import load_run

    card = render_model_card(load_run(tmp_path / "run"), "org/student")
    assert "are on local folder `eval`, labeled evaluation data of its own" in " ".join(card.split())


def test_big_photos_are_read_shrunk_with_their_aspect_not_at_full_size(tmp_path):
    from PIL import Image

    for i in range(3):  # all big: the median alone would read every image at 3000 x 2000
        Image.new("RGB", (3000, 2000), (200, 100, 50)).save(tmp_path / f"{i}.jpg")
    data = load_data([tmp_path / f"{i}.jpg" for i in range(3)])
    image, _ = data.train[0]
    assert data.size == (341, 512) and image.shape == (3, 341, 512)


def test_sixteen_bit_images_keep_their_levels_through_a_folder(tmp_path):
    from PIL import Image

    levels = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)  # 1000 / 65535 lies between 8-bit levels
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(levels).save(tmp_path / name / f"{i}.png")
    data = load_data(str(tmp_path))
    image, _ = data.train[0]
    assert data.channels == 1 and image.shape == (1, 2, 2)
    assert image.flatten().tolist() == pytest.approx((levels.flatten() / 65535).tolist(), abs=1e-6)
