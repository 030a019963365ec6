"""Students with named heads, Hydra (shared/METHODS.md §7) and the uncertainty measures: hand-computed cases,
save/reload, and a run on real digits."""

import json
import math

import pytest
import timm
import torch

import amalgam
from amalgam.data import load_digits
from amalgam.engine.uncertainty import auroc, brier_score, decompose, ensemble_report, expected_calibration_error
from amalgam.errors import StudentError
from amalgam.methods import StepInputs, create_method
from amalgam.methods.base import Setup
from amalgam.methods.losses import kd_loss, masked_cross_entropy
from amalgam.teachers.placement import placed_targets
from amalgam.methods.heads.ods import ods_perturbation
from amalgam.methods.targets.stochastic import residual_blocks, skipped, survival_probabilities
from amalgam.students import Head, Student
from amalgam.teachers import LabelSpace, TeacherOutput, load_teacher
from tiny import tiny_teachers

CLASSES = ["a", "b", "c"]


def _teachers(count, classes=CLASSES):
    return tiny_teachers(*[classes] * count, names=[f"t{k}" for k in range(count)])


# --- the student's heads ------------------------------------------------------------------------------------------


def test_a_three_head_student_saves_and_reloads_with_identical_outputs(tmp_path):
    heads = [Head("item", CLASSES), {"name": "coarse", "outputs": ["top", "shoe"], "hidden": 8},
             Head("size", ["cm"], task="regression")]
    torch.manual_seed(0)
    student = Student("test_efficientnet", class_names=CLASSES, channels=1, heads=heads).eval()
    student.save_pretrained(tmp_path / "student")
    loaded = Student.from_pretrained(tmp_path / "student").eval()
    images = torch.rand(5, 1, 12, 12)
    before, after = student(images), loaded(images)
    assert list(after) == ["item", "coarse", "size"] and loaded.head_specs == student.head_specs
    assert [tuple(t.shape) for t in after.values()] == [(5, 3), (5, 2), (5, 1)]
    assert all(torch.equal(before[name], after[name]) for name in before)
    # the one head over its classes is what it serves; the others have their own tasks
    assert loaded.member_names == ["item"] and torch.equal(loaded.served(after), after["item"])


def test_a_student_serves_the_mean_probability_of_its_heads_over_its_classes():
    student = Student("test_efficientnet", class_names=["a", "b"], channels=1,
                      heads=[Head("m0", ["a", "b"]), Head("m1", ["a", "b"])])
    outputs = {"m0": torch.tensor([[0.0, math.log(3.0)]]), "m1": torch.tensor([[0.0, 0.0]])}  # (1/4, 3/4), (1/2, 1/2)
    assert student.served(outputs).exp()[0].tolist() == pytest.approx([0.375, 0.625])
    assert student.predict(torch.rand(2, 1, 8, 8))[0][0][0] in ("a", "b")


@pytest.mark.parametrize("heads, serve, message", [
    ([Head("m0", ["x", "y"])], None, "no classification head predicts class_names"),
    ([Head("m0", ["a", "b"])], "nope", "serve='nope' must name a classification head"),
    ([{"name": "m0", "outputs": ["a", "b"]}, {"name": "m0", "outputs": ["a", "b"]}], None, "distinct names"),
    ([{"name": "heads.0", "outputs": ["a", "b"]}], None, "letters, digits"),
    ([{"name": "m0", "outputs": ["a", "b"], "task": "ranking"}], None, "task must be one of"),
    ([{"name": "m0", "classes": ["a", "b"]}], None, "keys name, outputs, task, hidden"),
])
def test_bad_heads_are_refused_with_what_to_give(heads, serve, message):
    with pytest.raises(StudentError, match=message):
        Student("test_efficientnet", class_names=["a", "b"], channels=1, heads=heads, serve=serve)


def test_a_head_computes_its_own_tasks_loss():
    assert Head("c", ["a", "b"]).loss(torch.zeros(2, 2), torch.tensor([0, 1])).item() == pytest.approx(math.log(2))
    assert Head("m", ["a", "b"], task="multilabel").loss(torch.zeros(1, 2), torch.tensor([[1, 0]])).item() == \
        pytest.approx(math.log(2))
    assert Head("r", ["cm"], task="regression").loss(torch.tensor([[1.0]]), torch.tensor([[3.0]])).item() == 4.0


def test_a_head_measures_its_own_task():
    assert Head("c", ["a", "b"]).metrics(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1])) == \
        {"accuracy": 0.5}
    tags = Head("m", ["x", "y", "z"], task="multilabel")
    # predicted {x}, {x, y}; true {x, z}, {x, y}: 3 true positives of 3 predicted + 4 true -> F1 = 6 / 7
    measured = tags.metrics(torch.tensor([[1.0, -1.0, -1.0], [1.0, 1.0, -1.0]]), torch.tensor([[1, 0, 1], [1, 1, 0]]))
    assert measured == {"exact_match": 0.5, "f1": pytest.approx(6 / 7)}
    size = Head("r", ["cm", "kg"], task="regression")
    assert size.metrics(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 4.0]])) == {"rmse": pytest.approx(math.sqrt(2)),
                                                                                   "mae": 1.0}


# --- uncertainty and calibration ------------------------------------------------------------------------------------


def test_uncertainty_decomposition_by_hand():
    # member 1 says (1, 0), member 2 says (1/2, 1/2): mean (3/4, 1/4)
    parts = decompose(torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]]]))
    total = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    data = (0.0 + math.log(2)) / 2
    assert parts["total"].item() == pytest.approx(total, rel=1e-6)
    assert parts["data"].item() == pytest.approx(data, rel=1e-6)
    assert parts["model"].item() == pytest.approx(total - data, rel=1e-6)  # total = data + model


def test_model_uncertainty_is_zero_when_the_members_agree_and_positive_otherwise():
    probs = torch.rand(1, 64, 5).softmax(dim=-1)
    assert decompose(probs.expand(4, 64, 5))["model"].abs().max().item() < 1e-6
    assert (decompose(torch.rand(4, 64, 5).softmax(dim=-1))["model"] > 0).all()


def test_calibration_measures_by_hand():
    labels = torch.tensor([0, 0, 1, 1])
    sure_and_right = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert expected_calibration_error(sure_and_right, labels) == 0.0
    assert brier_score(sure_and_right, labels) == 0.0
    half = torch.full((4, 2), 0.5)  # confidence 1/2, accuracy 1/2 (argmax picks class 0): calibrated
    assert expected_calibration_error(half, labels) == pytest.approx(0.0)
    assert brier_score(half, labels) == pytest.approx(0.5)
    assert ensemble_report(half[None], labels)["nll"] == pytest.approx(math.log(2))
    assert auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.9])) == 1.0
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])) == 0.5


# --- Hydra ------------------------------------------------------------------------------------------------------


def _hydra_step(method, head_logits, teacher_logits, labels=None):
    labels = torch.full((len(teacher_logits[0]),), -1) if labels is None else labels
    return method(StepInputs(head_logits, [TeacherOutput(z) for z in teacher_logits], labels))


def test_hydra_with_one_head_is_hinton_kd_in_both_phases():
    space = LabelSpace.union([CLASSES])
    teachers = _teachers(1)
    hydra = create_method("hydra", space, teachers, {"temperature": 2.0})
    kd = create_method("soft-targets", space, teachers, {"temperature": 2.0})
    student_logits, teacher_logits = torch.randn(6, 3), torch.randn(6, 3)
    labels = torch.tensor([0, -1, 2, -1, 1, -1])
    expected = kd(StepInputs(student_logits, [TeacherOutput(teacher_logits)], labels))
    [head] = hydra.head_names
    for epoch in (1, 2):  # phase 1, then phase 2, of a 2-epoch run
        hydra.start_epoch(epoch, 2)
        assert hydra.phase == epoch
        got = _hydra_step(hydra, {head: student_logits}, [teacher_logits], labels)
        assert {k: v.item() for k, v in got.items()} == pytest.approx({k: v.item() for k, v in expected.items()})


def test_hydra_phase_one_learns_the_mean_and_phase_two_each_head_its_teacher():
    space = LabelSpace.union([CLASSES] * 2)
    hydra = create_method("hydra", space, _teachers(2), {"temperature": 1.0, "label_weight": 0.0})
    h0, h1 = hydra.head_names
    assert (h0, h1) == ("0-t0", "1-t1")
    # teacher 0 sure of class a, teacher 1 uniform: phase 1's target is their mean, for head 0 only
    t0, t1 = torch.tensor([[20.0, 0.0, 0.0]]), torch.zeros(1, 3)
    p0, p1 = torch.softmax(t0, -1), torch.full((1, 3), 1 / 3)
    heads = {h0: torch.zeros(1, 3), h1: t0.clone()}

    def kl(p, z):
        return float((p * (p.clamp_min(1e-30).log() - torch.log_softmax(z, -1))).sum())

    hydra.start_epoch(1, 2)
    assert _hydra_step(hydra, heads, [t0, t1])["soft"].item() == pytest.approx(kl((p0 + p1) / 2, heads[h0]),
                                                                               rel=1e-5)
    hydra.start_epoch(2, 2)
    expected = (kl(p0, heads[h0]) + kl(p1, heads[h1])) / 2
    assert _hydra_step(hydra, heads, [t0, t1])["soft"].item() == pytest.approx(expected, rel=1e-5)


def test_hydra_copies_the_first_head_into_every_head_when_phase_one_ends():
    space = LabelSpace.union([CLASSES] * 3)
    hydra = create_method("hydra", space, _teachers(3), {"phase_one_share": 0.5})
    student = Student("test_efficientnet", class_names=CLASSES, channels=1, heads=hydra.needs().heads)
    first, others = hydra.head_names[0], hydra.head_names[1:]
    hydra.start_epoch(1, 4)
    hydra.end_epoch(student)  # epoch 1 of phase 1 (2 epochs): nothing yet
    assert not torch.equal(student.heads[first].weight, student.heads[others[0]].weight)
    hydra.start_epoch(2, 4)
    assert hydra.end_epoch(student) == {"phase": 1.0}
    assert all(torch.equal(student.heads[first].weight, student.heads[o].weight) for o in others)
    hydra.start_epoch(3, 4)
    assert hydra.phase == 2


def test_hydra_refuses_a_student_without_its_heads(demo_zoo):
    with pytest.raises(StudentError, match="trains a student with heads"):
        amalgam.amalgamate(demo_zoo, student=Student("test_efficientnet", class_names=[str(d) for d in range(10)],
                                                     channels=1), method="hydra", epochs=1, progress=False)


def test_hydra_on_digits_learns_and_keeps_the_teachers_disagreement(demo_zoo, tmp_path):
    """The demo teachers know digits 0-4 (CNN) and 5-9 (ViT), so they disagree on every image: the heads that
    learn them must disagree too (model uncertainty), where a one-head student has none."""
    result = amalgam.amalgamate(demo_zoo, data="digits", method="hydra", epochs=4, progress=False,
                                run_dir=tmp_path / "run", labeled_fraction=0.05)
    student, metrics = result.student, result.metrics
    assert len(student.head_specs) == 2
    assert metrics["student"]["accuracy"] > 0.6
    calibration = metrics["student"]["calibration"]
    assert calibration["model_uncertainty"] > 0.1
    assert calibration["total_uncertainty"] == pytest.approx(
        calibration["data_uncertainty"] + calibration["model_uncertainty"], rel=1e-4)
    described = json.loads((tmp_path / "run" / "run.json").read_text())["student"]["heads"]
    assert [h["name"] for h in described] == student.member_names == ["0-cnn-digits-0to4", "1-vit-digits-5to9"]
    reloaded = Student.from_pretrained(tmp_path / "run" / "student")
    assert reloaded.member_names == student.member_names


# --- multi-branch ensemble distillation (§10b) ------------------------------------------------------------------


def test_multi_branch_loss_by_hand():
    space = LabelSpace.union([["a", "b"], ["b", "c"]])
    teachers = [load_teacher(timm.create_model("test_resnet", num_classes=2), class_names=c, name=n)
                for c, n in ((["a", "b"], "t0"), (["b", "c"], "t1"))]
    method = create_method("multi-branch", space, teachers, {"temperature": 1.0, "branch_width": 2})
    [tap0], [tap1] = method.needs().teacher_taps
    features = [torch.tensor([[[[1.0]], [[3.0]]]]), torch.tensor([[[[2.0]]]])]  # B=1: widths 2 and 1, 1x1 maps
    outputs = [TeacherOutput(torch.zeros(1, 2), {tap0: features[0]}),
               TeacherOutput(torch.zeros(1, 2), {tap1: features[1]})]
    b0, b1 = method.head_names
    branch_features = {f"{b0}.hidden": torch.ones(1, 2), f"{b1}.hidden": torch.ones(1, 2)}
    method.setup(Setup(teacher_outputs=outputs))
    for adapter in method.adapters:  # a_b(f) = 0: the feature term is the mean of F_b^2
        torch.nn.init.zeros_(adapter.weight), torch.nn.init.zeros_(adapter.bias)
    # student branches: uniform over (a, b, c); teacher 0 -> (1/2, 1/2, 0), teacher 1 -> (0, 1/2, 1/2)
    logits = {b0: torch.zeros(1, 3), b1: torch.zeros(1, 3)}
    losses = method(StepInputs(logits, outputs, torch.tensor([2]), student_features=branch_features))
    kd_each = 2 * 0.5 * math.log(0.5 / (1 / 3))  # KL((1/2, 1/2, 0) || uniform)
    assert losses["soft"].item() == pytest.approx(2 * kd_each, rel=1e-5)
    assert losses["features"].item() == pytest.approx((1 + 9) / 2 + 4, rel=1e-5)
    assert losses["labels"].item() == pytest.approx(3 * math.log(3), rel=1e-5)  # two branches + their mean


def test_multi_branch_on_digits_learns(demo_zoo):
    result = amalgam.amalgamate(demo_zoo, data="digits", method="multi-branch", epochs=4, progress=False,
                                labeled_fraction=0.05)
    history = result.history
    assert history[-1]["features"] < history[0]["features"] and history[-1]["soft"] < history[0]["soft"]
    assert result.metrics["student"]["accuracy"] > 0.6
    assert len(result.student.member_names) == 2


# --- ODS (§8) -------------------------------------------------------------------------------------------------------


def test_ods_perturbation_has_rms_eta_per_sample_and_stays_in_range():
    torch.manual_seed(0)
    linear = torch.nn.Linear(3 * 4 * 4, 5)

    def logits_of(x):
        return linear(x.flatten(1))

    images = torch.full((6, 3, 4, 4), 0.5)
    eta = 0.01
    moved = ods_perturbation(images, logits_of, temperature=4.0, step_size=eta)
    rms = (moved - images).flatten(1).norm(dim=1) / math.sqrt(3 * 4 * 4)
    assert rms.tolist() == pytest.approx([eta] * 6, rel=1e-4)
    confident = ods_perturbation(images, logits_of, temperature=4.0, step_size=eta, confidence=True)
    top = (logits_of(images) / 4.0).softmax(-1).max(-1).values
    rms = (confident - images).flatten(1).norm(dim=1) / math.sqrt(3 * 4 * 4)
    assert rms.tolist() == pytest.approx((eta * top).tolist(), rel=1e-4)
    edges = torch.randint(0, 2, (6, 3, 4, 4)).float()
    far = ods_perturbation(edges, logits_of, temperature=4.0, step_size=0.5)
    assert far.min() >= 0 and far.max() <= 1 and not torch.equal(far, edges)


def test_ods_without_perturbation_is_per_member_kd(demo_zoo):
    teachers = [load_teacher(folder) for folder in demo_zoo]
    space = LabelSpace.union([t.class_names for t in teachers])
    method = create_method("ods", space, teachers, {"perturbation": "none", "alpha": 0.75, "temperature": 2.0})
    images = torch.rand(4, 1, 8, 8)
    assert method.perturb(images) is images
    heads = {name: torch.randn(4, 10) for name in method.head_names}
    labels = torch.tensor([3, -1, 7, -1])
    losses = method(StepInputs(heads, [], labels, images))
    kd = sum(kd_loss(heads[name], target, 2.0) for name, target in zip(
        method.head_names, placed_targets([t(images).logits for t in teachers], method.indices(), 2.0, 10)))
    ce = sum(masked_cross_entropy(heads[name], labels) for name in method.head_names)
    assert losses["soft"].item() == pytest.approx(0.75 * kd.item(), rel=1e-5)
    assert losses["labels"].item() == pytest.approx(0.25 * ce.item(), rel=1e-5)
    ods = create_method("ods", space, teachers, {"step_size": 0.01})
    inner = 0.25 + 0.5 * images  # no value within 0.08 (sqrt(D) * eta) of 0 or 1: nothing clipped
    moved = ods.perturb(inner)
    assert (moved - inner).flatten(1).norm(dim=1).tolist() == pytest.approx([0.01 * 8] * 4, rel=1e-3)


def test_ods_on_digits_learns(demo_zoo, tmp_path):
    result = amalgam.amalgamate(demo_zoo, data="digits", method="ods", epochs=4, progress=False,
                                labeled_fraction=0.05, knowledge_cache=tmp_path / "knowledge")
    # it runs the teachers itself on perturbed batches: no teacher outputs were computed for the cache
    assert not (tmp_path / "knowledge").exists() or not any((tmp_path / "knowledge").iterdir())
    assert result.history[-1]["soft"] < result.history[0]["soft"]
    assert result.metrics["student"]["accuracy"] > 0.6


# --- many teachers from one (§10e) ----------------------------------------------------------------------------------


class ResidualBlock(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = torch.nn.Linear(width, width)

    def forward(self, x):
        return x + self.body(x)


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Linear(4, 3)  # changes the width: not a block
        self.stages = torch.nn.Sequential(ResidualBlock(3), ResidualBlock(3), ResidualBlock(3))
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


def test_residual_blocks_are_found_and_a_skipped_block_is_its_skip_connection():
    torch.manual_seed(0)
    toy = Toy()
    assert residual_blocks(toy, torch.rand(1, 4), toy) == ["stages.0", "stages.1", "stages.2"]
    x = torch.rand(5, 4)
    with skipped(toy, ["stages.1"]):
        without = toy(x)
    expected = toy.head(toy.stages[2](toy.stages[0](toy.stem(x))))
    assert torch.allclose(without, expected)
    assert torch.allclose(toy(x), toy.head(toy.stages(toy.stem(x))))  # the hooks are gone


def test_stochastic_teachers_draw_sub_networks_and_with_survival_one_are_soft_targets(demo_zoo):
    teachers = [load_teacher(folder) for folder in demo_zoo]
    space = LabelSpace.union([t.class_names for t in teachers])
    method = create_method("stochastic-teachers", space, teachers, {"survival": 0.5})
    assert method.blocks == [["layer1.0"], ["vit.layers.0", "vit.layers.1", "vit.layers.2"]]
    torch.manual_seed(0)
    draws = [method.sample_skipped()[1] for _ in range(2000)]
    rates = [sum(path in d for d in draws) / len(draws) for path in method.blocks[1]]
    assert rates == pytest.approx([1 - p for p in survival_probabilities(3, 0.5)], abs=0.04)  # 1/6, 1/3, 1/2
    whole = create_method("stochastic-teachers", space, teachers, {"survival": 1.0, "alpha": 0.9})
    kd = create_method("soft-targets", space, teachers, {"soft_weight": 0.9, "label_weight": 0.1})
    images, logits, labels = torch.rand(4, 1, 8, 8), torch.randn(4, 10), torch.tensor([1, -1, 6, -1])
    got = whole(StepInputs(logits, [], labels, images))
    expected = kd(StepInputs(logits, [t(images) for t in teachers], labels, images))
    assert {k: v.item() for k, v in got.items()} == pytest.approx({k: v.item() for k, v in expected.items()})


def test_stochastic_teachers_on_digits_learn(demo_zoo):
    result = amalgam.amalgamate(demo_zoo, data="digits", method="stochastic-teachers", epochs=4, progress=False,
                                labeled_fraction=0.05)
    assert result.history[-1]["soft"] < result.history[0]["soft"]
    assert result.metrics["student"]["accuracy"] > 0.6


# --- collaboration by competition (SOKA, §5) ----------------------------------------------------------------------


def _soka_backward(demo_zoo, collaboration_weight):
    teachers = [load_teacher(folder) for folder in demo_zoo]
    space = LabelSpace.union([t.class_names for t in teachers])
    method = create_method("soka", space, teachers, {"collaboration_weight": collaboration_weight,
                                                     "feature_weight": 0.0, "warmup_steps": 100})
    torch.manual_seed(0)
    student = Student("test_efficientnet", class_names=space.class_names, channels=1,
                      heads=method.needs().heads, serve=method.needs().serve)
    images = torch.rand(4, 1, 8, 8)
    shared = student.model(student.input_spec(images))
    outputs = {name: head(shared) for name, head in student.heads.items()}
    losses = method(StepInputs(outputs, [t(images) for t in teachers], torch.full((4,), -1), images,
                               {"body": shared}))
    sum(losses.values()).backward()
    body = torch.cat([p.grad.flatten() for p in student.model.parameters() if p.grad is not None])
    heads = torch.cat([p.grad.flatten() for p in student.heads.parameters()])
    return body, heads, method


def test_soka_heads_take_the_task_gradient_and_the_body_its_collaboration_share(demo_zoo):
    body_free, heads_free, _ = _soka_backward(demo_zoo, 0.0)
    assert body_free.abs().max().item() == 0.0 and heads_free.abs().max().item() > 0  # competition: heads only
    body_full, heads_full, _ = _soka_backward(demo_zoo, 1.0)
    body_share, heads_share, method = _soka_backward(demo_zoo, 0.05)
    assert torch.allclose(heads_share, heads_full)
    assert torch.allclose(body_share, 0.05 * body_full, rtol=1e-4, atol=1e-7)
    assert method.needs().serve == "0-cnn-digits-0to4"


def test_soka_task_weights_stay_non_negative_and_sum_to_one(demo_zoo):
    teachers = [load_teacher(folder) for folder in demo_zoo]
    space = LabelSpace.union([t.class_names for t in teachers])
    method = create_method("soka", space, teachers)
    with torch.no_grad():
        method.task_weights.copy_(torch.tensor([-0.2, 0.6]))  # as an optimizer step may leave them
    assert method.normalized_weights().tolist() == [0.0, 1.0]
    with torch.no_grad():
        method.task_weights.copy_(torch.tensor([0.3, 0.9]))
    assert method.normalized_weights().tolist() == pytest.approx([0.25, 0.75])


def test_soka_on_digits_teaches_each_head_its_teachers_task(demo_zoo):
    result = amalgam.amalgamate(demo_zoo, data="digits", method="soka", epochs=4, progress=False,
                                method_options={"warmup_steps": 10})
    history = result.history
    assert history[-1]["tasks"] < history[0]["tasks"] and "gradnorm" in history[-1]
    weights = [history[-1][f"task_weight/{t.name}"] for t in result.teachers]
    assert min(weights) >= 0 and sum(weights) == pytest.approx(1.0)
    student = result.student.eval()
    digits = load_digits().test
    images = torch.stack([digits[i][0] for i in range(len(digits))])
    labels = torch.tensor([int(digits[i][1]) for i in range(len(digits))])
    outputs = student(images)
    heads = result.metrics["student"]["heads"]  # each head on its teacher's classes, beside that teacher
    for head, low in zip(student.head_specs, (0, 5)):
        own = (labels >= low) & (labels < low + 5)  # each teacher's (and head's) five digits
        by_hand = (outputs[head.name][own].argmax(-1) + low == labels[own]).float().mean().item()
        assert heads[head.name] == {"accuracy_on_own_classes": pytest.approx(by_hand), "test_samples": 180}
        assert by_hand > 0.8
    assert "its head 1-vit-digits-5to9" in amalgam.format_results(result.metrics)
