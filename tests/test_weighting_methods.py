"""WSL, LFME, adaptive path weights, teacher switching, zero-label confidence trust, the student's feedback and
the consistency term: each weight and loss against a value computed by hand (shared/METHODS.md §10f-§10i, §11.7)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from amalgam.data.augment import strong_views
from amalgam.errors import MethodError
from amalgam.methods import LabeledSet, StepInputs, create_method
from amalgam.methods.base import Batch, Setup, StudentForward
from amalgam.methods.losses import pseudo_label_loss
from amalgam.methods.targets.adaptive import alignment_weights
from amalgam.methods.targets.experts import curriculum_weight, self_paced_weight
from amalgam.methods.targets.wsl import wsl_weights
from amalgam.teachers import LabelSpace, TeacherOutput
from tiny import tiny_teacher

SPACE = LabelSpace.union([["a", "b"], ["c", "d"]])  # two teachers, disjoint classes: union a, b, c, d


def _teacher(classes, name):
    return tiny_teacher(classes, name)


TEACHERS = [_teacher(["a", "b"], "left"), _teacher(["c", "d"], "right")]


def _step(student, teacher_logits, labels):
    return StepInputs(student, [TeacherOutput(logits=z) for z in teacher_logits], torch.tensor(labels))


def test_wsl_weight_is_one_minus_1_over_e_at_equal_losses_and_in_0_1_without_gradient():
    student = torch.tensor([[1.0, 0.0], [3.0, -3.0], [-3.0, 3.0]], requires_grad=True)
    teacher = torch.tensor([[0.7311, 0.2689], [0.6, 0.4], [0.6, 0.4]])  # row 0: same distribution as the student
    w = wsl_weights(student, teacher, torch.tensor([0, 0, 0]))
    assert w[0].item() == pytest.approx(1 - math.exp(-1), abs=1e-4)
    assert ((w >= 0) & (w < 1)).all() and not w.requires_grad
    assert w[1] < 0.1 < 0.9 < w[2]  # fits the label far better than the teacher -> ~0; far worse -> ~1


def test_wsl_method_weights_labeled_rows_by_their_label_and_unlabeled_rows_by_the_teachers_argmax():
    method = create_method("wsl", SPACE, TEACHERS, {"temperature": 1.0, "label_weight": 0.0})
    teacher_logits = [torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 0.0]])]
    student = torch.zeros(2, 4)
    step = _step(student, teacher_logits, [2, -1])  # row 0 labeled "c"; row 1 unlabeled
    q = method.target(teacher_logits, temperature=1.0)  # mean of the two teachers in the union space
    assert q[1].argmax().item() == 0
    l_s = math.log(4)  # uniform student
    expected = [1 - math.exp(-l_s / -math.log(q[0, 2].item())), 1 - math.exp(-l_s / -math.log(q[1, 0].item()))]
    assert method.sample_weights(step, teacher_logits).tolist() == pytest.approx(expected, abs=1e-5)
    kl = (q * (q.log() - F.log_softmax(student, -1))).sum(-1)
    assert method(step)["soft"].item() == pytest.approx(2.5 * (torch.tensor(expected) * kl).mean().item(), rel=1e-5)


def test_lfme_self_paced_weight_values_of_the_spec():
    accuracy = 0.8
    assert self_paced_weight(accuracy, 0.2 * accuracy) == 1.0
    assert self_paced_weight(accuracy, 0.65 * accuracy) == pytest.approx(0.5)
    assert self_paced_weight(accuracy, accuracy) == 0.0 and self_paced_weight(accuracy, 0.9) == 0.0
    # continuous at a = theta A
    assert self_paced_weight(accuracy, 0.3 * accuracy + 1e-9) == pytest.approx(1.0)


def test_lfme_curriculum_schedule_reaches_one_at_half_the_run_and_clamps():
    v0 = torch.tensor([0.2, 1.0])
    assert curriculum_weight(v0, 0, 10).tolist() == pytest.approx([0.2, 1.0])
    assert curriculum_weight(v0, 2, 10).tolist() == pytest.approx([0.52, 1.0])
    assert curriculum_weight(v0, 8, 10).tolist() == pytest.approx([1.0, 1.0])
    assert curriculum_weight(v0, 8, 10, clamp=False)[0].item() == pytest.approx(0.2 + 0.8 * 8 / 5)


class FixedPredictions(nn.Module):
    """A 'student' that predicts given classes for the validation images (its parameter only gives a device)."""

    def __init__(self, classes):
        super().__init__()
        self.classes = torch.tensor(classes)
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return F.one_hot(self.classes[: len(images)], 4).float()


def test_lfme_expert_weights_follow_the_student_on_each_teachers_classes():
    method = create_method("lfme", SPACE, TEACHERS, {"validation_share": 0.0})
    labels = torch.tensor([0, 1, 0, 1, 2, 3, 2, 3])
    # left teacher: right on 3 of its 4 samples (A = .75); right teacher: right on all 4 (A = 1)
    left = F.one_hot(torch.tensor([0, 1, 0, 0, 0, 0, 0, 0]), 2).float() * 5
    right = F.one_hot(torch.tensor([0, 0, 0, 0, 0, 1, 0, 1]), 2).float() * 5
    outputs = [TeacherOutput(left), TeacherOutput(right)]
    method.setup(Setup(labeled=LabeledSet(torch.zeros(8, 1, 4, 4), labels, outputs)))
    assert method.expert_accuracy == [0.75, 1.0]
    # student: on left's classes 3/4 right (a = A -> weight 0); on right's classes 2/4 (a = .5 A -> (1-.5)/.7)
    student = FixedPredictions([0, 1, 0, 0, 2, 3, 0, 0])
    record = method.end_epoch(student)
    assert method.expert_weights.tolist() == pytest.approx([0.0, 0.5 / 0.7])
    assert record["expert_weight/left"] == 0.0 and record["student_on_classes_of/right"] == 0.5


def test_lfme_loss_is_the_weighted_kl_of_each_expert_over_its_own_classes():
    method = create_method("lfme", SPACE, TEACHERS, {"temperature": 2.0, "label_weight": 0.0})
    method.expert_weights.copy_(torch.tensor([1.0, 0.5]))
    student = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    teacher_logits = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])]

    def kl(t, s):
        p, q = (t / 2).softmax(-1), (s / 2).softmax(-1)
        return (p * (p / q).log()).sum().item()

    expected = kl(teacher_logits[0][0], student[0, :2]) + 0.5 * kl(teacher_logits[1][0], student[0, 2:])
    assert method(_step(student, teacher_logits, [-1]))["experts"].item() == pytest.approx(expected, rel=1e-5)


def test_lfme_measures_on_held_out_labels_and_learns_only_the_others():
    method = create_method("lfme", SPACE, TEACHERS, {})
    labels = torch.tensor([0, 0, 2, 2])
    logits = [TeacherOutput(torch.zeros(4, 2)), TeacherOutput(torch.zeros(4, 2))]
    method.setup(Setup(labeled=LabeledSet(torch.zeros(4, 1, 4, 4), labels, logits,
                                         indices=torch.tensor([10, 11, 12, 13]))))
    assert method.held_out.tolist() == [11, 13] and method.validation.labels.tolist() == [0, 2]
    student = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 2))
    step = _step(student, [torch.zeros(2, 2), torch.zeros(2, 2)], [0, 0])
    step.indices = torch.tensor([10, 11])  # the second sample is held out: only the first one's label is learned
    assert method(step)["labels"].item() == pytest.approx(-math.log(0.7), rel=1e-5)


def test_lfme_needs_labels():
    with pytest.raises(MethodError, match="labeled_fraction"):
        create_method("lfme", SPACE, TEACHERS, {}).setup(Setup())


def test_alignment_gives_conflicting_paths_zero_and_sums_to_the_number_of_paths():
    task = torch.tensor([1.0, 0.0, 0.0])
    weights = alignment_weights([torch.tensor([2.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0]),
                                 torch.tensor([-1.0, 0.0, 0.0])], task)
    cos = torch.tensor([1.0, 1 / math.sqrt(2), 0.0])
    assert weights.tolist() == pytest.approx((3 * cos / cos.sum()).tolist())
    assert alignment_weights([-task], task) is None


def test_adaptive_weights_move_towards_the_path_that_agrees_with_the_labels():
    method = create_method("adaptive-weights", SPACE, TEACHERS, {"momentum": 0.5, "temperature": 1.0})
    student = torch.zeros(1, 4, requires_grad=True)
    # label "a": the left teacher also says "a" (agrees); the right teacher's classes c, d pull mass off "a"...
    # but its KD term only touches c and d, so its gradient on z_a is 0 and it is orthogonal-ish; make it conflict:
    teacher_logits = [torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 0.0]])]
    losses = method(_step(student, teacher_logits, [0]))
    g_task = torch.autograd.grad(F.cross_entropy(student, torch.tensor([0])), student)[0]
    g_left = torch.autograd.grad(F.kl_div(F.log_softmax(student[:, :2], -1), teacher_logits[0].softmax(-1),
                                          reduction="batchmean"), student)[0]
    cos_left = F.cosine_similarity(g_left.flatten(), g_task.flatten(), dim=0).item()
    assert cos_left > 0
    # right's KD over a uniform student and uniform teacher is 0 with zero gradient: cos 0, so left takes both
    assert method.path_weights.tolist() == pytest.approx([0.5 * 1 + 0.5 * 2.0, 0.5 * 1 + 0.5 * 0.0])
    assert set(losses) == {"paths", "labels"}


def test_uncertainty_weighting_learns_log_sigma_per_path():
    method = create_method("adaptive-weights", SPACE, TEACHERS, {"weighting": "uncertainty"})
    assert [name for name, _ in method.named_parameters()] == ["log_sigma"]
    student = torch.zeros(1, 4)
    losses = method(_step(student, [torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])], [-1]))
    paths = [F.kl_div(F.log_softmax(student[:, :2] / 4, -1), (torch.tensor([[3.0, 0.0]]) / 4).softmax(-1),
                      reduction="batchmean") * 16] * 2
    assert losses["paths"].item() == pytest.approx(sum(0.5 * p.item() for p in paths), rel=1e-5)  # s = 0


def test_teacher_switching_takes_teachers_in_turn_and_their_mean_in_evaluation():
    method = create_method("teacher-switching", SPACE, TEACHERS, {})
    logits = [torch.zeros(1, 2), torch.zeros(1, 2)]
    method.train()
    assert [method.teacher_weights(logits, None).tolist() for _ in range(3)] == [[1, 0], [0, 1], [1, 0]]
    method.eval()
    assert method.teacher_weights(logits, None).tolist() == [0.5, 0.5]
    with pytest.raises(MethodError, match="order"):
        create_method("teacher-switching", SPACE, TEACHERS, {"order": "alphabetical"})


def test_confidence_trust_standardises_each_teachers_confidence_on_the_transfer_set():
    method = create_method("confidence-trust", SPACE, TEACHERS, {})
    # over the transfer set the left teacher is always sure (max-prob ~.88 or ~.98), the right one never is
    transfer = [torch.tensor([[2.0, 0.0], [4.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.4, 0.0]])]
    method.setup(Setup(transfer_logits=transfer))
    left = torch.tensor([2.0, 4.0]).sigmoid()  # max-prob of [z, 0]
    right = torch.tensor([0.5, torch.tensor(0.4).sigmoid().item()])
    assert method.score_mean.tolist() == pytest.approx([left.mean().item(), right.mean().item()])
    # a sample where both sit at their mean confidence: equal trust, whatever their raw confidences
    sample = [torch.tensor([[math.log(left.mean() / (1 - left.mean())), 0.0]]),
              torch.tensor([[math.log(right.mean() / (1 - right.mean())), 0.0]])]
    assert method.teacher_weights(sample, None).tolist()[0] == pytest.approx([0.5, 0.5], abs=1e-5)
    # one standard deviation above its usual for the right teacher, at its mean for the left: softmax([0, 1])
    up = right.mean() + right.std()
    sample[1] = torch.tensor([[math.log(up / (1 - up)), 0.0]])
    assert method.teacher_weights(sample, None)[0, 1].item() == pytest.approx(math.e / (1 + math.e), abs=1e-4)


def test_confidence_trust_without_the_transfer_logits_says_how_to_fix_it():
    method = create_method("confidence-trust", SPACE, TEACHERS, {})
    with pytest.raises(MethodError, match="cache_teachers=True"):
        method.setup(Setup())


def test_student_feedback_mixes_the_students_view_into_the_weights_as_the_run_goes():
    method = create_method("soft-targets", SPACE, TEACHERS, {"temperature": 1.0})
    assert method.student_feedback == 0.0  # soft-targets has no such option; set it as trust methods do
    method = create_method("confidence-trust", SPACE, TEACHERS, {"student_feedback": 0.5, "temperature": 1.0})
    transfer = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    method.setup(Setup(transfer_logits=[transfer, transfer]))  # the same calibration for both teachers
    teacher_logits = [torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]])]  # equal trust: weights [.5, .5]
    student = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1]]))  # student: 80% on the left teacher's classes
    method.start_epoch(1, 3)
    assert torch.allclose(method.target(teacher_logits, student_logits=student), torch.full((1, 4), 0.25))
    method.start_epoch(3, 3)  # last epoch: a = 0.5 -> weights .5 * [.5, .5] + .5 * [.8, .2] = [.65, .35]
    target = method.target(teacher_logits, student_logits=student)
    assert target.tolist()[0] == pytest.approx([0.325, 0.325, 0.175, 0.175])


def test_consistency_learns_the_strong_views_of_the_samples_the_student_and_its_target_agree_on():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    images = torch.rand(6, 1, 4, 4)
    labels = torch.tensor([1, -1, -1, -1, -1, -1])
    teacher_logits = [torch.randn(6, 2) * 3, torch.randn(6, 2) * 3]
    batch = Batch(images, labels, torch.arange(6), [TeacherOutput(logits=z) for z in teacher_logits])
    options = {"temperature": 1.0, "consistency": 2.0, "consistency_threshold": 0.3}
    method = create_method("soft-targets", SPACE, TEACHERS, options)
    plain = create_method("soft-targets", SPACE, TEACHERS, {**options, "consistency": 0.0})

    torch.manual_seed(1)
    losses = method.step(batch, StudentForward(student, [], []))
    torch.manual_seed(1)  # the same strong views, drawn by hand
    strong = student(strong_views(images))
    weak = student(images).softmax(dim=-1)
    prior = method.target(teacher_logits, temperature=1.0)
    term, kept = pseudo_label_loss(strong, weak, labels, 0.3, prior)
    assert losses["consistency"].item() == pytest.approx(2.0 * term.item(), rel=1e-5)
    assert term.item() > 0
    # by hand: which samples pass (student x target at least 0.3 sure, or labeled) and what they learn
    r = weak * prior
    r = r / r.sum(dim=-1, keepdim=True)
    keep = (r.max(dim=-1).values >= 0.3) | (labels >= 0)
    classes = torch.where(labels >= 0, labels, r.argmax(dim=-1))
    by_hand = 2.0 * (F.cross_entropy(strong, classes, reduction="none") * keep).sum() / 6
    assert losses["consistency"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert 0 < kept.item() == pytest.approx(keep.float().mean().item())
    assert method.end_epoch(student) == {"consistency_kept": pytest.approx(kept.item())}  # and is reset
    assert method.end_epoch(student) == {}
    # the other terms are those of the same method without consistency, on the batch's own view
    assert losses["soft"].item() == pytest.approx(plain.step(batch, StudentForward(student, [], []))["soft"].item())
    assert "consistency" not in plain.step(batch, StudentForward(student, [], []))
    method.eval()  # evaluation runs no strong view
    assert "consistency" not in method.step(batch, StudentForward(student, [], []))


def test_consistency_options_are_checked():
    with pytest.raises(MethodError, match="consistency_threshold must be in"):
        create_method("trust-learner", SPACE, TEACHERS, {"consistency": 1.0, "consistency_threshold": 1.5})
    with pytest.raises(MethodError, match="consistency must be 0"):
        create_method("soft-targets", SPACE, TEACHERS, {"consistency": -1.0})
