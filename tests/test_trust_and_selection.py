"""Selective learning and the teacher trust learner: hand-computed cases, and a trust model fitted on real data."""

import math

import numpy as np
import pytest
import torch

from amalgam.data import load_digits
from amalgam.errors import MethodError
from amalgam.methods import LabeledSet, StepInputs, create_method
from amalgam.methods.base import Setup
from amalgam.methods.losses import entropy, least_entropy_teacher
from amalgam.teachers.placement import place_probabilities
from amalgam.methods.targets.trust import trust_weights
from amalgam.teachers import LabelSpace, TeacherOutput, load_teacher
from tiny import tiny_teacher

# SKA's SyntheticControl example: T1 knows {A, B, C, D}, T2 knows {C, D, E, F}.
SKA_SPACE = LabelSpace.union([["A", "B", "C", "D"], ["C", "D", "E", "F"]])


def ska_target(p1, p2, trust):
    indices = [SKA_SPACE.index_tensor(0), SKA_SPACE.index_tensor(1)]
    return place_probabilities([torch.tensor([p1]), torch.tensor([p2])], indices, torch.tensor([trust]), 6)[0]


def test_ska_reference_case_class_e_only_t2_is_an_expert():
    # T1 is confidently wrong (C), T2 right (E). The trust [.27, .73] is what the official softmax(sigmoid(.))
    # gives for a trust model sure that only T2 knows the class.
    trust = trust_weights(torch.tensor([[-30.0, 30.0]]), "softmax")[0]
    assert trust.tolist() == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)])  # [.269, .731]
    target = ska_target([0, 0, .99, 0], [0, 0, .99, 0], trust.tolist())
    assert target.tolist() == pytest.approx([0, 0, .2662, 0, .7238, 0], abs=5e-4)  # README: [0,0,.27,0,.72,0]


def test_ska_reference_case_class_d_both_correct():
    target = ska_target([0, 0, 0, .99], [0, .99, 0, 0], [.5, .5])
    assert target.tolist() == pytest.approx([0, 0, 0, .99, 0, 0])


def test_ska_reference_case_class_a_t2_wrong_and_unsure():
    target = ska_target([.99, 0, 0, 0], [.63, .02, 0, .34], [.72, .28])
    assert target.tolist() == pytest.approx([.7128, 0, .1764, .0056, 0, .0952], abs=1e-4)  # README ≈ [.71,0,.18,.01,0,.10]


def test_entropy_selector_on_hand_made_distributions():
    confident = torch.log(torch.tensor([[0.9, 0.05, 0.05]]))
    unsure = torch.log(torch.tensor([[0.5, 0.5]]))
    assert least_entropy_teacher([unsure, confident]).tolist() == [1]
    # 3 classes at 0.8/0.1/0.1 (H = 0.639) against 2 classes at 0.75/0.25 (H = 0.562): raw entropy picks the
    # two-class teacher; divided by log C (0.582 vs 0.811) the three-class one.
    three = torch.log(torch.tensor([[0.8, 0.1, 0.1]]))
    two = torch.log(torch.tensor([[0.75, 0.25]]))
    assert entropy(three.exp()).item() == pytest.approx(-(0.8 * math.log(0.8) + 0.2 * math.log(0.1)))
    assert least_entropy_teacher([three, two]).tolist() == [1]
    assert least_entropy_teacher([three, two], normalize=True).tolist() == [0]


def test_selective_learning_target_is_the_chosen_teachers_probabilities():
    space = LabelSpace.union([["a", "b"], ["c", "d"]])
    teachers = [_stub_teacher(["a", "b"]), _stub_teacher(["c", "d"])]
    method = create_method("selective-learning", space, teachers, {"temperature": 1.0, "label_weight": 0.0})
    logits = [torch.tensor([[4.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 6.0]])]
    target = method.target(logits)
    first = torch.softmax(torch.tensor([4.0, 0.0]), 0)  # sample 0: teacher 0 is sure
    second = torch.softmax(torch.tensor([0.0, 6.0]), 0)  # sample 1: teacher 1 is sure
    assert torch.allclose(target, torch.stack([torch.cat([first, torch.zeros(2)]), torch.cat([torch.zeros(2), second])]))


def _stub_teacher(classes):
    return tiny_teacher(classes)


def test_trust_model_fitted_on_few_labels_tells_which_teacher_knows_the_class(demo_zoo):
    teachers = [load_teacher(folder) for folder in demo_zoo]
    space = LabelSpace.union([t.class_names for t in teachers])
    digits = load_digits()
    rows = np.arange(0, len(digits.train), 10)  # 144 labeled images, 10%
    images = torch.stack([digits.train[i][0] for i in rows])
    labels = torch.as_tensor(digits.train_labels[rows])
    torch.manual_seed(0)  # the trust model's initial weights
    method = create_method("trust-learner", space, teachers)
    method.setup(Setup(labeled=LabeledSet(images, labels, [t(images) for t in teachers])))
    test_images = torch.stack([digits.test[i][0] for i in range(len(digits.test))])
    test_logits = [t(test_images).logits for t in teachers]
    trust = method.teacher_weights(test_logits, test_images)
    owner = torch.as_tensor(digits.test_labels >= 5).long()  # teacher 1 knows 5-9
    assert (trust.argmax(dim=-1) == owner).float().mean() > 0.85  # always one teacher: 0.5
    assert not any(p.requires_grad for p in method.trust.parameters())  # frozen once fitted


def test_trust_learner_needs_labels(demo_zoo):
    import amalgam

    with pytest.raises(MethodError, match="labeled_fraction > 0"):
        amalgam.amalgamate(demo_zoo, data="digits", method="trust-learner", epochs=1, progress=False)
    with pytest.raises(MethodError, match="trust_input must be one of"):
        create_method("trust-learner", SKA_SPACE, [_stub_teacher(list("ABCD")), _stub_teacher(list("CDEF"))],
                      {"trust_input": "pixels"})


def test_hard_target_mode_is_the_argmax():
    space = LabelSpace.union([["a", "b"], ["c"]])
    method = create_method("soft-targets", space, [_stub_teacher(["a", "b"]), _stub_teacher(["c"])],
                           {"target": "hard", "label_weight": 0.0})
    outputs = [TeacherOutput(torch.tensor([[0.0, 3.0]])), TeacherOutput(torch.tensor([[1.0]]))]
    student = torch.tensor([[0.5, 0.0, 1.0]])
    loss = method(StepInputs(student, outputs, torch.tensor([-1])))["soft"]
    # mean weights: a = .5 * .047, b = .5 * .953 = .476, c = .5 * 1 = .5, so 'c' is the hard target
    assert loss.item() == pytest.approx(-torch.log_softmax(student, -1)[0, 2].item())


def test_trust_weights_of_cached_rows_are_computed_once_in_setup_and_equal_the_per_batch_ones():
    """A trust model on the teachers' outputs is frozen after setup, so every cached row's weights are fixed:
    setup computes them once and a training batch looks its rows up (the per-batch model no longer runs)."""
    space = LabelSpace.union([["a", "b"], ["c", "d"]])
    teachers = [_stub_teacher(["a", "b"]), _stub_teacher(["c", "d"])]
    generator = torch.Generator().manual_seed(0)
    transfer_logits = [torch.randn(50, 2, generator=generator) * 3 for _ in teachers]
    labeled_rows = torch.arange(0, 50, 5)
    labeled = LabeledSet(torch.zeros(10, 3, 4, 4), torch.arange(10) % 4,
                         [TeacherOutput(z[labeled_rows]) for z in transfer_logits], labeled_rows)
    torch.manual_seed(0)
    method = create_method("trust-learner", space, teachers, {"trust_epochs": 5})
    method.setup(Setup(labeled=labeled, transfer_logits=transfer_logits))
    rows = torch.tensor([3, 17, 49, 3])
    looked_up = method.batch_teacher_weights([z[rows] for z in transfer_logits], None, rows)
    computed = method.teacher_weights([z[rows] for z in transfer_logits], None)
    assert looked_up.shape == (4, 2) and torch.allclose(looked_up, computed, atol=1e-6)
    method.trust.net[-1].bias.data += 5.0  # were the model still run per batch, the weights would move
    assert torch.equal(method.batch_teacher_weights([z[rows] for z in transfer_logits], None, rows), looked_up)
    torch.manual_seed(0)
    on_input = create_method("trust-learner", space, teachers, {"trust_epochs": 1, "trust_input": "input"})
    on_input.setup(Setup(labeled=labeled, transfer_logits=transfer_logits))
    assert on_input.row_weights is None  # its weights depend on the image, which the cache does not hold
