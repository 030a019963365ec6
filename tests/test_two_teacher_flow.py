"""The two-teacher framework with a discriminator (§10c) and knowledge flow (§9): their loss pieces by hand, their
adapters sized for a timm CNN + transformers ViT teacher pair, their losses falling on digits, and knowledge flow's
student working alone (no hooks left, teachers weaned off, nothing of the teachers in the saved student)."""

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from demo_methods import demo_setup, demo_student, train_briefly
from amalgam.engine.evaluate import accuracy
from amalgam.errors import MethodError
from amalgam.methods import create_method
from amalgam.methods.base import Batch, Setup, StudentForward
from amalgam.methods.features.two_teacher import gradient_reversal
from amalgam.methods.features.knowledge_flow import dependency_penalty, flow_mix, replaced_outputs
from amalgam.methods.features.two_teacher import adversarial_terms
from amalgam.students import Student
from amalgam.students.stages import resolve_stages, stage_modules

# --- loss pieces by hand -------------------------------------------------------------------------------------------


def test_gradient_reversal_flips_the_sign_of_the_gradient_only():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = gradient_reversal(x, 2.0)
    assert torch.equal(y, x)
    (3 * y).sum().backward()
    assert x.grad.tolist() == [-6.0, -6.0]


class _Linear(nn.Module):
    """``D(x) = x_0 - x_1``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0, -1.0]]))
            self.linear.bias.zero_()

    def forward(self, x):
        return self.linear(x).squeeze(-1)


def test_non_saturating_terms_by_hand_train_each_side_only():
    discriminator = _Linear()
    d = discriminator.linear
    real = torch.tensor([[2.0, 0.0]])  # D(real) = 2
    fake = torch.tensor([[0.0, 1.0]], requires_grad=True)  # D(fake) = -1
    terms = adversarial_terms(discriminator, fake, real)
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert terms["discriminator"].item() == pytest.approx(softplus(-2.0) + softplus(-1.0))
    assert terms["adversarial"].item() == pytest.approx(softplus(1.0))  # -log sigmoid(D(fake))
    terms["discriminator"].backward(retain_graph=True)
    assert fake.grad is None and d.weight.grad.abs().sum() > 0  # D's own loss: the student feature is detached
    d.weight.grad = None
    terms["adversarial"].backward()
    assert d.weight.grad is None and fake.grad.abs().sum() > 0  # the student's term: D's parameters detached
    # d softplus(-D(f)) / df = -sigmoid(-D(f)) * w = -sigmoid(1) * (1, -1)
    s = 1 / (1 + math.exp(-1.0))
    assert fake.grad.tolist()[0] == pytest.approx([-s, s])


def test_minimax_gives_the_student_the_reversed_gradient_of_the_discriminator_loss():
    wrapped = _Linear()
    real = torch.tensor([[2.0, 0.0]])
    fake = torch.tensor([[0.0, 1.0]], requires_grad=True)
    adversarial_terms(wrapped, fake, real, "minimax")["discriminator"].backward()
    reversed_grad = fake.grad.clone()
    plain = fake.detach().clone().requires_grad_(True)
    torch.nn.functional.softplus(wrapped(plain)).mean().backward()  # the discriminator's fake term, no reversal
    assert torch.allclose(reversed_grad, -plain.grad)
    with pytest.raises(MethodError, match="adversarial must be one of"):
        adversarial_terms(wrapped, fake, real, "wasserstein")


def test_flow_mixing_with_given_omega_and_the_dependency_penalty_by_hand():
    # omega = (0, log 3): p = (1/4, 3/4)
    weights = torch.tensor([0.0, math.log(3.0)]).softmax(dim=-1)
    own, teacher = torch.full((1, 2, 1, 1), 4.0), torch.full((1, 2, 1, 1), -4.0)
    assert flow_mix(own, [teacher], weights).flatten().tolist() == pytest.approx([0.25 * 4 - 0.75 * 4] * 2)
    p = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.4, 0.4]])
    assert dependency_penalty(p).item() == pytest.approx(2 * 0.25**2 + 2 * 0.4**2)  # the student's column is free


def test_replaced_outputs_hooks_never_outlive_the_block():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    x = torch.ones(1, 2)
    with replaced_outputs([net[0]], [lambda h: h * 0 + 7]):
        assert net(x).tolist() == [[7.0, 7.0]]
    assert not net[0]._forward_hooks and net(x).tolist() != [[7.0, 7.0]]
    with pytest.raises(RuntimeError), replaced_outputs([net[0]], [lambda h: h]):
        raise RuntimeError("boom")
    assert not net[0]._forward_hooks


# --- the methods on the demo teachers (timm CNN on 0-4, transformers ViT on 5-9) -----------------------------------


@pytest.fixture(scope="module")
def setup(demo_zoo):
    return demo_setup(demo_zoo, samples=480)


def test_two_teacher_roles(setup):
    teachers, space, _, _ = setup
    # disjoint teachers: the other alone cannot cover 0-4, so the feature teacher guides decisions too
    assert create_method("two-teacher", space, teachers, {}).decision_teachers == [0, 1]
    strict = create_method("two-teacher", space, teachers, {"feature_teacher": teachers[1].name,
                                                            "decision_teachers": [0]})
    assert strict.feature_teacher == 1 and strict.decision_weights.tolist() == [1.0, 0.0]
    assert strict.needs().taps_per_teacher(2) == [[], ["hidden_states.3"]]
    with pytest.raises(MethodError, match="no teacher named"):
        create_method("two-teacher", space, teachers, {"feature_teacher": "nobody"})


@pytest.mark.parametrize("feature_teacher, teacher_width", [(0, 96), (1, 64)])
def test_two_teacher_adapters_for_a_cnn_or_a_vit_and_its_loss_falls(setup, feature_teacher, teacher_width):
    method, student, history = train_briefly("two-teacher", {"feature_teacher": feature_teacher}, setup, samples=96)
    assert method.layers.student == [4]  # the student's deepest stage, 64 x 1 x 1
    hint = method.adapters[0]
    assert (hint.in_channels, hint.out_channels) == (64, teacher_width)  # CNN layer4: 96; ViT tokens: 64 wide
    assert method.discriminators[0].net[0].in_features == teacher_width
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], history
    assert history[-1]["hint"] < history[0]["hint"], history
    assert all(h["discriminator"] > 0 and h["adversarial"] > 0 for h in history)


def test_knowledge_flow_weans_the_student_off_its_teachers(setup, tmp_path):
    teachers, space, _, test = setup
    method, student, history = train_briefly("knowledge-flow", {}, setup, epochs=6, samples=480)
    # Q: teacher width -> student width, at the student's blocks.2 (32 ch, 4 x 4) and blocks.4 (64 ch, 1 x 1)
    assert method.layers.student == [2, 4]
    widths = [[q.in_channels for q in flows] for flows in method.flows]
    assert [[q.out_channels for q in flows] for flows in method.flows] == [[32, 32], [64, 64]]
    assert widths[1] == [96, 64]  # CNN layer4, ViT hidden width
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], history
    # lambda_1 rises from 0 to its maximum by half the run; the teachers' weights start near 0.44 and fall
    assert history[0]["dependency_weight"] == 0.0 and history[-1]["dependency_weight"] == 10.0
    assert history[0]["teacher_weight"] > 0.4 and history[-1]["teacher_weight"] < 0.1, history
    assert history[-1]["student_weight"] > 0.8, history
    # no hook left on the student, nothing of the method in it; it works alone, saved and reloaded
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in student.modules())
    assert set(student.state_dict()) == set(demo_student(space).state_dict())
    alone = accuracy(student, test)
    assert alone > 0.5, (alone, history)
    student.save_pretrained(tmp_path)
    assert not any("flow" in key or "omega" in key for key in load_file(tmp_path / "model.safetensors"))
    images = torch.stack([test[i][0] for i in range(4)])
    with torch.no_grad():
        assert torch.allclose(Student.from_pretrained(tmp_path)(images), student.eval()(images), atol=1e-5)


def test_knowledge_flow_changes_the_student_only_inside_its_context(setup):
    teachers, space, transfer, _ = setup
    method = create_method("knowledge-flow", space, teachers, {"feature_layers": 1})
    student = demo_student(space).eval()
    images = torch.stack([transfer[i][0] for i in range(3)])
    outputs = [t(images, taps=taps) for t, taps in zip(teachers, method.needs().taps_per_teacher(len(teachers)))]
    stages = resolve_stages(student, method.needs().student_stages)
    assert stages == [4]  # as the engine resolves them before setup()
    method.setup(Setup(student=student, student_stages=stages, student_features={4: torch.zeros(3, 64, 1, 1)},
                       teacher_outputs=outputs))
    modules = stage_modules(student, stages)
    with torch.no_grad():
        alone = student(images)
        with method.mixed_outputs(modules, outputs):
            mixed = student(images)
        assert not torch.allclose(alone, mixed) and torch.equal(student(images), alone)
        terms = method.step(Batch(images, torch.full((3,), -1), torch.arange(3), outputs),
                            StudentForward(student, stages, modules))  # the step mixes too, and leaves no hook
        assert set(terms) == {"soft", "labels", "dependency"} and torch.equal(student(images), alone)
        assert not any(m._forward_hooks for m in student.modules())
        method.omega.fill_(0.0)
        method.omega[0, 0] = 1.0  # omega_s * scale = 100: p_s = 1 to float precision, the student alone again
        with method.mixed_outputs(modules, outputs):
            assert torch.allclose(student(images), alone, atol=1e-5)
    method.start_epoch(2, 5)  # a quarter of the run, half of the ramp
    assert method.dependency == pytest.approx(5.0)
