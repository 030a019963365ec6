"""feature-probe: a linear classifier on the teachers' features and outputs, fitted on the labels, is the target."""

from __future__ import annotations

import math

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



class OneStage(torch.nn.Module):
    """A student whose one stage (timm's ``feature_info``) is ``body``: its stage output is ``body(image)``."""

    feature_info = [{"module": "body"}]

    def __init__(self, body: torch.nn.Module, num_classes: int) -> None:
        super().__init__()
        self.body, self.head = body, torch.nn.Linear(2, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images).mean(dim=(2, 3)))


def test_the_students_features_are_read_in_eval_mode_and_it_is_left_training():
    from amalgam.methods.features.probe import student_vectors

    norm = torch.nn.BatchNorm2d(2)
    norm.running_mean.copy_(torch.tensor([1.0, 2.0]))
    norm.running_var.copy_(torch.tensor([4.0, 1.0]))
    student = OneStage(norm, 3).train()
    images = torch.tensor([[3.0, 4.0], [1.0, 0.0]])[:, :, None, None]
    vectors = student_vectors(student, torch.utils.data.TensorDataset(images, torch.zeros(2)))
    # running statistics: (3 - 1) / 2 = 1, (4 - 2) / 1 = 2; (1 - 1) / 2 = 0, (0 - 2) / 1 = -2
    assert torch.allclose(vectors, torch.tensor([[1.0, 2.0], [0.0, -2.0]]), atol=1e-4)
    assert student.training and norm.running_mean.tolist() == [1.0, 2.0]


def test_refit_on_student_makes_the_next_epochs_target_from_the_students_features_where_the_teachers_see_nothing():
    """The teachers see and say the same for every image; the student's stage separates the classes. Until the
    first epoch ends the target is the teachers' probe (one fixed guess); then the probe refitted on 30 labels
    with the student's features gives every transfer image its class, looked up by index; after the last epoch
    nothing is refitted."""
    method = probe_method(refit_on_student=True)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(90) % 3
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    images = (centres[labels] + torch.randn(90, 2, generator=generator))[:, :, None, None]
    teachers = outputs(torch.zeros(90, 2), (torch.zeros(90, 2), torch.zeros(90, 1)))

    def rows(index: torch.Tensor) -> list[TeacherOutput]:
        return [TeacherOutput(o.logits[index], {"f": o.features["f"][index]}) for o in teachers]

    train = torch.arange(30)
    transfer = torch.utils.data.TensorDataset(images, labels)
    method.setup(Setup(labeled=LabeledSet(images[train], labels[train], rows(train), train),
                       transfer_rows=rows, transfer=transfer))
    student = OneStage(torch.nn.Identity(), 3)
    rest = torch.arange(30, 90)

    def target(index: torch.Tensor) -> torch.Tensor:  # the loss is KD at temperature 1 to the target
        step = StepInputs(torch.zeros(len(index), 3), rows(index), labels[index], indices=index)
        kl = method(step)["soft"]
        return kl, method.refit_target[index] if bool(method.refitted) else None

    method.start_epoch(1, 2)
    assert target(rest)[1] is None and method.probe_logits(rows(rest)).argmax(dim=-1).unique().numel() == 1
    record = method.end_epoch(student)
    assert record["refit_train_accuracy"] > 0.95 and bool(method.refitted)
    assert (method.refit_target[rest].argmax(dim=-1) == labels[rest]).float().mean() > 0.95
    # by hand: the loss reads the stored target of each sample's index, whatever the teachers say now
    method.refit_target[5] = torch.tensor([0.5, 0.25, 0.25])
    loss, _ = target(torch.tensor([5]))  # student uniform: KL = sum p log(p / (1/3))
    assert loss.item() == pytest.approx(0.5 * math.log(1.5) + 0.5 * math.log(0.75), rel=1e-5)
    method.start_epoch(2, 2)
    assert method.end_epoch(student) == {}  # the last epoch: no refit, nothing reads it
    assert method.refit_target[5].tolist() == [0.5, 0.25, 0.25]
    with pytest.raises(MethodError, match="needs labels"):
        probe_method(refit_on_student=True, pseudo_labels=True)
    with pytest.raises(MethodError, match="cache_teachers=True"):
        probe_method(refit_on_student=True).setup(Setup(labeled=LabeledSet(images[train], labels[train],
                                                                           rows(train), train)))
