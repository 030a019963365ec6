"""The union label space: names decide, mappings rename or merge, conflicts fail loudly."""

import pytest
import torch

from amalgam.errors import LabelSpaceError
from amalgam.teachers import LabelSpace
from amalgam.teachers.label_space import distinct_class_names


def test_overlapping_teachers_share_classes_by_normalised_name():
    space = LabelSpace.union([["Ankle_boot", "Bag", "Coat"], ["coat", "ankle boot", "Dress"]])
    assert space.class_names == ("Ankle_boot", "Bag", "Coat", "Dress")
    assert space.teacher_indices == ((0, 1, 2), (2, 0, 3))
    assert space.overlaps() == {"Ankle_boot": [0, 1], "Coat": [0, 1]}
    assert space.index_of("ANKLE-BOOT") == 0 and space.index_of("Sneaker") is None
    assert torch.equal(space.membership(), torch.tensor([[1.0, 1, 1, 0], [1, 0, 1, 1]]))


def test_disjoint_teachers_concatenate_in_order():
    space = LabelSpace.union([["0", "1"], ["2", "3", "4"]])
    assert space.num_classes == 5 and space.teacher_indices == ((0, 1), (2, 3, 4))


def test_mapping_merges_differently_named_classes():
    space = LabelSpace.union([["tee", "trouser"], ["T-shirt/top", "bag"]], mapping={"tee": "T-shirt/top"})
    assert space.class_names == ("T-shirt/top", "trouser", "bag")
    assert space.teacher_indices == ((0, 1), (0, 2))


def test_per_teacher_mapping_renames_one_teacher_only():
    with pytest.warns(UserWarning, match=r"class 'cat', which several teachers share, became .*\['cat', 'lion'\]"):
        space = LabelSpace.union([["cat", "dog"], ["cat", "kitty"]], mapping=[None, {"cat": "lion", "kitty": "cat"}])
    assert space.class_names == ("cat", "dog", "lion")
    assert space.teacher_indices == ((0, 1), (2, 0))


def test_conflicting_mapping_is_an_error():
    with pytest.raises(LabelSpaceError, match="maps 'Cat' to 'dog'"):
        LabelSpace.union([["cat"]], mapping={"cat": "feline", "Cat": "dog"})


def test_mapping_two_classes_of_one_teacher_together_is_an_error():
    with pytest.raises(LabelSpaceError, match="would both become union class 'pet'"):
        LabelSpace.union([["cat", "dog"]], mapping={"cat": "pet", "dog": "pet"})


def test_mapping_a_class_nobody_has_is_an_error():
    with pytest.raises(LabelSpaceError, match="no teacher has: \\['catt'\\]"):
        LabelSpace.union([["cat"], ["dog"]], mapping={"catt": "feline"})
    with pytest.raises(LabelSpaceError, match="teacher 1 names classes it does not have"):
        LabelSpace.union([["cat"], ["dog"]], mapping=[None, {"cat": "feline"}])
    with pytest.raises(LabelSpaceError, match="one entry per teacher"):
        LabelSpace.union([["cat"], ["dog"]], mapping=[{"cat": "feline"}])


def test_duplicate_names_within_one_teacher_are_an_error():
    with pytest.raises(LabelSpaceError, match="would both become"):
        LabelSpace.union([["Cat", "cat"]])


def test_repeated_names_of_one_teacher_are_kept_apart_by_a_documented_rule():
    assert distinct_class_names(["crane", "tabby", "crane"]) == ["crane", "tabby", "crane (2)"]
    assert distinct_class_names(["a", "a (2)", "a"]) == ["a", "a (2)", "a (3)"]  # never onto a real name


def test_a_per_teacher_mapping_can_address_a_class_by_index():
    space = LabelSpace.union([["crane", "tabby", "crane (2)"], ["crane"]], [{"#2": "crane (machine)"}, None])
    assert space.class_names == ("crane", "tabby", "crane (machine)") and space.teacher_indices[1] == (0,)
    with pytest.raises(LabelSpaceError, match="teacher 0 names classes it does not have: \\['#7'\\]"):
        LabelSpace.union([["a", "b"]], [{"#7": "z"}])
    with pytest.raises(LabelSpaceError, match="address a class by index.*one mapping per teacher"):
        LabelSpace.union([["a", "b"]], {"#1": "z"})
