"""The contract every registered method keeps, checked for each one (a method registered later is covered here
without a test file of its own): built with its defaults on the demo teachers, it declares its needs as data,
trains one optimizer step through the pipeline, and its student saves and reloads to the same outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from amalgam.config import TrainConfig
from amalgam.methods import Needs, available_methods, create_method
from amalgam.pipeline import Knowledge, Pipeline
from amalgam.students import Student
from amalgam.teachers import LabelSpace
from demo_methods import demo_setup, demo_student


@pytest.fixture(scope="module")
def setup(demo_zoo):
    return demo_setup(demo_zoo, samples=32)


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_every_method_trains_one_step_and_its_student_saves_and_reloads(name, setup, tmp_path):
    teachers, space, transfer, test = setup
    torch.manual_seed(0)
    method = create_method(name, space, teachers)
    needs = method.needs()
    assert isinstance(needs, Needs) and needs.teacher_signals in ("outputs", "live", "none")
    student = demo_student(space, method)
    before = [p.detach().clone() for p in student.parameters()]
    # logits stay in memory; a label-free method that reads features fits on the whole transfer set's, which only
    # the knowledge cache (the default) keeps
    cache = tmp_path / "cache" if needs.label_free and any(needs.taps_per_teacher(len(teachers))) else False
    run = Pipeline(teachers, space, method, student, transfer, torch.utils.data.Subset(test, range(16)),
                   np.arange(16), TrainConfig(epochs=1, batch_size=32), Knowledge(knowledge_cache=cache))
    history = run.fit(progress=False, test_each_epoch=False)

    assert len(history) == 1 and math.isfinite(history[0]["loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, student.parameters())), "one step moved no weight"
    student.save_pretrained(tmp_path / "student")
    again = Student.from_pretrained(tmp_path / "student").eval()
    images = torch.rand(2, 1, 32, 32)
    student.eval()
    with torch.no_grad():
        mine, theirs = student(images), again(images)
    if isinstance(mine, dict):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    else:
        assert torch.equal(mine, theirs)


def test_the_registry_checks_options_against_the_dataclass_and_lists_allowed_values():
    from amalgam.errors import MethodError
    from amalgam.methods import method_choices, method_options

    space = LabelSpace.union([["a", "b"]])
    with pytest.raises(MethodError, match=r"has no option\(s\) \['temprature'\]; its options are temperature=4.0"):
        create_method("soft-targets", space, [_Named("t")], {"temprature": 2.0})
    with pytest.raises(MethodError, match=r"soft-targets: target must be one of \('soft', 'hard'\), got 'x'"):
        create_method("soft-targets", space, [_Named("t")], {"target": "x"})
    assert method_choices("trust-learner")["trust_norm"] == ("softmax", "sigmoid")
    # a variant inherits its family's options instead of retyping them
    assert set(method_options("soft-targets")) <= set(method_options("feed"))
    assert set(method_options("soft-targets")) <= set(method_options("wsl"))


def test_methods_are_listed_by_family_and_re_registering_warns_and_replaces():
    from amalgam.methods import Method, method_family, register_method
    from amalgam.methods.registry import _METHODS

    built_in = [cls for cls in available_methods().values() if cls.__module__.startswith("amalgam.")]
    assert {method_family(cls) for cls in built_in} == {"targets", "features", "heads"}
    assert "feed" in available_methods("features") and "hydra" in available_methods("heads")
    assert "feed" not in available_methods("targets")

    class First(Method):
        name = "test-twice"

    class Second(Method):
        name = "test-twice"

    try:
        register_method(First)
        with pytest.warns(UserWarning, match="'test-twice' was registered already"):
            register_method(Second)
        assert available_methods("custom")["test-twice"] is Second
    finally:
        _METHODS.pop("test-twice", None)


def test_needs_follow_the_options_per_instance(setup):
    teachers, space = setup[:2]
    plain = create_method("attention-transfer", space, teachers)
    scratch = create_method("attention-transfer", space, teachers, {"scratch_teacher": True})
    assert not plain.needs().labels and scratch.needs().labels
    assert create_method("ods", space, teachers).needs().teacher_signals == "live"
    assert create_method("supervised", space, teachers).needs().teacher_signals == "none"
    assert create_method("confidence-trust", space, teachers).needs().label_free


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name
