"""The class prior of the weighted-target methods (``class_prior``): the shift's math by hand, its fit on the
transfer set, the priors it reads, and its errors."""

import math

import pytest
import torch

from amalgam.errors import MethodError
from amalgam.methods import LabeledSet, create_method
from amalgam.methods.base import Setup
from amalgam.methods.targets.prior import fit_prior_shift, resolve_prior, shift_probabilities
from amalgam.teachers import LabelSpace, TeacherOutput
from tiny import tiny_teacher

SPACE = LabelSpace.union([["a", "b"], ["c", "d"]])
TEACHERS = [tiny_teacher(["a", "b"], "left"), tiny_teacher(["c", "d"], "right")]


def test_the_shift_of_two_classes_solves_the_balance_equation_computed_by_hand():
    # rows (0.9, 0.1) and (0.6, 0.4), even prior, sharpness 1: with a = exp(b_0 - b_1) the shifted rows' mass on
    # class 0 is 0.9a / (0.9a + 0.1) + 0.6a / (0.6a + 0.4), which must be 1 (half of two rows): a solves
    # 0.54 a^2 - 0.04 = 0 (multiply out), a = sqrt(0.04 / 0.54)
    shift = fit_prior_shift(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0.5, 0.5]), sharpness=1.0)
    assert float(shift[0] - shift[1]) == pytest.approx(math.log(math.sqrt(0.04 / 0.54)), abs=1e-4)
    assert float(shift.sum()) == pytest.approx(0.0, abs=1e-6)  # centred


def test_a_sharp_shift_matches_the_hard_counts_taking_the_least_sure_rows_first():
    # every row's argmax is class 0; an even prior must hand the two least sure of it to class 1
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    shift = fit_prior_shift(probs, torch.tensor([0.5, 0.5]), sharpness=50.0)
    assert shift_probabilities(probs, shift).argmax(dim=-1).tolist() == [0, 0, 1, 1]
    # log(0.7/0.3) < b_1 - b_0 < log(0.8/0.2): between the two middle rows' odds
    assert math.log(0.7 / 0.3) < float(shift[1] - shift[0]) < math.log(0.8 / 0.2)


def test_shift_probabilities_is_a_shift_of_logits_softened_by_the_temperature():
    logits, shift = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0.5, -0.5, 0.0])
    assert torch.allclose(shift_probabilities((logits / 4).softmax(-1), shift, 4.0),
                          ((logits + shift) / 4).softmax(-1), atol=1e-6)


def test_priors_uniform_from_labels_and_from_a_table_by_class_name():
    assert resolve_prior("uniform", SPACE, None).tolist() == [0.25] * 4
    # counts 2, 0, 1, 1 plus one each: 3, 1, 2, 2 of 8
    assert resolve_prior("labels", SPACE, torch.tensor([0, 0, 2, 3, -1])).tolist() == [3 / 8, 1 / 8, 2 / 8, 2 / 8]
    assert resolve_prior({"A": 1, "b": 1, "c": 2, "d ": 4}, SPACE, None).tolist() == [0.125, 0.125, 0.25, 0.5]
    with pytest.raises(MethodError, match=r"lacks \['d'\].*no teacher knows: \['e'\]"):
        resolve_prior({"a": 1, "b": 1, "c": 1, "e": 1}, SPACE, None)
    with pytest.raises(MethodError, match="positive number"):
        resolve_prior({"a": 1, "b": 0, "c": 1, "d": 1}, SPACE, None)
    with pytest.raises(MethodError, match="labeled_fraction > 0"):
        resolve_prior("labels", SPACE, None)


def _over_claiming_logits(n: int = 400) -> list[torch.Tensor]:
    """The left teacher is sure of "a" on every image; the right one spreads its two classes evenly: the plain
    mean calls nearly every image "a"."""
    generator = torch.Generator().manual_seed(0)
    left = torch.stack([torch.full((n,), 3.0), torch.zeros(n)], dim=1) + 0.1 * torch.randn(n, 2, generator=generator)
    right = torch.randn(n, 2, generator=generator)
    return [left, right]


def _sharpened_shares(target: torch.Tensor, sharpness: float) -> list[float]:
    """What the shift matches to the prior: the classes' shares of the sharpened target over the rows."""
    return (sharpness * target.log()).softmax(dim=-1).mean(dim=0).tolist()


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_soft_targets_with_a_uniform_prior_spread_the_argmax_over_the_classes(temperature):
    logits = _over_claiming_logits()
    plain = create_method("soft-targets", SPACE, TEACHERS, {"temperature": temperature})
    plain.setup(Setup(transfer_logits=logits))
    method = create_method("soft-targets", SPACE, TEACHERS, {"temperature": temperature, "class_prior": "uniform",
                                                             "prior_sharpness": 20.0})
    method.setup(Setup(transfer_logits=logits))
    for tau in (temperature, 1.0):  # the student's target, and the consistency term's at temperature 1
        assert _sharpened_shares(method.target(logits, temperature=tau), 20.0) == pytest.approx([0.25] * 4, abs=1e-3)
    # at temperature 1 the rows differ enough for the hard counts to follow
    shares = torch.bincount(method.target(logits, temperature=1.0).argmax(-1), minlength=4) / len(logits[0])
    assert shares.tolist() == pytest.approx([0.25] * 4, abs=0.03)
    assert torch.bincount(plain.target(logits).argmax(-1), minlength=4)[0] > 0.9 * len(logits[0])
    # the soft target is the plain one with each class reweighted, renormalised
    ratio = method.target(logits) / plain.target(logits)
    assert torch.allclose(ratio / ratio[:, :1], ratio[:1] / ratio[:1, :1], rtol=1e-4)


def test_the_labels_prior_reads_the_labeled_fraction_and_trust_learner_keeps_its_trust():
    logits = _over_claiming_logits()
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 30 + [3] * 30)  # shares (11, 11, 31, 31) / 84 with the +1
    labeled = LabeledSet(torch.zeros(80, 1, 2, 2), labels, [TeacherOutput(z[:80]) for z in logits], torch.arange(80))
    method = create_method("trust-learner", SPACE, TEACHERS, {"class_prior": "labels", "prior_sharpness": 20.0,
                                                              "trust_epochs": 5})
    method.setup(Setup(labeled, logits))
    assert _sharpened_shares(method.target(logits), 20.0) == pytest.approx([11 / 84, 11 / 84, 31 / 84, 31 / 84],
                                                                         abs=1e-3)


def test_a_class_prior_needs_the_cached_transfer_set():
    method = create_method("soft-targets", SPACE, TEACHERS, {"class_prior": "uniform"})
    with pytest.raises(MethodError, match="class_prior .* cache_teachers=True"):
        method.setup(Setup())
    with pytest.raises(MethodError, match="prior_sharpness must be positive"):
        create_method("soft-targets", SPACE, TEACHERS, {"prior_sharpness": 0.0})
    with pytest.raises(MethodError, match="class_prior must be"):
        create_method("soft-targets", SPACE, TEACHERS, {"class_prior": "balanced"})


def test_every_weighted_target_method_of_the_registry_fits_the_prior_and_a_setup_override_is_refused():
    from amalgam.methods import available_methods
    from amalgam.methods.targets.soft_targets import SoftTargets, WeightedTargets

    # the registered weighted-target methods implement prepare(), so setup() fits the prior after it
    for name, cls in available_methods().items():
        if issubclass(cls, WeightedTargets):
            assert cls.setup is WeightedTargets.setup, name

    class OwnSetup(SoftTargets):
        name = "own-setup"

        def setup(self, ctx):
            pass

    with pytest.raises(MethodError, match="overrides setup.*implement prepare"):
        OwnSetup(SPACE, TEACHERS, class_prior="uniform")
    OwnSetup(SPACE, TEACHERS)  # without a prior, nothing is skipped
