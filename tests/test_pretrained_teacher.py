"""A real pretrained model nobody here trained: EfficientNet-Lite0 (ImageNet) from PyPI, as a timm teacher folder
(the conftest fixture ``lite0_folder``)."""

import numpy as np
import pytest
import torch

from amalgam.teachers import load_teacher

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_lite0_teacher_labels_the_cat_photo_a_cat(lite0_folder):
    skimage_data = pytest.importorskip("skimage.data")
    teacher = load_teacher(lite0_folder)
    assert len(teacher.class_names) == 1000 and teacher.input_spec.size == (224, 224)
    photo = torch.from_numpy(np.ascontiguousarray(skimage_data.chelsea())).permute(2, 0, 1)[None].float() / 255
    probs = teacher(photo).logits.softmax(-1)[0]
    top = int(probs.argmax())
    assert top in CAT_CLASSES, teacher.class_names[top]
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.5


def test_imagenet_names_with_a_repeat_are_kept_apart_and_addressable_by_index(lite0_folder):
    from amalgam.pipeline import Pipeline
    from amalgam.teachers import LabelSpace
    from tests.tiny import tiny_teacher

    from timm.data import ImageNetInfo

    names = ImageNetInfo().label_descriptions()  # the readable names: 'crane' is a bird (134) and a machine (517)
    with pytest.warns(UserWarning, match=r"#517 'crane' -> 'crane \(2\)'"):
        teacher = load_teacher(lite0_folder, class_names=names)
    assert teacher.class_names[134] == "crane" and teacher.class_names[517] == "crane (2)"
    assert len(set(teacher.class_names)) == 1000
    birds = ["crane", "goose"]  # a second teacher's crane is the bird: the same class as ImageNet's 134
    space = LabelSpace.union([teacher.class_names, birds], [{"#517": "crane (machine)"}, None])
    assert space.class_names[517] == "crane (machine)" and space.teacher_indices[1] == (134, 99)
    digits = tiny_teacher([str(d) for d in range(10)])
    with pytest.warns(UserWarning, match="teacher 'lite0.*' knows none of the data's classes"):
        run = Pipeline.plan([teacher, digits], data="digits")  # fails on a repeated name without the rule
    assert run.label_space.num_classes == 1010 and run.excluded_test_samples == 0
