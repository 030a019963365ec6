"""FEED (§10a) and attention transfer from an expert teacher (CTKD, §10d): their building blocks against
hand-computed values, FEED's translators sized for a timm CNN + transformers ViT teacher pair, the expert choice,
the scratch teacher, and both losses falling on digits."""

import math

import pytest
import torch
from safetensors.torch import load_file

from demo_methods import demo_setup, demo_student, train_briefly
from amalgam.errors import MethodError
from amalgam.methods import StepInputs, create_method
from amalgam.methods.base import Setup
from amalgam.methods.losses import normalized_distance
from amalgam.methods.features.layers import attention_map
from amalgam.students import Student
from amalgam.teachers.teacher import TeacherOutput

# --- building blocks by hand ---------------------------------------------------------------------------------------


def test_attention_map_by_hand():
    feature = torch.tensor([[[[1.0, -2.0], [0.0, 1.0]],
                             [[1.0, 0.0], [3.0, 0.0]]]])  # 1 x 2 x 2 x 2
    q = attention_map(feature)
    assert q.shape == (1, 1, 2, 2)
    assert q.flatten().tolist() == [1 + 1, 4 + 0, 0 + 9, 1 + 0]  # sum over channels of the squares
    assert attention_map(feature, (1, 1)).item() == pytest.approx(16 / 4)  # average-pooled to one position
    tokens = torch.zeros(1, 5, 3)  # class token + a 2 x 2 grid of 3-wide tokens
    tokens[0, 2] = torch.tensor([1.0, 2.0, 2.0])
    assert attention_map(tokens).flatten().tolist() == [0.0, 9.0, 0.0, 0.0]  # class token left out


def test_normalized_distances_by_hand():
    x = torch.randn(4, 3, 2, 2)
    for p in (1, 2):
        assert normalized_distance(x, x, p).tolist() == pytest.approx([0.0] * 4, abs=1e-6)
        assert normalized_distance(x, 7 * x, p).tolist() == pytest.approx([0.0] * 4, abs=1e-6)  # scale-free
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])  # unit vectors (0.6, 0.8) and (0.8, 0.6)
    assert normalized_distance(a, b, 1).item() == pytest.approx(0.4)
    assert normalized_distance(a, b, 2).item() == pytest.approx(math.sqrt(0.08))
    orthogonal = normalized_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 5.0]]), 1)
    assert orthogonal.item() == pytest.approx(2.0)


# --- the methods on the demo teachers (timm CNN on 0-4, transformers ViT on 5-9) -----------------------------------


@pytest.fixture(scope="module")
def setup(demo_zoo):
    return demo_setup(demo_zoo)[:3]


def test_feed_translators_are_sized_for_a_cnn_and_a_vit_its_loss_falls_and_they_stay_out_of_the_student(
        setup, tmp_path):
    _, space, transfer = setup
    method, student, history = train_briefly("feed", {}, setup)
    assert method.layers.student == [4]  # the student's last block, 64 x 1 x 1
    # CNN 96 x 1 x 1, ViT 17 tokens 64 wide
    assert method.needs().taps_per_teacher(2) == [["layer4"], ["hidden_states.3"]]
    translators = method.translators[0]
    assert [t[0].in_channels for t in translators] == [64, 64]
    assert [[t[i].out_channels for i in (0, 3, 6)] for t in translators] == [[96] * 3, [64] * 3]
    images = torch.stack([transfer[i][0] for i in range(3)])
    translators.eval()
    assert [tuple(t(torch.zeros(3, 64, 1, 1)).shape) for t in translators] == [(3, 96, 1, 1), (3, 64, 1, 1)]
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], history
    assert history[-1]["feed"] < history[0]["feed"], history
    # the translators are method parts: the saved student holds exactly a fresh student's weights
    student.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(demo_student(space).state_dict()) and not any("translator" in key for key in saved)
    assert any(key.startswith("translators.") for key in method.state_dict())
    assert Student.from_pretrained(tmp_path)(images).shape == (3, space.num_classes)


def test_attention_transfer_pairs_three_depths_and_its_loss_falls(setup):
    method, _, history = train_briefly("attention-transfer", {}, setup)
    assert method.layers.student == [1, 3, 4]
    assert method.needs().taps_per_teacher(2) == [["layer1", "layer3", "layer4"],
                                                  ["hidden_states.1", "hidden_states.2", "hidden_states.3"]]
    assert not list(method.parameters())  # attention maps need no adapters, whatever the widths
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], history
    assert history[-1]["attention"] < 0.8 * history[0]["attention"], history


def _attention_step(setup, expert):
    """Two teachers whose maps differ; the student has teacher 1's maps, and teacher 1 is the confident one."""
    teachers, space, _ = setup
    method = create_method("attention-transfer", space, teachers,
                           {"expert": expert, "beta": 1.0, "student_layers": [2],
                            "teacher_layers": [["layer2"], ["hidden_states.2"]]})
    method.setup(Setup(student_stages=[2]))
    torch.manual_seed(0)
    maps = [torch.rand(4, 3, 4, 4), torch.rand(4, 5, 4, 4)]
    outputs = [TeacherOutput(torch.zeros(4, 5), {"layer2": maps[0]}),  # uniform: the most entropy
               TeacherOutput(torch.eye(5)[:4] * 10, {"hidden_states.2": maps[1]})]
    return method, StepInputs(torch.zeros(4, space.num_classes), outputs, torch.full((4,), -1), None,
                              {2: maps[1] * 3})


def test_the_least_entropy_expert_is_followed_and_the_mean_averages_the_teachers(setup):
    method, step = _attention_step(setup, "least-entropy")
    assert method.attention_term(step).item() == pytest.approx(0.0, abs=1e-6)
    method, step = _attention_step(setup, "mean")
    to_other = normalized_distance(attention_map(step.student_features[2]),
                                   attention_map(step.teacher_outputs[0].features["layer2"])).mean()
    assert to_other > 0
    assert method.attention_term(step).item() == pytest.approx(to_other.item() / 2, rel=1e-5)


def test_scratch_teacher_learns_from_labels_only_and_is_distilled_without_gradient(setup):
    teachers, space, _ = setup
    assert not create_method("attention-transfer", space, teachers, {}).needs().labels
    scratch = create_method("attention-transfer", space, teachers, {"scratch_teacher": True})
    assert scratch.needs().labels
    with pytest.raises(MethodError, match="labels only"):
        scratch.setup(Setup())
    with pytest.raises(MethodError, match="expert must be one of"):
        create_method("attention-transfer", space, teachers, {"expert": "best"})
    method, student, history = train_briefly("attention-transfer", {"scratch_teacher": True}, setup)
    assert sum(p.numel() for p in method.scratch.parameters()) == student.num_parameters  # the student's shape
    assert history[-1]["scratch_labels"] < 0.5 * history[0]["scratch_labels"], history
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], history
    # the student's distillation from the scratch teacher does not train the scratch teacher
    _, _, transfer = setup
    images = torch.stack([transfer[i][0] for i in range(4)])
    step = StepInputs(student(images), [], torch.full((4,), -1), images)
    student.zero_grad(set_to_none=True)
    method.scratch.zero_grad(set_to_none=True)
    terms = method.scratch_terms(step)
    terms["scratch_kd"].backward()
    assert all(p.grad is None for p in method.scratch.parameters())
    assert any(p.grad is not None for p in student.parameters())
    assert terms["scratch_labels"].item() == 0.0  # no labeled row in this batch: nothing for it to learn
