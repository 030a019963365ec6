"""ImageSpec: each model's own channels, size and normalisation from one raw batch."""

import pytest
import torch

from amalgam.teachers import ImageSpec


def test_grey_to_rgb_normalises_each_channel():
    spec = ImageSpec(size=(2, 2), channels=3, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    raw = torch.full((1, 1, 2, 2), 0.75)
    out = spec(raw)
    assert out.shape == (1, 3, 2, 2)
    # (0.75 - 0.5) / 0.5 = 0.5; (0.75 - 0.25) / 0.25 = 2; (0.75 - 0) / 1 = 0.75
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.5, 2.0, 0.75]))


def test_rgb_to_grey_uses_luma_weights():
    spec = ImageSpec(size=(1, 1), channels=1, mean=(0.0,), std=(1.0,))
    raw = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert spec(raw).item() == pytest.approx(0.299)


def test_resize_keeps_a_constant_image_constant():
    spec = ImageSpec(size=(16, 12), channels=1, mean=(0.0,), std=(1.0,))
    out = spec(torch.full((2, 1, 8, 8), 0.3))
    assert out.shape == (2, 1, 16, 12)
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"channels": 2}, {"std": (0.0,)}, {"mean": (0.1, 0.2)}])
def test_bad_spec_is_rejected(kwargs):
    with pytest.raises(ValueError):
        ImageSpec(size=8, **kwargs)


def test_bad_batch_shape_is_rejected():
    with pytest.raises(ValueError, match="B x 1\\|3 x H x W"):
        ImageSpec(size=8)(torch.zeros(8, 8))


def test_spec_from_transformers_processor():
    spec = ImageSpec.from_transformers_processor(
        {"size": {"height": 16, "width": 20}, "image_mean": [0.1, 0.2, 0.3], "image_std": [1, 2, 3]}
    )
    assert spec.size == (16, 20) and spec.mean == (0.1, 0.2, 0.3) and spec.std == (1.0, 2.0, 3.0)
    assert ImageSpec.from_transformers_processor({"size": {"shortest_edge": 24}, "do_normalize": False}).mean == (0.0,)
