"""Soft targets and the shared loss blocks, against values computed by hand."""

import math

import pytest
import torch

from amalgam.errors import MethodError
from amalgam.methods import StepInputs, available_methods, create_method
from amalgam.methods.losses import kd_loss, masked_cross_entropy
from amalgam.teachers.placement import place_probabilities
from amalgam.teachers import LabelSpace, TeacherOutput
from tiny import tiny_teachers


def teachers_for(*class_lists):
    return tiny_teachers(*class_lists)


def test_soft_target_loss_two_overlapping_teachers_three_classes():
    # Teacher A knows [a, b], teacher B knows [b, c]; tau = 1, equal weights.
    space = LabelSpace.union([["a", "b"], ["b", "c"]])
    method = create_method("soft-targets", space, teachers_for(["a", "b"], ["b", "c"]),
                           {"temperature": 1.0, "label_weight": 0.0})
    # A: logits [0, 0] -> [1/2, 1/2] on (a, b).  B: logits [ln 3, 0] -> [3/4, 1/4] on (b, c).
    outputs = [TeacherOutput(torch.tensor([[0.0, 0.0]])), TeacherOutput(torch.tensor([[math.log(3.0), 0.0]]))]
    # Mean in the union (a, b, c): [1/4, (1/2 + 3/4)/2, 1/8] = [0.25, 0.625, 0.125].
    target = method.target([o.logits for o in outputs])
    assert torch.allclose(target, torch.tensor([[0.25, 0.625, 0.125]]))
    # Student logits 0 -> q = 1/3 each; KL(p || q) = sum p ln(3p).
    expected = 0.25 * math.log(0.75) + 0.625 * math.log(1.875) + 0.125 * math.log(0.375)
    losses = method(StepInputs(torch.zeros(1, 3), outputs, torch.tensor([-1])))
    assert set(losses) == {"soft"}
    assert losses["soft"].item() == pytest.approx(expected, rel=1e-6)


def test_temperature_weights_and_label_term():
    space = LabelSpace.union([["a", "b"], ["c"]])
    method = create_method("soft-targets", space, teachers_for(["a", "b"], ["c"]),
                           {"temperature": 2.0, "weights": [3.0, 1.0]})
    outputs = [TeacherOutput(torch.tensor([[2.0, 0.0]])), TeacherOutput(torch.tensor([[5.0]]))]
    # tau = 2: A -> softmax([1, 0]) = [e/(e+1), 1/(e+1)]; B -> [1]; weights normalised to [3/4, 1/4].
    e = math.e
    p = torch.tensor([[0.75 * e / (e + 1), 0.75 / (e + 1), 0.25]])
    assert torch.allclose(method.target([o.logits for o in outputs]), p)
    student = torch.tensor([[1.0, 0.0, -1.0]])
    q = torch.softmax(student / 2.0, dim=-1)
    expected_soft = 4.0 * float((p * (p / q).log()).sum())  # tau^2 * KL
    expected_ce = -float(torch.log_softmax(student, dim=-1)[0, 2])  # label 2 ('c'), tau = 1
    losses = method(StepInputs(student, outputs, torch.tensor([2])))
    assert losses["soft"].item() == pytest.approx(expected_soft, rel=1e-5)
    assert losses["labels"].item() == pytest.approx(expected_ce, rel=1e-5)


def test_kd_loss_is_zero_at_the_target_and_handles_zero_probabilities():
    target = torch.tensor([[0.0, 0.25, 0.75]])
    logits = torch.log(torch.tensor([[1e-30, 0.25, 0.75]]))
    assert kd_loss(logits, target, temperature=1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(kd_loss(torch.zeros(1, 3), target, temperature=4.0))


def test_place_probabilities_with_per_sample_weights():
    probs = [torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([[1.0], [1.0]])]
    indices = [torch.tensor([0, 1]), torch.tensor([1])]
    out = place_probabilities(probs, indices, torch.tensor([[0.5, 0.5], [1.0, 0.0]]), 2)
    assert torch.allclose(out, torch.tensor([[0.5, 0.5], [0.5, 0.5]]))


def test_masked_cross_entropy_ignores_unlabeled_rows():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]], requires_grad=True)
    assert masked_cross_entropy(logits, torch.tensor([-1, -1])).item() == 0.0
    assert masked_cross_entropy(logits, torch.tensor([0, -1])).item() == pytest.approx(math.log(2.0))


def test_registry_errors_name_the_problem():
    space = LabelSpace.union([["a"], ["b"]])
    teachers = teachers_for(["a"], ["b"])
    assert {"soft-targets", "supervised"} <= set(available_methods())
    with pytest.raises(MethodError, match="unknown method 'soft-target'; available methods: .*soft-targets"):
        create_method("soft-target", space, teachers)
    with pytest.raises(MethodError, match="has no option\\(s\\) \\['temprature'\\].*temperature=4.0"):
        create_method("soft-targets", space, teachers, {"temprature": 2.0})
    with pytest.raises(MethodError, match="weights needs 2 non-negative values"):
        create_method("soft-targets", space, teachers, {"weights": [1.0]})


def test_concatenated_logits_target_lets_a_confident_wrong_teacher_win():
    # Teacher A knows [a, b] and is confidently wrong (logits [6, 0]); B knows [c] (logit 2): one softmax.
    space = LabelSpace.union([["a", "b"], ["c"]])
    method = create_method("concat-logits", space, teachers_for(["a", "b"], ["c"]),
                           {"temperature": 1.0, "label_weight": 0.0})
    target = method.target([torch.tensor([[6.0, 0.0]]), torch.tensor([[2.0]])])
    z = torch.tensor([6.0, 0.0, 2.0])
    expected = z.exp() / z.exp().sum()  # [e^6, 1, e^2] / (e^6 + 1 + e^2)
    assert torch.allclose(target, expected[None])
    assert int(target.argmax()) == 0
    # overlapping class: mean of the two teachers' logits for it
    space = LabelSpace.union([["a", "b"], ["b", "c"]])
    method = create_method("concat-logits", space, teachers_for(["a", "b"], ["b", "c"]), {"temperature": 2.0})
    target = method.target([torch.tensor([[0.0, 2.0]]), torch.tensor([[4.0, 0.0]])])
    z = torch.tensor([0.0, 3.0, 0.0]) / 2.0
    assert torch.allclose(target, (z.exp() / z.exp().sum())[None])
