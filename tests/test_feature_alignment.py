"""Feature alignment (selective learning's FAMs, §4): layers paired by depth, adapters sized by a probe batch,
for a timm CNN and a transformers ViT teacher (maps and tokens of different widths), learning on real digits."""

import pytest
import torch

from demo_methods import demo_setup, demo_student
from amalgam.engine import TrainConfig, train
from amalgam.errors import MethodError
from amalgam.knowledge import LiveSignals
from amalgam.methods import create_method
from amalgam.methods.features.layers import as_map, spread_taps, unit_norm_penalty


def test_unit_norm_penalty_by_hand():
    # filters with squared norms 4 and 1: mean((4 - 1)^2, (1 - 1)^2) = 4.5
    assert unit_norm_penalty([torch.tensor([[2.0, 0.0], [0.0, 1.0]])]).item() == pytest.approx(4.5)


def test_vit_tokens_become_a_grid_in_token_order():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3)  # class token + 2x2 patches, width 3
    grid = as_map(tokens)
    assert grid.shape == (2, 3, 2, 2)
    assert torch.equal(grid[0, :, 0, 1], tokens[0, 2])  # patch 1 (after the class token) sits at row 0, column 1


def test_token_grids_are_contiguous_maps_like_the_students():
    # a transposed view would be channels-last in memory: every conv, cat and loss beside NCHW maps slows down
    assert as_map(torch.randn(4, 17, 8)).is_contiguous()
    assert as_map(torch.randn(4, 6, 8)).is_contiguous()


@pytest.fixture(scope="module")
def setup(demo_zoo):
    return demo_setup(demo_zoo)[:3]


def test_fams_are_sized_from_the_models_and_the_alignment_loss_falls(setup):
    teachers, space, transfer = setup
    assert [t.library for t in teachers] == ["timm", "transformers"]
    torch.manual_seed(0)
    method = create_method("selective-learning", space, teachers, {"feature_weight": 1.0, "feature_layers": 2})
    student = demo_student(space)
    taps = method.needs().taps_per_teacher(len(teachers))
    assert taps == [spread_taps(t.tap_names(), 2) for t in teachers]
    assert method.needs().student_stages == 2
    history = train(student, method, LiveSignals(teachers, taps), transfer,
                    TrainConfig(epochs=4, batch_size=32, lr=3e-3), progress=False)
    # student stages 3 and 5 of test_efficientnet (32 and 64 channels) -> common widths 16 and 32
    assert method.layers.student == [2, 4]
    assert [(f.in_channels, f.out_channels) for f in method.student_fams] == [(32, 16), (64, 32)]
    cnn_widths = [teachers[0](torch.zeros(1, 1, 8, 8), taps=[t]).features[t].shape[1] for t in method.layers.teacher[0]]
    assert [f.in_channels for f in method.teacher_fams[0]] == cnn_widths
    vit_width = teachers[1].model.config.hidden_size  # tokens: the width is the hidden size
    assert [(f.in_channels, f.out_channels) for f in method.teacher_fams[1]] == [(vit_width, 16), (vit_width, 32)]
    features = [h["features"] for h in history]
    assert features[-1] < 0.7 * features[0], features
    # our hooks never outlive a call (transformers keeps hooks of its own for hidden states)
    models = [student] + [t.model for t in teachers]
    assert not [h for model in models for m in model.modules() for h in m._forward_hooks.values()
                if "capture_features" in h.__qualname__]


def test_the_fams_are_trained_with_the_student(setup):
    teachers, space, transfer = setup

    def fams_after(lr):
        torch.manual_seed(0)
        method = create_method("selective-learning", space, teachers, {"feature_weight": 1.0})
        student = demo_student(space)
        train(student, method, LiveSignals(teachers, method.needs().taps_per_teacher(len(teachers))), transfer,
              TrainConfig(epochs=1, batch_size=32, lr=lr), progress=False)
        return [p.detach().clone() for p in method.parameters()]

    initial, trained = fams_after(1e-12), fams_after(3e-3)  # setup() runs after the run's seed: same start
    assert len(initial) == len(trained) > 0
    assert all(torch.allclose(a, b, atol=1e-8) for a, b in zip(initial, fams_after(1e-12)))
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(initial, trained))


def test_explicit_layers_are_checked(setup):
    teachers, space, _ = setup
    with pytest.raises(MethodError, match="teacher_layers needs 2 lists"):
        create_method("selective-learning", space, teachers, {"feature_weight": 1.0, "teacher_layers": [["layer4"]]})
