"""feature-probe: a linear classifier on the teachers' features and outputs, fitted on the labels, is the target."""

from __future__ import annotations

import pytest
import torch

from amalgam.errors import MethodError
from amalgam.methods import LabeledSet, StepInputs, create_method
from amalgam.methods.base import Setup
from amalgam.teachers import LabelSpace, TeacherOutput
from tiny import tiny_teachers

SPACE = LabelSpace.union([["a", "b"], ["c"]])


def probe_method(**options):
    teachers = tiny_teachers(["a", "b"], ["c"])
    return create_method("feature-probe", SPACE, teachers, {"teacher_taps": ["f", "f"], **options})


def outputs(features: torch.Tensor, logits: tuple[torch.Tensor, torch.Tensor]) -> list[TeacherOutput]:
    """Two teachers that both 'see' ``features`` (a 1 x 1 map per sample) and say ``logits``."""
    return [TeacherOutput(z, {"f": features[:, :, None, None]}) for z in logits]


def test_the_target_is_the_probes_softmax_and_the_loss_is_kd_towards_it_by_hand():
    method = probe_method(temperature=2.0)
    # a hand-set probe: inputs [f_0, f_1 (teacher 0), f_0, f_1 (teacher 1), p_a, p_b, p_c]; logits = 2 * f_0 for a
    method.probe = torch.nn.Linear(7, 3, bias=False)
    method.probe.weight.data = torch.zeros(3, 7)
    method.probe.weight.data[0, 0] = 2.0
    method.input_mean, method.input_std = torch.zeros(7), torch.ones(7)
    batch = outputs(torch.tensor([[1.0, 5.0]]), (torch.zeros(1, 2), torch.zeros(1, 1)))
    student = torch.tensor([[0.0, 0.0, 0.0]])
    loss = method(StepInputs(student, batch, torch.tensor([-1])))["soft"]
    # probe logits (2, 0, 0) / tau 2 -> p = softmax(1, 0, 0) = (e, 1, 1) / (e + 2); the student's softmax is uniform
    p = torch.tensor([torch.e, 1.0, 1.0]) / (torch.e + 2)
    by_hand = 4.0 * (p * (p / (1 / 3)).log()).sum()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_fitted_on_labels_it_reads_classes_from_features_that_no_teachers_answer_carries():
    """Every teacher says the same thing for every sample (any weighting of their answers is one fixed guess),
    but what they see separates the classes: the probe learns them from 30 labels."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(90) % 3
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    features = centres[labels] + torch.randn(90, 2, generator=generator)
    flat = (torch.zeros(90, 2), torch.zeros(90, 1))
    method = probe_method()
    train = torch.arange(30)
    method.setup(Setup(labeled=LabeledSet(torch.zeros(30, 1, 4, 4), labels[train],
                                          outputs(features[train], (flat[0][train], flat[1][train])), train)))
    predicted = method.probe_logits(outputs(features[30:], (flat[0][30:], flat[1][30:]))).argmax(dim=-1)
    assert (predicted == labels[30:]).float().mean() > 0.95
    assert not any(p.requires_grad for p in method.probe.parameters())  # frozen once fitted
    assert method.combined_target([z[:2] for z in flat], torch.zeros(2, 1, 4, 4)) is None  # reads features


def test_it_needs_labels_and_a_tap_per_teacher():
    with pytest.raises(MethodError, match="labeled_fraction > 0"):
        probe_method().setup(Setup(labeled=None))
    with pytest.raises(MethodError, match="one tap per teacher"):
        create_method("feature-probe", SPACE, tiny_teachers(["a", "b"], ["c"]), {"teacher_taps": ["f"]})
    method = create_method("feature-probe", SPACE, tiny_teachers(["a", "b"], ["c"]))
    assert method.needs().labels and len(method.needs().teacher_taps) == 2


def test_without_labels_it_fits_on_the_confident_pseudo_labels_and_outgrows_the_target_they_came_from():
    """A quarter of the images mislead: the teacher that knows the class is unsure, the other sure of a wrong
    one, so confidence-trust's target is wrong there (0.75 right). Those are in its less confident half, so the
    probe is fitted on the rest, and from the features, which separate the classes, it gets them right."""
    space = LabelSpace.union([["a", "b"], ["c", "d"]])
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(160) % 4
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, 0.0], [0.0, -4.0]])
    features = centres[labels] + torch.randn(160, 2, generator=generator)
    misleading = torch.arange(160) % 16 >= 12  # a quarter, of every class
    logits = [torch.zeros(160, 2), torch.zeros(160, 2)]
    for n, y in enumerate(labels.tolist()):
        owner, own_class = divmod(y, 2)
        sure, unsure = (3.0, 0.2) if misleading[n] else (4.0, 0.5)
        logits[owner][n, own_class] = unsure if misleading[n] else sure
        logits[1 - owner][n, 0] = sure if misleading[n] else unsure  # the other teacher: its class 0
    torch.manual_seed(0)
    method = create_method("feature-probe", space, tiny_teachers(["a", "b"], ["c", "d"]),
                           {"teacher_taps": ["f", "f"], "pseudo_labels": True})
    assert method.needs().label_free and not method.needs().labels
    method.setup(Setup(transfer_logits=logits, transfer_rows=lambda rows: outputs(features[rows],
                                                                                   (logits[0][rows], logits[1][rows]))))
    target = method.pseudo_labeler.target(logits, temperature=1.0).argmax(dim=-1)
    assert (target == labels).float().mean() == pytest.approx(0.75) and not (target == labels)[misleading].any()
    predicted = method.probe_logits(outputs(features, tuple(logits))).argmax(dim=-1)
    # it also reads the (misleading) probabilities, so not every one: 0.85 here, where its target has none
    assert (predicted[misleading] == labels[misleading]).float().mean() > 0.8
    with pytest.raises(MethodError, match="cache_teachers=True"):
        method.setup(Setup(transfer_logits=logits))


def test_a_run_without_labels_fits_the_probe_on_the_cached_features_of_the_whole_transfer_set(demo_zoo, tmp_path):
    import numpy as np

    from amalgam.config import TrainConfig
    from amalgam.pipeline import Knowledge, Pipeline
    from demo_methods import demo_setup, demo_student

    teachers, space, transfer, test = demo_setup(demo_zoo, samples=96)
    torch.manual_seed(0)
    method = create_method("feature-probe", space, teachers, {"pseudo_labels": True})
    run = Pipeline(teachers, space, method, demo_student(space, method), transfer,
                   torch.utils.data.Subset(test, range(16)), np.arange(0), TrainConfig(epochs=1, batch_size=32),
                   Knowledge(knowledge_cache=tmp_path / "cache"))
    run.fit(progress=False, test_each_epoch=False)
    # fitted, with no label, from the engine's cached rows: its classes agree with the digits' own labels
    predicted = method.probe_logits(run.signals.rows(torch.arange(len(transfer)))).argmax(dim=-1)
    labels = torch.tensor([transfer[i][1] for i in range(len(transfer))])
    assert (predicted == labels).float().mean() > 0.8
