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


def test_resized_shapes_follow_each_rule_by_hand():
    # a 300 x 451 photo: shortest edge to 256 -> 256 x int(256 * 451 / 300) = 256 x 384 (torchvision's Resize(256))
    assert ImageSpec(size=224, resize="short-side", resize_size=256).resized_shape(300, 451) == (256, 384)
    assert ImageSpec(size=224, resize="short-side", resize_size=256).resized_shape(451, 300) == (384, 256)
    # to 256 x 200 keeping the ratio: edge ratios 300/256 = 1.17, 451/200 = 2.26; cover divides by the smaller
    # (256 x round(384.9) = 385), fit by the larger (round(133.0) = 133 x 200)
    assert ImageSpec(size=(256, 200), resize="cover").resized_shape(300, 451) == (256, 385)
    assert ImageSpec(size=(256, 200), resize="fit").resized_shape(300, 451) == (133, 200)
    assert ImageSpec(size=(20, 30)).resized_shape(300, 451) == (20, 30)  # squash: the default


def test_centre_crop_splits_an_odd_margin_as_each_library_does():
    row = torch.arange(5.0).view(1, 1, 1, 5) / 10
    plain = {"channels": 1, "mean": (0.0,), "std": (1.0,)}
    # margin 3: torchvision rounds 1.5 to 2 (Python's round), transformers floors it to 1
    rounded = ImageSpec(size=(1, 2), resize_size=(1, 5), **plain)(row)
    floored = ImageSpec(size=(1, 2), resize_size=(1, 5), crop_offset="floor", **plain)(row)
    assert rounded.flatten().tolist() == pytest.approx([0.2, 0.3]) and floored.flatten().tolist() == pytest.approx(
        [0.1, 0.2])


def test_a_crop_larger_than_the_image_pads_with_the_fill_value():
    spec = ImageSpec(size=(1, 4), resize_size=(1, 2), fill=(0.5,), channels=1, mean=(0.0,), std=(1.0,))
    assert spec(torch.ones(1, 1, 1, 2)).flatten().tolist() == [0.5, 1.0, 1.0, 0.5]


def test_pixel_scale_is_the_processors_rescale():
    # do_rescale=False: the model sees 0..255; 0.5 -> 127.5, then (127.5 - 100) / 2
    spec = ImageSpec.from_transformers_processor({"size": {"height": 1, "width": 1}, "do_rescale": False,
                                                  "image_mean": [100.0], "image_std": [2.0]}, channels=1)
    assert spec(torch.full((1, 1, 1, 1), 0.5)).item() == pytest.approx(13.75)


def test_a_timm_teacher_that_records_a_squash_at_crop_pct_1_gets_the_plain_resize():
    # amalgam's own timm teachers (the zoo's) are trained on a plain resize and say so in their config
    recorded = ImageSpec.from_timm_config({"input_size": (1, 32, 32), "crop_pct": 1.0, "crop_mode": "squash",
                                           "interpolation": "bilinear", "mean": (0.5,), "std": (0.5,)})
    raw = torch.rand(3, 1, 8, 12)
    assert torch.equal(recorded(raw), ImageSpec(size=32, channels=1)(raw))


def test_timm_defaults_are_resolve_data_configs():
    spec = ImageSpec.from_timm_config({"input_size": (3, 224, 224)})  # no crop_pct, crop_mode, interpolation
    assert (spec.resize, spec.resize_size, spec.interpolation) == ("short-side", (256, 256), "bicubic")
    wide = ImageSpec.from_timm_config({"input_size": (3, 224, 320), "crop_pct": 1.0, "crop_mode": "border",
                                       "mean": (0.5, 0.5, 0.5)})
    # border: the longer edge ratio (451 / 320 > 300 / 224) scales 300 x 451 to 213 x 320, padded to 224 x 320
    assert wide.resize == "fit" and wide.resized_shape(300, 451) == (213, 320) and wide.fill == (128 / 255,) * 3
    with pytest.raises(ValueError, match="crop_mode"):
        ImageSpec.from_timm_config({"crop_mode": "zoom"})


def test_a_resized_batch_costs_two_batch_sized_buffers_the_resize_and_the_normalised_view():
    """The view is made in the loader's workers beside the teacher's convolutions, which share the cores and the
    memory bandwidth: clamping the bicubic overshoot and dividing by the std happen in place (before: two more
    buffers of the batch's size per batch)."""
    from torch.profiler import ProfilerActivity, profile

    spec = ImageSpec(size=24, resize="short-side", resize_size=28, interpolation="bicubic", mean=(0.5,) * 3,
                     std=(0.5,) * 3)
    raw = torch.rand(8, 3, 20, 20)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as run:
        out = spec(raw)
    batch_bytes = out.numel() * out.element_size()
    allocating = [e.name for e in run.events() if e.cpu_parent is None and e.cpu_memory_usage >= batch_bytes]
    assert len(allocating) == 2, allocating
    assert 0.0 <= out.mul(0.5).add(0.5).min() and out.mul(0.5).add(0.5).max() <= 1.0 + 1e-6  # still clamped
