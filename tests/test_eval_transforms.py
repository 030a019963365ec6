"""amalgam's input for real models against their own libraries' eval transforms, on photos of different sizes
and aspect ratios: timm's create_transform(**resolve_data_config(...)) for EfficientNet-Lite0 (ImageNet), and
transformers' AutoImageProcessor for ViT-, ConvNeXt- and CLIP-style processors."""

import json

import numpy as np
import pytest
import torch

from amalgam.data.pictures import picture_tensor
from amalgam.teachers import ImageSpec, load_teacher

skimage_data = pytest.importorskip("skimage.data")
Image = pytest.importorskip("PIL.Image")

PHOTOS = {  # name: H x W (x 3)
    "chelsea": lambda: skimage_data.chelsea(),  # 300 x 451, the cat
    "chelsea-portrait": lambda: np.ascontiguousarray(skimage_data.chelsea().transpose(1, 0, 2)),  # 451 x 300
    "coffee": lambda: skimage_data.coffee(),  # 400 x 600
    "rocket": lambda: skimage_data.rocket(),  # 427 x 640
    "astronaut": lambda: skimage_data.astronaut(),  # 512 x 512
    "camera (grey)": lambda: skimage_data.camera(),  # 512 x 512, one channel
}
LOGIT_TOLERANCE = 0.5  # PIL's 8-bit bicubic vs torch's float one; bench/results/preprocessing.md has the values
PIXEL_TOLERANCE = 8 / 255  # in [0, 1] pixel units (transformers resizes 8-bit tensors, amalgam floats)


@pytest.fixture(scope="module")
def lite0(lite0_folder):
    import timm
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    with pytest.warns(UserWarning, match="crane"):  # timm's readable names repeat 'crane'
        teacher = load_teacher(lite0_folder, class_names=ImageNetInfo().label_descriptions())
    reference = timm.create_model(f"local-dir:{lite0_folder}", pretrained=True).eval()
    return teacher, reference, create_transform(**resolve_data_config({}, model=reference))


@pytest.mark.parametrize("photo", PHOTOS)
def test_lite0_sees_what_timms_own_eval_transform_gives_it(lite0, photo):
    teacher, reference, transform = lite0
    image = Image.fromarray(PHOTOS[photo]())
    with torch.no_grad():
        expected = reference(transform(image.convert("RGB"))[None])
        got = teacher(picture_tensor(image)[None]).logits
    assert (got - expected).abs().max().item() < LOGIT_TOLERANCE
    assert got.argmax().item() == expected.argmax().item(), teacher.class_names[got.argmax().item()]


def test_the_cat_stays_the_same_cat(lite0):
    """The measured case: a plain resize to 224 x 224 squashed the cat into an 'Egyptian cat'; timm says 'tiger
    cat' (282), and so does amalgam now."""
    teacher, _, _ = lite0
    with torch.no_grad():
        top = teacher(picture_tensor(skimage_data.chelsea())[None]).logits.argmax().item()
    assert teacher.class_names[top] == "tiger cat"


PROCESSORS = {
    "vit (height/width, bilinear)": lambda t: t.ViTImageProcessor(),
    "vit (bicubic, no normalise, 200x150)": lambda t: t.ViTImageProcessor(
        resample=3, do_normalize=False, size={"height": 200, "width": 150}),
    "convnext (shortest edge 224, crop_pct)": lambda t: t.ConvNextImageProcessor(size={"shortest_edge": 224}),
    "clip (shortest edge, centre crop)": lambda t: t.CLIPImageProcessor(),
}


@pytest.mark.parametrize("processor", PROCESSORS)
def test_transformers_processors_are_reproduced(processor, tmp_path):
    import transformers

    PROCESSORS[processor](transformers).save_pretrained(tmp_path)
    auto = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    spec = ImageSpec.from_transformers_processor(json.loads((tmp_path / "preprocessor_config.json").read_text()))
    for photo, pixels in PHOTOS.items():
        image = Image.fromarray(pixels())
        expected = auto(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        got = spec(picture_tensor(image)[None])
        assert got.shape == expected.shape, photo
        std = torch.tensor(spec.std).view(1, -1, 1, 1) / spec.pixel_scale  # back to [0, 1] units
        assert ((got - expected) * std).abs().max().item() < PIXEL_TOLERANCE, photo


def test_a_transformers_vit_teacher_gets_its_processors_input(tmp_path):
    import transformers

    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3,
                                    id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(tmp_path)
    processor = transformers.ViTImageProcessor(size={"height": 64, "width": 64})
    processor.save_pretrained(tmp_path)
    teacher = load_teacher(tmp_path)
    for photo, pixels in PHOTOS.items():
        image = Image.fromarray(pixels())
        with torch.no_grad():
            expected = model(**processor(images=image.convert("RGB"), return_tensors="pt")).logits
            got = teacher(picture_tensor(image)[None]).logits
        assert (got - expected).abs().max().item() < LOGIT_TOLERANCE / 5, photo
