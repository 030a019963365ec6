"""Relative dissimilarity with teacher voting: the student keeps the teachers' ordering of distances between
examples, so no regressor between feature widths is needed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F

from amalgam.methods.base import Needs, Setup, StepInputs
from amalgam.methods.features.layers import LayerOptions, LayerPairs, feature_vector
from amalgam.methods.registry import register_method
from amalgam.methods.targets.soft_targets import SoftTargets
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher


def triplet_votes(features: Sequence[torch.Tensor], normalize: bool = True) -> torch.Tensor:
    """The teachers' summed votes on every in-batch triplet (relative dissimilarity, §1, inferred).

    ``features`` holds one ``B x D_k`` tensor per teacher (widths may differ). Entry ``[a, i, j]`` of the
    ``B x B x B`` result (int8: at most 127 teachers) is ``sum_k sign(d_k(a, j) - d_k(a, i))`` with ``d_k`` the
    squared Euclidean distance between teacher ``k``'s (optionally L2-normalised) features: positive when the
    teachers say ``x_i`` is closer to the anchor ``x_a`` than ``x_j``. Entries whose indices are not distinct
    are 0.

    >>> triplet_votes([torch.tensor([[0.0], [1.0], [3.0]])], normalize=False)[0]  # anchor 0: 1 is closer than 3
    tensor([[ 0,  0,  0],
            [ 0,  0,  1],
            [ 0, -1,  0]], dtype=torch.int8)
    """
    if len(features) > 127:
        raise ValueError(f"triplet_votes counts at most 127 teachers' votes, got {len(features)}")
    total = None
    for g in features:
        d = squared_distances(g, normalize)
        farther, nearer = d[:, None, :], d[:, :, None]  # [a, i, j]: d(a, j) and d(a, i)
        # sign(d(a, j) - d(a, i)) from two comparisons, each read as int8 0 / 1 without a copy: no float B^3
        votes = torch.gt(farther, nearer).view(torch.int8) - torch.lt(farther, nearer).view(torch.int8)
        total = votes if total is None else total.add_(votes)
    # i == j gives sign(0) = 0 already; the anchor's own rows and columns (a == i, a == j) are zeroed in place
    anchor = torch.arange(total.shape[0], device=total.device)
    total[anchor, anchor, :] = 0
    total[anchor, :, anchor] = 0
    return total


def squared_distances(features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``B x B`` squared Euclidean distances between the rows of ``features`` (flattened, L2-normalised first
    with ``normalize``).

    >>> squared_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), normalize=False)
    tensor([[ 0., 25.],
            [25.,  0.]])
    """
    g = features.flatten(1).float()
    if normalize:
        g = F.normalize(g, dim=1)
    # |a|^2 + |b|^2 - 2ab: one B x B matrix product, where the differences would make a B x B x D tensor
    squares = (g * g).sum(1)
    return (squares[:, None] + squares[None, :] - 2.0 * g @ g.T).clamp(min=0.0)


def relative_dissimilarity_loss(student_features: torch.Tensor, votes: torch.Tensor, num_teachers: int,
                                margin: float = 0.1, normalize: bool = True, vote: str = "hard") -> torch.Tensor:
    """The student's triplet loss on the orderings its teachers voted for (You et al., KDD 2017, §1, inferred).

    Each triplet ``(a, i, j)`` with a positive vote ``v = votes[a, i, j]`` (``x_i`` closer to ``x_a``; the
    same triplet with ``i``, ``j`` swapped has ``-v`` and is not counted twice) costs
    ``[d_s(a, i) - d_s(a, j) + margin]_+``. Ties (``v = 0``) are dropped. ``vote="hard"`` weights every voted
    triplet 1 (the sign of the vote), ``"soft"`` by ``|v| / K``. The result is the weighted sum over the
    number of voted triplets (0, with a graph, when there are none).

    >>> g = torch.tensor([[0.0], [1.0], [3.0]])
    >>> relative_dissimilarity_loss(g, triplet_votes([g], normalize=False), 1, margin=0.0, normalize=False).item()
    0.0
    """
    if vote not in ("hard", "soft"):
        raise ValueError(f"vote must be 'hard' or 'soft', got {vote!r}")
    voted = votes > 0
    count = mask_counts(voted, 2).sum()
    if not count:
        return student_features.sum() * 0.0
    weights = voted if vote == "hard" else votes.clamp(min=0).float() / num_teachers
    d = squared_distances(student_features, normalize)
    return voted_hinge(d, weights, margin) / count


def mask_counts(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """How many entries of a bool tensor are set along ``dim``, as floats: summed as small integers (a bool
    tensor's sum along a dimension is several times slower).

    >>> mask_counts(torch.tensor([[True, False, True], [False, False, True]]), 1)
    tensor([2., 1.])
    """
    small = torch.int16 if mask.shape[dim] < 2 ** 15 else torch.int32
    return mask.view(torch.uint8).sum(dim, dtype=small).float()


def voted_hinge(d: torch.Tensor, weights: torch.Tensor, margin: float) -> torch.Tensor:
    """``sum_aij w[a, i, j] [d[a, i] - d[a, j] + margin]_+`` for a ``B x B`` ``d`` and fixed ``B x B x B``
    weights ``w`` (bool or float), computed as ``sum_ax d[a, x] c[a, x] + margin sum A`` with ``A = w [hinge > 0]``
    and ``c[a, x] = sum_j A[a, x, j] - sum_i A[a, i, x]``: the active set is constant where the hinge has a
    gradient, so the gradient is ``c``. Only a bool mask of the triplets is made (no float ``B x B x B``
    hinge) and only ``c`` is kept for the backward.

    >>> d = torch.tensor([[0.0, 4.0, 1.0], [4.0, 0.0, 1.0], [1.0, 1.0, 0.0]], requires_grad=True)
    >>> w = torch.zeros(3, 3, 3, dtype=torch.bool); w[0, 1, 2] = True  # anchor 0: 1 should be closer than 2
    >>> loss = voted_hinge(d, w, 0.0); loss.backward(); loss.item(), d.grad[0].tolist()
    (3.0, [0.0, 1.0, -1.0])
    """
    with torch.no_grad():
        active = torch.gt(d[:, :, None] + margin, d[:, None, :])  # d(a, i) + margin > d(a, j): a positive hinge
        if weights.dtype == torch.bool:
            active &= weights
            nearer, farther = mask_counts(active, 2), mask_counts(active, 1)
        else:
            active = weights * active
            nearer, farther = active.sum(2), active.sum(1)
        coefficients = nearer - farther
    return (d * coefficients).sum() + margin * nearer.sum()


@register_method
class RelativeDissimilarity(SoftTargets):
    """Averaged soft targets plus a triplet constraint on relative dissimilarity, teachers voting
    (You, Xu, Xu, Tao, KDD 2017; shared/METHODS.md §1).

    Only the abstract was read: everything below but the two ideas (averaged softened outputs; triplets whose
    ordering the teachers vote on) is the spec's inferred formalisation. At a guided student layer and a hint
    tap per teacher (by default the deepest stage of each, paired like every feature method; several with
    ``feature_layers``), each sample's feature ``g`` is one vector (flattened, or averaged over positions with
    ``pool="mean"``; L2-normalised with ``normalize``), and ``d(a, b) = |g(a) - g(b)|^2``. For every triplet of
    distinct samples ``(a, i, j)`` in the batch, teacher ``k`` votes ``v_k = sign(d_k(a, j) - d_k(a, i))``
    (+1: ``x_i`` is closer to the anchor); the vote ``v = sum_k v_k`` orients the triplet as (anchor,
    closer, farther), ties are dropped, and

        ``L_RD = mean over voted triplets of w * [d_s(a, closer) - d_s(a, farther) + margin]_+``

    with ``w = 1`` (``vote="hard"``, the sign of the vote) or ``|v| / K`` (``"soft"``). Total: soft-targets'
    terms (``lambda_ST`` = ``soft_weight``, cross-entropy on the labeled fraction) ``+ rd_weight * L_RD``
    (summed over depths). Widths may differ between student and teachers: only distances are compared.

    Inferred choices (the spec's library defaults): ``tau = 4``, ``lambda_RD = 1``, ``margin = 0.1`` on
    normalised features; all in-batch triplets (``B (B - 1) (B - 2)`` ordered ones, computed densely from the
    ``B x B`` distance matrices) rather than a random sample. ``stagewise=True`` is the FitNets-like schedule of
    the spec: during the first half of the epochs only ``L_RD`` trains (the student up to its guided layer), then
    every term (``L_RD`` kept). Ours: teachers with different label spaces are allowed (the soft targets are
    placed in the union space by class name); the paper's teachers share one task.

    Args:
        margin: ``delta``.
        normalize: L2-normalise features before the distances.
        vote: ``"hard"`` or ``"soft"``.
        pool: ``"flatten"`` or ``"mean"`` (a map's positions averaged; ViT tokens as a grid, class token out).
        rd_weight: ``lambda_RD``.
        stagewise: the two-stage schedule.
        feature_layers: how many depths (the deepest included).
        student_layers, teacher_layers: explicit stage indices (student) and taps (one list per teacher).
        temperature, weights, soft_weight, label_weight, target: as for ``soft-targets``.
    """

    name = "relative-dissimilarity"
    paper = "You, Xu, Xu, Tao. Learning from Multiple Teacher Networks. KDD 2017"
    summary = "Soft targets plus the ordering of in-batch distances the teachers vote for (triplets)."

    @dataclass
    class Options(LayerOptions, SoftTargets.Options):
        """``margin``, ``normalize``, ``vote``, ``pool``, ``rd_weight``, ``stagewise``: see the class; the layers
        as in :class:`LayerOptions` (one depth by default)."""

        margin: float = 0.1
        normalize: bool = True
        vote: Literal["hard", "soft"] = "hard"
        pool: Literal["flatten", "mean"] = "flatten"
        rd_weight: float = 1.0
        stagewise: bool = False

        def __post_init__(self) -> None:
            super().__post_init__()
            self.require(self.margin >= 0, f"margin must be >= 0, got {self.margin}")

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        o = self.options
        self.margin, self.normalize, self.vote, self.pool = float(o.margin), bool(o.normalize), o.vote, o.pool
        self.rd_weight, self.stagewise = float(o.rd_weight), bool(o.stagewise)
        self.layers = LayerPairs(self.name, teachers, o.feature_layers, o.student_layers, o.teacher_layers)
        self.hints_only = False  # the first stage of the stagewise schedule

    def needs(self) -> Needs:
        return self.layers.needs()

    def prepare(self, ctx: Setup) -> None:
        self.layers.student = list(ctx.student_stages)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        super().start_epoch(epoch, epochs)
        self.hints_only = self.stagewise and (epoch - 1) < epochs / 2

    def dissimilarity(self, step: StepInputs) -> torch.Tensor:
        """``sum_b L_RD`` at every paired depth, before ``rd_weight``."""
        total = step.student_logits.new_zeros(())
        for b, stage in enumerate(self.layers.student):
            with torch.no_grad():
                votes = triplet_votes([feature_vector(out.features[self.layers.teacher[k][b]], self.pool)
                                       for k, out in enumerate(step.teacher_outputs)], self.normalize)
            student = feature_vector(step.student_features[stage], self.pool)
            total = total + relative_dissimilarity_loss(student, votes, self.num_teachers, self.margin,
                                                        self.normalize, self.vote)
        return total

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        if self.hints_only:
            losses = {"soft": step.student_logits.new_zeros(())}
        else:
            losses = super().loss(step)
        losses["dissimilarity"] = self.rd_weight * self.dissimilarity(step)
        return losses
