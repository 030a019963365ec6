"""Feature-level amalgamation methods of issue 6: common feature learning (§2), autoencoder amalgamation (§3) and
relative dissimilarity with teacher voting (§1). Their math against hand-computed values, their adapters sized for a
timm CNN + transformers ViT teacher pair (maps and tokens of different widths), and their losses falling on digits."""

import math

import pytest
import torch

from demo_methods import demo_setup, demo_student, train_briefly
from amalgam.errors import MethodError, StudentError
from amalgam.methods import StepInputs, create_method
from amalgam.methods.base import Setup
from amalgam.methods.features.cfl import MMD_SIGMAS, CommonFeatureBlock, multi_kernel_mmd, multi_kernel_mmds
from amalgam.methods.features.dissimilarity import relative_dissimilarity_loss, squared_distances, triplet_votes
from amalgam.methods.features.layers import Conv3x3, feature_vector
from amalgam.students.stages import resolve_stages
from amalgam.teachers import LabelSpace

# --- multi-kernel MMD (§0.1) -------------------------------------------------------------------------------------


def test_mmd_of_a_batch_with_itself_is_zero():
    x = torch.randn(8, 3, 2, 2, generator=torch.Generator().manual_seed(0))  # seeded: the tolerance holds for it
    assert multi_kernel_mmd(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert multi_kernel_mmd(x, 5 * x).item() == pytest.approx(0.0, abs=1e-6)  # rows are L2-normalised first


def test_mmd_2x2_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # |x0 - x1|^2 = 2, every other pair at distance 0 (clamped to 1e-12): per kernel, with k0 = k(distance 1e-12)
    # and k2 = k(distance 2): mean Kxx = (2 k0 + 2 k2) / 4, mean Kyy = k0, mean Kxy = (2 k0 + 2 k2) / 4,
    # so MMD^2 = (k0 - k2) / 2, summed over the kernels
    def k(d, s):
        return math.exp(-d / (2 * s * s))

    expected = sum((k(1e-12, s) - k(2.0, s)) / 2 for s in MMD_SIGMAS)
    assert expected == pytest.approx(2.5 + (1 - math.exp(-1)) / 2 + (1 - math.exp(-0.25)) / 2, abs=1e-6)
    assert multi_kernel_mmd(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert multi_kernel_mmd(x, y, sigmas=[1.0]).item() == pytest.approx((1 - math.exp(-1)) / 2, rel=1e-5)
    assert multi_kernel_mmd(y, x).item() == pytest.approx(expected, rel=1e-5)  # symmetric
    with pytest.raises(ValueError, match="one size"):
        multi_kernel_mmd(x, y[:1])


def test_mmds_against_several_batches_are_each_pairs_mmd_from_its_own_three_kernels():
    """One kernel matrix over the anchor and every other batch gives, per other batch, what the pair's own
    kernels give (the formula of §0.1 written out here without the shared matrix)."""
    generator = torch.Generator().manual_seed(1)
    anchor, *others = (torch.randn(5, 4, generator=generator) + shift for shift in (0.0, 0.0, 1.0, 3.0))

    def pair(x, y, sigmas=(0.1, 1.0)):
        x, y = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
        k = lambda a, b: sum(torch.exp(-torch.cdist(a, b).pow(2).clamp(min=1e-12) / (2 * s * s)) for s in sigmas)
        return (k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()).clamp(min=0)

    got = multi_kernel_mmds(anchor, others, sigmas=(0.1, 1.0))
    assert torch.allclose(torch.stack(got), torch.stack([pair(anchor, o) for o in others]), atol=1e-5)
    assert got[0] < got[1] < got[2]  # farther batches, larger discrepancy


def test_cfl_codes_of_the_stacked_batch_are_each_maps_own_code():
    torch.manual_seed(0)
    block = CommonFeatureBlock(student_width=6, teacher_widths=[4, 10], hidden=3)
    student_map, *teacher_maps = (torch.randn(2, w, 3, 3) for w in (6, 4, 10))
    h_s, h_teachers = block.codes(student_map, teacher_maps)
    assert torch.allclose(h_s, block.extractor(block.align_student(student_map)), atol=1e-6)
    for align, f, h in zip(block.align_teachers, teacher_maps, h_teachers):
        assert torch.allclose(h, block.extractor(align(f)), atol=1e-6)


# --- relative dissimilarity and voting (§1) ----------------------------------------------------------------------

LINE_A = torch.tensor([[0.0], [1.0], [3.0]])  # anchor 0: 1 is closer; anchor 1: 0 is closer; anchor 2: 1 is closer
LINE_B = torch.tensor([[0.0], [3.0], [1.0]])  # disagrees with A on every anchor


def test_voting_with_identical_teachers_equals_the_single_teacher_ordering():
    g = torch.randn(12, 5)
    one = triplet_votes([g])
    three = triplet_votes([g, g, g])
    assert torch.equal(torch.sign(three), torch.sign(one)) and torch.equal(three, 3 * one)
    student = torch.randn(12, 7, requires_grad=True)  # another width: only distances are compared
    for vote in ("hard", "soft"):
        single = relative_dissimilarity_loss(student, one, 1, margin=0.1, vote=vote)
        assert relative_dissimilarity_loss(student, three, 3, margin=0.1, vote=vote).item() == pytest.approx(
            single.item())


def test_distances_between_wide_features_never_make_a_batch_x_batch_x_width_tensor():
    g = torch.randn(128, 4096)
    with torch.profiler.profile(profile_memory=True) as prof:
        d = squared_distances(g)
    peak = max(event.self_cpu_memory_usage for event in prof.key_averages())
    assert peak < 8 * 2**20  # the differences alone would be 128 x 128 x 4096 floats = 256 MiB
    n = torch.nn.functional.normalize(g, dim=1)
    assert torch.allclose(d, (n[:, None] - n[None]).pow(2).sum(-1), atol=1e-5)


def test_a_3x3_convolution_on_a_1x1_map_does_a_ninth_of_the_work_with_the_same_gradients():
    from torch.utils.flop_counter import FlopCounterMode

    conv = Conv3x3(64, 32)
    x = torch.randn(8, 64, 1, 1, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        conv(x).square().sum().backward()
    assert counter.get_total_flops() * 9 <= 2 * 8 * 64 * 32 * 9 * 3  # forward + 2 backward, centre taps only
    reference = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    grad_weight, grad_input = conv.weight.grad.clone(), x.grad.clone()
    conv.weight.grad, x.grad = None, None
    reference.square().sum().backward()
    assert torch.allclose(grad_weight, conv.weight.grad, atol=1e-5) and torch.allclose(grad_input, x.grad, atol=1e-5)


def test_relative_dissimilarity_by_hand():
    votes = triplet_votes([LINE_A], normalize=False)
    assert (votes[0, 1, 2], votes[1, 0, 2], votes[2, 1, 0]) == (1, 1, 1)
    assert (votes > 0).sum() == 3 and (votes < 0).sum() == 3  # each triplet once per orientation
    student = torch.tensor([[0.0], [2.0], [1.0]])
    # anchor 0: [d(0,1)=4 - d(0,2)=1]_+ = 3; anchor 1: [d(1,0)=4 - d(1,2)=1]_+ = 3; anchor 2: [d(2,1)=1 - d(2,0)=1]_+ = 0
    loss = relative_dissimilarity_loss(student, votes, 1, margin=0.0, normalize=False)
    assert loss.item() == pytest.approx(2.0)
    assert relative_dissimilarity_loss(student, votes, 1, margin=0.5, normalize=False).item() == pytest.approx(2.5)
    # the student with the teacher's own features satisfies every triplet (delta = 0)
    assert relative_dissimilarity_loss(LINE_A, votes, 1, margin=0.0, normalize=False).item() == 0.0


def test_the_written_out_triplet_gradient_equals_autograd_through_the_plain_expression():
    torch.manual_seed(0)
    teachers = [torch.randn(16, 5), torch.randn(16, 9), torch.randn(16, 3)]
    votes = triplet_votes(teachers)
    assert votes.dtype == torch.int8 and votes.abs().max() == 3
    for vote in ("hard", "soft"):
        student = torch.randn(16, 7, requires_grad=True)
        relative_dissimilarity_loss(student, votes, 3, margin=0.1, vote=vote).backward()
        fast = student.grad.clone()
        student.grad = None
        d = squared_distances(student)
        hinge = (d[:, :, None] - d[:, None, :] + 0.1).clamp(min=0.0)
        weights = (votes > 0).float() if vote == "hard" else votes.clamp(min=0).float() / 3
        plain = (hinge * weights).sum() / (votes > 0).sum()
        plain.backward()
        assert torch.allclose(fast, student.grad, rtol=1e-5, atol=1e-7), vote  # the distances are float32
        assert relative_dissimilarity_loss(student, votes, 3, vote=vote).item() == pytest.approx(plain.item())


def test_the_triplet_loss_keeps_no_per_triplet_tensor_for_its_backward():
    batch = 48
    votes = triplet_votes([torch.randn(batch, 5), torch.randn(batch, 9), torch.randn(batch, 3)])
    student = torch.randn(batch, 7, requires_grad=True)
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        relative_dissimilarity_loss(student, votes, 3, vote="hard").backward()
    # the B x B coefficients and the distances' own B x B and B x D matrices; a hinge mask alone is B^3 bytes
    assert max(saved) <= batch * batch * 4 and sum(saved) <= 6 * batch * batch * 4 < batch ** 3


def test_conflicting_teachers_tie_and_a_majority_wins():
    student = torch.tensor([[0.0], [2.0], [1.0]], requires_grad=True)
    tied = triplet_votes([LINE_A, LINE_B], normalize=False)
    assert not tied.any()
    loss = relative_dissimilarity_loss(student, tied, 2, margin=0.0, normalize=False)
    assert loss.item() == 0.0 and loss.requires_grad
    majority = triplet_votes([LINE_A, LINE_B, LINE_A], normalize=False)
    assert torch.equal(torch.sign(majority), triplet_votes([LINE_A], normalize=False))
    assert relative_dissimilarity_loss(student, majority, 3, margin=0.0, normalize=False).item() == pytest.approx(2.0)
    # soft vote: each triplet weighted by |1 - 1 + 1| / 3
    assert relative_dissimilarity_loss(student, majority, 3, margin=0.0, normalize=False,
                                       vote="soft").item() == pytest.approx(2.0 / 3)


# --- the methods on the demo teachers (timm CNN on 0-4, transformers ViT on 5-9) -----------------------------------


@pytest.fixture(scope="module")
def setup(demo_zoo):
    return demo_setup(demo_zoo)[:3]


def test_cfl_blocks_are_sized_for_a_cnn_and_a_vit_and_its_loss_falls(setup):
    teachers, _, _ = setup
    method, _, history = train_briefly("cfl", {}, setup)
    # the deepest stage of each: student blocks.4 (64 ch, 1x1), CNN layer4 (96 ch, 1x1), ViT tokens (64 wide, 4x4)
    assert method.layers.student == [4]
    assert method.needs().taps_per_teacher(2) == [["layer4"], ["hidden_states.3"]]
    block = method.blocks[0]
    assert (block.align_student[0].in_channels, block.align_student[0].out_channels) == (64, 256)  # 2h, h = 128
    assert [a[0].in_channels for a in block.align_teachers] == [96, teachers[1].model.config.hidden_size]
    assert [d[-1].out_channels for d in block.decoders] == [96, 64]
    assert [b.body[-1].out_channels for b in block.extractor] == [128, 128, 128]
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], history
    assert history[-1]["reconstruction"] < history[0]["reconstruction"], history
    assert all(h["mmd"] > 0 for h in history)


def test_the_methods_parts_train_in_their_own_group_at_parts_lr(setup):
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from amalgam.engine import TrainConfig, train
    from amalgam.knowledge import LiveSignals

    groups: list[list[tuple[str, float]]] = []
    before: list[list[torch.Tensor]] = []

    def record(optimizer, args, kwargs):
        groups.append([(g["name"], g["lr"]) for g in optimizer.param_groups])
        before.extend([p.detach().clone() for p in g["params"]] for g in optimizer.param_groups)

    teachers, space, transfer = setup
    torch.manual_seed(0)
    method = create_method("cfl", space, teachers, {"hidden": 8})
    student = demo_student(space)
    handle = register_optimizer_step_pre_hook(record)
    try:  # 32 samples in one batch: one optimizer step
        train(student, method, LiveSignals(teachers, method.needs().taps_per_teacher(len(teachers))),
              torch.utils.data.Subset(transfer, range(32)),
              TrainConfig(epochs=1, batch_size=32, lr=1e-4, parts_lr=1e-2, weight_decay=0.0), progress=False)
    finally:
        handle.remove()
    assert groups == [[("student", 1e-4), ("method", 1e-2)]]
    parts = [p for p in method.parameters() if p.requires_grad]
    assert len(before[1]) == len(parts) > 0  # the group holds exactly the method's parts (built by setup())
    # Adam's first step moves a weight with a gradient by lr * g / (|g| + eps), about lr: each group its own
    for model_parts, initial, lr in ((student.parameters(), before[0], 1e-4), (parts, before[1], 1e-2)):
        steps = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(model_parts, initial)])
        assert steps.max().item() == pytest.approx(lr, rel=1e-3)


def test_cfl_mmd_is_zero_when_the_student_has_the_teachers_features(setup):
    teachers, space, transfer = setup
    method = create_method("cfl", space, [teachers[0], teachers[0]], {"hidden": 8, "teacher_layers": [["layer3"]] * 2,
                                                                       "student_layers": [3]})
    images = torch.stack([transfer[i][0] for i in range(6)])
    out = teachers[0](images, taps=["layer3"])
    feature = out.features["layer3"]
    method.setup(Setup(student_stages=[3], student_features={3: feature}, teacher_outputs=[out, out]))
    block = method.blocks[0]
    h_s, (h_0, _) = block.codes(feature, [feature, feature])
    assert multi_kernel_mmd(h_s, h_0).item() > 0
    for align in block.align_teachers:  # the student's and both teachers' align layers made one and the same
        align.load_state_dict(block.align_student.state_dict())
    step = StepInputs(torch.zeros(6, space.num_classes), [out, out], torch.full((6,), -1), images,
                      {3: feature})
    mmd, reconstruction = method.common_feature_terms(step)
    assert mmd.item() == pytest.approx(0.0, abs=1e-5) and reconstruction.item() > 0


def test_autoencoders_are_sized_for_a_cnn_and_a_vit_and_the_loss_falls(setup):
    method, _, history = train_briefly("autoencoder-amalgamation", {}, setup)
    assert method.layers.student == [1, 3, 4]
    assert method.needs().taps_per_teacher(2) == [["layer1", "layer3", "layer4"],
                                                  ["hidden_states.1", "hidden_states.2", "hidden_states.3"]]
    # concatenated teachers (CNN width + ViT width 64) -> the student's width at that depth
    shapes = [(ae.encoder.in_channels, ae.encoder.out_channels, ae.decoder.out_channels) for ae in method.autoencoders]
    assert shapes == [(32 + 64, 24, 96), (192 + 64, 48, 256), (96 + 64, 64, 160)]
    assert [ae.student_adapter.in_channels for ae in method.autoencoders] == [24, 48, 64]
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], history
    assert history[-1]["reconstruction"] < 0.7 * history[0]["reconstruction"], history


def _identical_teacher_step(setup, width_of_code=None):
    """Two copies of the CNN teacher at layer2 (48 channels, 4x4), and a student map of the code's width."""
    teachers, _, transfer = setup
    twins = [teachers[0], teachers[0]]
    space = LabelSpace.union([t.class_names for t in twins])
    method = create_method("autoencoder-amalgamation", space, twins,
                           {"teacher_layers": [["layer2"], ["layer2"]], "student_layers": [2]})
    images = torch.stack([transfer[i][0] for i in range(32)])
    out = teachers[0](images, taps=["layer2"])
    width = out.features["layer2"].shape[1]
    student = torch.randn(32, width_of_code or width, 4, 4)
    method.setup(Setup(student_stages=[2], student_features={2: student}, teacher_outputs=[out, out]))
    step = StepInputs(torch.zeros(32, space.num_classes), [out, out], torch.full((32,), -1), images,
                      {2: student})
    return method, step, out.features["layer2"]


def test_autoencoder_reconstructs_identical_teachers_exactly_with_mean_encoder_and_copy_decoder(setup):
    method, step, feature = _identical_teacher_step(setup)
    ae = method.autoencoders[0]
    c = feature.shape[1]
    eye = torch.eye(c)[:, :, None, None]
    with torch.no_grad():
        ae.encoder.weight.copy_(torch.cat([eye, eye], dim=1) / 2)  # A = (F_1 + F_2) / 2 = F
        ae.decoder.weight.copy_(torch.cat([eye, eye], dim=0))  # D(A) = [A; A]
        ae.encoder.bias.zero_(), ae.decoder.bias.zero_()
    code, reconstruction = ae([feature, feature])
    assert torch.allclose(code, feature, atol=1e-6) and reconstruction.item() == pytest.approx(0.0, abs=1e-10)
    code_loss, total = method.layer_terms(step)
    assert total.item() == pytest.approx(0.0, abs=1e-10) and code_loss.item() > 0


def test_autoencoder_learns_to_compress_identical_teachers_to_half_their_width(setup):
    method, _, feature = _identical_teacher_step(setup)  # code width 48 = one teacher's, half the concatenation
    ae = method.autoencoders[0]
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(list(ae.encoder.parameters()) + list(ae.decoder.parameters()), lr=1e-2)
    first = None
    for _ in range(150):
        _, loss = ae([feature, feature])
        first = first or loss.item()
        optimizer.zero_grad(), loss.backward(), optimizer.step()
    assert loss.item() < 0.01 * first, (first, loss.item())


def test_progressive_schedule_switches_layers_on_bottom_to_top_then_the_output(setup):
    teachers, space, _ = setup
    method = create_method("autoencoder-amalgamation", space, teachers, {"schedule": "progressive"})
    seen = []
    for epoch in range(1, 9):  # 3 layers + the output: stages start at 0, 1/4, 1/2 and 3/4 of the run
        method.start_epoch(epoch, 8)
        seen.append((method.active_layers, method.output_active))
    assert seen == [(1, False), (1, False), (2, False), (2, False), (3, False), (3, False), (3, True), (3, True)]
    method, _, history = train_briefly("autoencoder-amalgamation", {"schedule": "progressive"}, setup)
    assert [h["soft"] for h in history[:3]] == [0.0, 0.0, 0.0] and history[3]["soft"] > 0
    assert "labels" not in history[0] and history[-1]["reconstruction"] < history[0]["reconstruction"]


def test_relative_dissimilarity_pairs_widths_without_adapters_and_its_loss_falls(setup):
    teachers, _, transfer = setup
    method, _, history = train_briefly("relative-dissimilarity", {}, setup)
    assert not list(method.parameters())  # distances only: no regressor between 64, 96 and 64 x 16 features
    assert method.layers.student == [4]
    images = torch.stack([transfer[i][0] for i in range(4)])
    widths = [feature_vector(t(images, taps=taps).features[taps[0]]).shape[1]
              for t, taps in zip(teachers, method.needs().taps_per_teacher(len(teachers)))]
    assert widths == [96, 64 * 16]  # CNN 96 x 1 x 1; ViT tokens as a 4 x 4 grid, class token left out
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], history
    assert history[-1]["dissimilarity"] < history[0]["dissimilarity"], history


def test_stagewise_relative_dissimilarity_trains_the_hints_first(setup):
    _, _, history = train_briefly("relative-dissimilarity", {"stagewise": True}, setup)
    assert [h["soft"] for h in history[:2]] == [0.0, 0.0] and history[2]["soft"] > 0
    assert history[1]["dissimilarity"] < history[0]["dissimilarity"], history


@pytest.mark.parametrize("name", ["cfl", "autoencoder-amalgamation", "relative-dissimilarity"])
def test_wrong_layer_names_list_the_available_taps(setup, name):
    teachers, space, _ = setup
    with pytest.raises(MethodError, match=r"teacher 'cnn-digits-0to4' has no tap\(s\) \['layer9'\]; its taps are "
                                          r"\['act1', 'layer1', 'layer2', 'layer3', 'layer4'\]"):
        create_method(name, space, teachers, {"teacher_layers": [["layer9"], ["hidden_states.3"]]})
    with pytest.raises(MethodError, match="teacher_layers needs 2 lists"):
        create_method(name, space, teachers, {"teacher_layers": [["layer4"]]})
    method = create_method(name, space, teachers, {"student_layers": [9],
                                                   "teacher_layers": [["layer4"], ["hidden_states.3"]]})
    with pytest.raises(StudentError, match=r"the student has 5 stages .*; stage\(s\) \[9\] do not exist"):
        resolve_stages(demo_student(space), method.needs().student_stages)


def test_explicit_layers_override_the_pairing(setup):
    method, _, history = train_briefly("cfl", {"hidden": 16, "student_layers": [2, 3],
                                     "teacher_layers": [["layer2", "layer3"], ["hidden_states.1", "hidden_states.2"]]},
                             setup, epochs=1)
    assert method.layers.student == [2, 3]
    assert [b.align_student[0].in_channels for b in method.blocks] == [32, 48]
    assert [[a[0].in_channels for a in b.align_teachers] for b in method.blocks] == [[48, 64], [192, 64]]
    assert math.isfinite(history[0]["loss"])
