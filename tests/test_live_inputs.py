"""Live teachers' inputs made in the DataLoader's workers (amalgam.knowledge.inputs) rather than in the step."""

from __future__ import annotations

import pytest
import torch

import amalgam
from amalgam.config import TrainConfig
from amalgam.data import load_data
from amalgam.data.augment import Augmentation, TransferViews, ViewSampler
from amalgam.engine.trainer import transfer_loader
from amalgam.teachers import load_teacher


def test_each_training_batch_carries_its_views_in_every_teachers_input(demo_zoo):
    teachers = [load_teacher(folder) for folder in demo_zoo]
    views = TransferViews(load_data("digits").train, Augmentation.parse("crop,flip"), seed=1)
    sampler = ViewSampler(views, torch.Generator().manual_seed(1), seed=1)
    config = TrainConfig(batch_size=16, num_workers=1)
    loader = transfer_loader(views, sampler, config, torch.device("cpu"), [t.input_spec for t in teachers])
    images, *_, prepared = next(iter(loader))
    assert len(prepared) == len(teachers)
    for teacher, inputs in zip(teachers, prepared):
        assert torch.equal(inputs, teacher.input_spec(images))  # the view the teacher would make of the batch


@pytest.mark.parametrize("method", ["soft-targets", "attention-transfer"])  # outputs; outputs and feature taps
def test_teacher_inputs_made_in_the_workers_train_the_same_student_as_inputs_made_in_the_step(demo_zoo, method):
    options = dict(data="digits", method=method, epochs=1, labeled_fraction=0.1, augment="crop,flip",
                   augment_views=2, seed=5, cache_teachers=False, progress=False)
    in_workers = amalgam.amalgamate(demo_zoo, num_workers=1, **options)
    in_step = amalgam.amalgamate(demo_zoo, num_workers=0, **options)
    assert in_workers.metrics["history"][0]["loss"] == pytest.approx(in_step.metrics["history"][0]["loss"], rel=1e-6)
    for a, b in zip(in_workers.student.state_dict().values(), in_step.student.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
