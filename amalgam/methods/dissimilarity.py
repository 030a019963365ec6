"""Relative dissimilarity with teacher voting: the student keeps the teachers' ordering of distances between
examples, so no regressor between feature widths is needed."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from amalgam.errors import MethodError
from amalgam.methods.base import StepInputs
from amalgam.methods.blocks import relative_dissimilarity_loss, triplet_votes
from amalgam.methods.features import LayerPairs, feature_vector
from amalgam.methods.registry import register_method
from amalgam.methods.soft_targets import SoftTargets
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher

VOTES = ("hard", "soft")


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
        student_layers, teacher_layers: explicit module paths (student) and taps (one list per teacher).
        temperature, weights, soft_weight, label_weight, target: as for ``soft-targets``.
    """

    name = "relative-dissimilarity"
    paper = "You, Xu, Xu, Tao. Learning from Multiple Teacher Networks. KDD 2017"
    summary = "Soft targets plus the ordering of in-batch distances the teachers vote for (triplets)."

    def __init__(
        self,
        label_space: LabelSpace,
        teachers: Sequence[Teacher],
        margin: float = 0.1,
        normalize: bool = True,
        vote: str = "hard",
        pool: str = "flatten",
        rd_weight: float = 1.0,
        stagewise: bool = False,
        feature_layers: int = 1,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[Sequence[str]] | None = None,
        temperature: float = 4.0,
        weights: Sequence[float] | None = None,
        soft_weight: float = 1.0,
        label_weight: float = 1.0,
        target: str = "soft",
    ) -> None:
        super().__init__(label_space, teachers, temperature, weights, soft_weight, label_weight, target)
        if vote not in VOTES:
            raise MethodError(f"relative-dissimilarity: vote must be one of {VOTES}, got {vote!r}")
        if pool not in ("flatten", "mean"):
            raise MethodError(f"relative-dissimilarity: pool must be 'flatten' or 'mean', got {pool!r}")
        if margin < 0:
            raise MethodError(f"relative-dissimilarity: margin must be >= 0, got {margin}")
        self.margin, self.normalize, self.vote, self.pool = float(margin), bool(normalize), vote, pool
        self.rd_weight, self.stagewise = float(rd_weight), bool(stagewise)
        self.layers = LayerPairs(self.name, teachers, feature_layers, student_layers, teacher_layers)
        self.hints_only = False  # the first stage of the stagewise schedule

    def teacher_taps(self) -> list[list[str]]:
        return self.layers.teacher

    def student_taps(self, student: nn.Module) -> list[str]:
        return self.layers.student_taps(student)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        super().start_epoch(epoch, epochs)
        self.hints_only = self.stagewise and (epoch - 1) < epochs / 2

    def dissimilarity(self, step: StepInputs) -> torch.Tensor:
        """``sum_b L_RD`` at every paired depth, before ``rd_weight``."""
        total = step.student_logits.new_zeros(())
        for b, tap in enumerate(self.layers.student):
            with torch.no_grad():
                votes = triplet_votes([feature_vector(out.features[self.layers.teacher[k][b]], self.pool)
                                       for k, out in enumerate(step.teacher_outputs)], self.normalize)
            student = feature_vector(step.student_features[tap], self.pool)
            total = total + relative_dissimilarity_loss(student, votes, self.num_teachers, self.margin,
                                                        self.normalize, self.vote)
        return total

    def forward(self, step: StepInputs) -> dict[str, torch.Tensor]:
        if self.hints_only:
            losses = {"soft": step.student_logits.new_zeros(())}
        else:
            losses = super().forward(step)
        losses["dissimilarity"] = self.rd_weight * self.dissimilarity(step)
        return losses
