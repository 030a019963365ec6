"""Pictures in every form users hand them over: PIL modes, arrays, files, tensors; and Student.predict on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from amalgam.data.pictures import picture_tensor
from amalgam.errors import DataError
from amalgam.students import Student

RGB = (np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4)


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("1", 1), ("RGB", 3), ("RGBA", 3), ("P", 3), ("CMYK", 3),
                                                 ("LA", 1)])
def test_every_pil_mode_becomes_grey_or_rgb_in_0_1(mode, channels):
    image = Image.fromarray(RGB).convert(mode)
    tensor = picture_tensor(image)
    assert tensor.shape == (channels, 4, 5) and tensor.dtype == torch.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    if mode == "RGBA":
        assert torch.allclose(tensor, torch.from_numpy(RGB).permute(2, 0, 1).float() / 255)  # alpha dropped


def test_sixteen_bit_keeps_its_levels(tmp_path):
    levels = np.array([[0, 1, 256, 65535]], dtype=np.uint16)  # 1 and 256 would merge into 0 and 1 at 8 bits
    Image.fromarray(levels).save(tmp_path / "deep.png")
    tensor = picture_tensor(tmp_path / "deep.png")
    assert tensor.shape == (1, 1, 4)
    assert torch.allclose(tensor[0, 0], torch.tensor([0, 1, 256, 65535]) / 65535.0)


def test_a_palette_of_greys_stays_grey():
    grey = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20).convert("P")
    assert picture_tensor(grey).shape == (1, 3, 4)


def test_bad_pictures_say_what_was_expected(tmp_path):
    (tmp_path / "notes.png").write_text("words")
    with pytest.raises(DataError, match="notes.png' cannot be read as an image"):
        picture_tensor(tmp_path / "notes.png")
    with pytest.raises(DataError, match="H x W x C"):
        picture_tensor(np.zeros((2, 2, 7), dtype=np.uint8))
    with pytest.raises(DataError, match="cannot read a picture from a dict"):
        picture_tensor({})


def test_student_predict_takes_any_form_of_picture_and_agrees(tmp_path):
    torch.manual_seed(0)
    student = Student("test_efficientnet", class_names=["a", "b", "c"], input_size=32, channels=3)
    Image.fromarray(RGB).save(tmp_path / "p.png")
    batch = torch.from_numpy(RGB).permute(2, 0, 1)[None].float() / 255
    expected = student.predict(batch, top_k=3)[0]
    for form in (Image.fromarray(RGB), RGB, tmp_path / "p.png", str(tmp_path / "p.png"), batch[0]):
        (got,) = student.predict(form, top_k=3)
        assert [name for name, _ in got] == [name for name, _ in expected]
        assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=1e-6)
    mixed = student.predict([RGB, np.zeros((40, 30), dtype=np.uint8)], top_k=1)  # different sizes and channels
    assert len(mixed) == 2


def test_float_pixels_are_clipped_to_0_1_and_integer_pixels_are_exact_levels():
    floats = picture_tensor(np.array([[-0.5, 0.25, 2.0]], dtype=np.float32))
    assert floats.tolist() == [[[0.0, 0.25, 1.0]]]
    levels = picture_tensor(np.array([[0, 51, 255]], dtype=np.uint8))
    assert levels.tolist() == [[[0.0, np.float32(51) / np.float32(255), 1.0]]]
