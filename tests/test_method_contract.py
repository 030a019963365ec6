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
    run = Pipeline(teachers, space, method, student, transfer, torch.utils.data.Subset(test, range(16)),
                   np.arange(16), TrainConfig(epochs=1, batch_size=32), Knowledge(knowledge_cache=False))
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
