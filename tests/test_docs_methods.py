"""The two example methods of docs/writing-a-method.md, run from the page itself: the logit method's loss by
hand, and each method training one step through the pipeline (so the page cannot drift from the interface)."""

from __future__ import annotations

import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from amalgam.config import TrainConfig
from amalgam.methods import StepInputs, available_methods, create_method
from amalgam.pipeline import Knowledge, Pipeline
from amalgam.teachers import LabelSpace, TeacherOutput
from demo_methods import demo_setup, demo_student

PAGE = Path(__file__).resolve().parents[1] / "docs" / "writing-a-method.md"


@pytest.fixture(scope="module")
def examples() -> dict:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 2
    namespaces = []
    for i, code in enumerate(blocks):
        module = types.ModuleType(f"docs_example_{i}")  # a real module, as dataclasses look their module up
        sys.modules[module.__name__] = module
        exec(compile(code, str(PAGE), "exec"), module.__dict__)  # registers the method
        namespaces.append(module.__dict__)
    return {"logit": namespaces[0], "feature": namespaces[1]}


def test_the_logit_example_distils_the_surest_teacher_by_hand(examples):
    space = LabelSpace.union([["a", "b"], ["b", "c"]])

    class Fake:
        def __init__(self, name):
            self.name = name

    method = examples["logit"]["SurestTeacher"](space, [Fake("t0"), Fake("t1")], temperature=1.0)
    # sample 0: teacher 0 is surer (0.88 vs 0.5): target (0.88, 0.12, 0); sample 1: teacher 1 (0.88 on c)
    z0, z1 = torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    student = torch.zeros(2, 3)
    terms = method(StepInputs(student, [TeacherOutput(z0), TeacherOutput(z1)], torch.tensor([-1, -1])))
    p = torch.tensor(2.0).exp() / (1 + torch.tensor(2.0).exp())
    per_sample = p * torch.log(p * 3) + (1 - p) * torch.log((1 - p) * 3)  # KL(target || uniform over 3)
    assert terms["soft"].item() == pytest.approx(per_sample.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["surest-teacher", "deepest-hint"])
def test_each_example_is_registered_and_trains_one_step(examples, name, demo_zoo):
    assert name in available_methods("custom")
    teachers, space, transfer, test = demo_setup(demo_zoo, samples=32)
    torch.manual_seed(0)
    method = create_method(name, space, teachers)
    student = demo_student(space, method)
    run = Pipeline(teachers, space, method, student, transfer, test, np.array([], dtype=int),
                   TrainConfig(epochs=2, batch_size=16), Knowledge(knowledge_cache=False))
    history = run.fit(progress=False, test_each_epoch=False)
    assert all(math.isfinite(r["loss"]) for r in history)
    if name == "deepest-hint":
        assert history[-1]["hint"] < history[0]["hint"]  # the adapter sized in setup learns the teacher's feature
