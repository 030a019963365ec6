"""A real ImageNet teacher (EfficientNet-Lite0, timm's readable names with their repeated 'crane') amalgamated end
to end beside the demo teachers: planned, cached, trained, evaluated, saved and described on the card."""

import warnings

import pytest

from amalgam.data import load_data


@pytest.fixture()
def digit_folder(tmp_path):
    """100 digits as PNGs in class folders (10 of each): a labeled folder with a 20% test split."""
    from PIL import Image

    digits = load_data("digits")
    counts = dict.fromkeys(range(10), 0)
    for i in range(len(digits.train)):
        image, label = digits.train[i]
        if counts[label] < 10:
            (tmp_path / "digits" / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray((image[0].numpy() * 255).astype("uint8")).save(tmp_path / "digits" / str(label) / f"{i}.png")
            counts[label] += 1
    return tmp_path / "digits"


def test_an_imagenet_teacher_amalgamates_end_to_end(lite0_folder, demo_zoo, digit_folder, tmp_path):
    import amalgam
    from amalgam.publish.card import render_model_card
    from amalgam.publish.run import load_run
    from amalgam.teachers import load_teacher
    from timm.data import ImageNetInfo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imagenet = load_teacher(lite0_folder, class_names=ImageNetInfo().label_descriptions(), name="lite0")
    with pytest.warns(UserWarning, match="teacher 'lite0' knows none of the data's classes"):
        result = amalgam.amalgamate([imagenet, *demo_zoo], data=str(digit_folder), epochs=1, progress=False,
                                    run_dir=tmp_path / "run")
    assert result.label_space.num_classes == 1010 and "crane (2)" in result.label_space.class_names
    metrics = result.metrics
    assert metrics["teachers"]["lite0"]["test_samples"] == 0 and metrics["test_samples"] == 20
    assert "teacher lite0" in result.table() and "n/a" in result.table()  # no accuracy on classes it lacks
    assert set(metrics["student"]["per_class"]) == {str(d) for d in range(10)}  # the classes the test split has
    card = " ".join(render_model_card(load_run(tmp_path / "run"), "org/student").split())
    assert "(resized to 256x256 keeping its aspect, then centre-cropped; bicubic)" in card  # Lite0's own input
    assert "517: crane (2)" in card
