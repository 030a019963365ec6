"""Common feature learning (CFL): the student and every teacher meet in one learned feature space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from amalgam.errors import MethodError
from amalgam.methods.base import Needs, Setup, StepInputs
from amalgam.methods.losses import feature_reconstruction
from amalgam.methods.features.dissimilarity import squared_distances
from amalgam.methods.features.layers import Conv3x3, LayerOptions, LayerPairs, adapter, as_map, common_map
from amalgam.methods.registry import register_method
from amalgam.methods.targets.soft_targets import SoftTargets
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher


MMD_SIGMAS = (0.001, 0.01, 0.05, 0.1, 0.2, 1.0, 2.0)  # CFL's official kernel widths (shared/METHODS.md §0.1)
# The narrow kernels send most exponents far below -87, where exp lands in float32's denormals (under 1.2e-38)
# and CPUs compute it about 10x slower; raised to -87, those terms become 1.6e-38 instead, far below the
# resolution of kernel means that hold exp(0)-sized terms.
EXP_FLOOR = -87.0


def multi_kernel_mmd(x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float] = MMD_SIGMAS,
                     normalize: bool = True) -> torch.Tensor:
    """Squared multi-kernel Gaussian MMD between two batches of features (shared/METHODS.md §0.1; CFL, §2).

    Rows are flattened to ``B x D`` and, with ``normalize``, L2-normalised; then
    ``[mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) - 2 mean_ij k(x_i, y_j)]_+`` with
    ``k(a, b) = sum_sigma exp(-|a - b|^2 / (2 sigma^2))`` and squared distances clamped at ``1e-12``.
    ``x`` and ``y`` need the same batch size.

    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> multi_kernel_mmd(x, x).item()
    0.0
    >>> round(multi_kernel_mmd(x, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), sigmas=[1.0]).item(), 4)  # (1 - 1/e) / 2
    0.3161
    """
    return multi_kernel_mmds(x, [y], sigmas, normalize)[0]


def multi_kernel_mmds(anchor: torch.Tensor, others: Sequence[torch.Tensor], sigmas: Sequence[float] = MMD_SIGMAS,
                      normalize: bool = True) -> list[torch.Tensor]:
    """:func:`multi_kernel_mmd` of ``anchor`` against each of ``others``, from one kernel matrix of all the rows
    (one product for all the distances, one ``exp`` over the kernel blocks the MMDs use, for every width;
    instead of three kernels per pair, the anchor's own recomputed for each).

    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> [round(m.item(), 4) for m in multi_kernel_mmds(x, [x, torch.tensor([[1.0, 0.0], [1.0, 0.0]])], [1.0])]
    [0.0, 0.3161]
    """
    size = anchor.shape[0]
    if any(other.shape[0] != size for other in others):
        raise ValueError(f"multi_kernel_mmd needs batches of one size, got {size} and "
                         f"{[other.shape[0] for other in others]}")
    rows = torch.cat([anchor.flatten(1)] + [other.flatten(1) for other in others])
    # |a|^2 + |b|^2 - 2ab, as the official code computes it, clamped at 1e-12 as there
    distances = squared_distances(rows, normalize).clamp(min=1e-12)
    blocks = distances.unflatten(0, (-1, size)).unflatten(2, (-1, size))  # [i, :, j, :]: batch i against j
    pairs = range(1, len(others) + 1)
    needed = torch.stack([blocks[0, :, 0]] + [blocks[k, :, k] for k in pairs] + [blocks[0, :, k] for k in pairs])
    scales = torch.tensor([-1.0 / (2.0 * s * s) for s in sigmas], device=rows.device)
    exponents = (needed[None] * scales[:, None, None, None]).clamp(min=EXP_FLOOR)
    means = torch.exp(exponents).sum(0).mean(dim=(1, 2))
    within, across = means[1:len(others) + 1], means[len(others) + 1:]
    return list((means[0] + within - 2.0 * across).clamp(min=0.0).unbind())


class ResidualBlock(nn.Module):
    """3x3 conv, ReLU, 3x3 conv, plus the input (through a 1x1 projection when the width changes), then ReLU.

    The extractor's block of §2's official code, without batch norm as there.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            Conv3x3(in_channels, out_channels), nn.ReLU(), Conv3x3(out_channels, out_channels),
        )
        self.shortcut = nn.Identity() if in_channels == out_channels else adapter(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class CommonFeatureBlock(nn.Module):
    """One depth of CFL (§2): align layers into ``2h`` channels, a shared extractor into the ``h``-channel common
    space, and one decoder per teacher back to that teacher's width."""

    def __init__(self, student_width: int, teacher_widths: Sequence[int], hidden: int, blocks: int = 3) -> None:
        super().__init__()
        self.align_student = nn.Sequential(adapter(student_width, 2 * hidden, bias=False), nn.ReLU())
        self.align_teachers = nn.ModuleList(
            nn.Sequential(adapter(w, 2 * hidden, bias=False), nn.ReLU()) for w in teacher_widths
        )
        widths = [2 * hidden] + [hidden] * blocks
        self.extractor = nn.Sequential(*(ResidualBlock(a, b) for a, b in zip(widths, widths[1:])))
        self.decoders = nn.ModuleList(
            nn.Sequential(Conv3x3(hidden, w), nn.ReLU(), adapter(w, w)) for w in teacher_widths
        )

    def codes(self, student_map: torch.Tensor,
              teacher_maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``H_s = E(align_s(F_s))`` and every ``H_k = E(align_k(F_k))``, the extractor run once on all of them
        stacked along the batch (it has no batch norm, so each row's code is the one it has alone)."""
        aligned = [self.align_student(student_map)] + [align(f) for align, f in zip(self.align_teachers, teacher_maps)]
        h_s, *h_teachers = self.extractor(torch.cat(aligned)).split(student_map.shape[0])
        return h_s, h_teachers


@register_method
class CommonFeatureLearning(SoftTargets):
    """Common feature learning (Luo et al., IJCAI 2019; shared/METHODS.md §2).

    At each paired depth (by default one: the deepest stage of every model, as the official code's ``layer4``),
    per-teacher align layers (1x1 conv without bias + ReLU, to ``2h`` channels) and one for the student feed a
    **shared** extractor (three residual blocks, ``2h -> h -> h -> h``, no batch norm) into a common space;
    per-teacher decoders (3x3 conv + ReLU + 1x1 conv) map the teacher's common feature back to its own width.
    With ``H_s = E(align_s(F_s))``, ``H_k = E(align_k(F_k))`` and ``F^_k = dec_k(H_k)``, the loss is

        ``soft-targets' terms + lambda * (sum_k MMD^2(H_s, H_k) + beta * sum_k MSE(F^_k, F_k))``

    with the multi-kernel Gaussian MMD of §0.1 (rows flattened and L2-normalised, sigmas
    ``{0.001, 0.01, 0.05, 0.1, 0.2, 1, 2}``, distances clamped at 1e-12), summed over depths. Teachers are
    frozen; the MMD trains the student, ``align_s``, the extractor and the ``align_k``; the reconstruction
    trains the ``align_k``, the extractor and the decoders, so the teacher side cannot collapse to a trivial map.

    Faithful to the official code (VainF/CommonFeatureLearning): the block's layers and widths (``h = 128``),
    the MMD and its kernels, ``beta = 1``, ``lambda = 10``. Deviations:

    - The soft-target term is amalgam's soft targets (each teacher's softened probabilities placed in the
      union label space by class name and averaged, ``tau = 4``, plus cross-entropy on the labeled fraction),
      not one softmax over the concatenated logits at ``tau = 1``: the concatenated target is the
      ``concat-logits`` reference, which loses to the mean on teachers with disjoint classes.
    - The official code needs every feature at one spatial size (it flattens ``C x H x W``). Here each teacher's
      map is resized to the student's spatial size at that depth (average-pooled down or bilinearly up; ViT
      tokens become a grid first), and the reconstruction target is that resized map.
    - The CFL block trains in its own parameter group of the student's optimiser (AdamW, cosine) at the run's
      ``parts_lr``, by default the student's learning rate; the official code gives it a larger one (5-10x).
    - ``feature_layers > 1`` (one block per depth) is an extension of ours; the paper uses final features only.

    Args:
        hidden: ``h``, the common space's width (the align layers give ``2h``).
        feature_weight: ``lambda``, weight of the common-feature terms.
        reconstruction_weight: ``beta``, weight of the reconstruction inside them.
        sigmas: the MMD's kernel widths.
        feature_layers: how many depths to amalgamate (the deepest included).
        student_layers, teacher_layers: explicit stage indices (student) and taps (one list per teacher) instead
            of the automatic pairing by relative depth.
        temperature, weights, soft_weight, label_weight, target: as for ``soft-targets``.
    """

    name = "cfl"
    paper = ("Luo, Wang, Fang, Hu, Tao, Song. Knowledge Amalgamation from Heterogeneous Networks by Common Feature "
             "Learning. IJCAI 2019")
    summary = "Student and teachers meet in a learned common feature space (MMD + reconstruction) plus soft targets."

    @dataclass
    class Options(LayerOptions, SoftTargets.Options):
        """``hidden``, ``feature_weight``, ``reconstruction_weight``, ``sigmas``: see the class; the layers as in
        :class:`LayerOptions` (one depth by default)."""

        hidden: int = 128
        feature_weight: float = 10.0
        reconstruction_weight: float = 1.0
        sigmas: Sequence[float] = MMD_SIGMAS

        def __post_init__(self) -> None:
            super().__post_init__()
            self.require(self.hidden >= 1 and bool(self.sigmas) and min(self.sigmas) > 0,
                         f"hidden must be >= 1 and sigmas positive, got hidden={self.hidden}, sigmas={self.sigmas}")

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        o = self.options
        self.hidden = int(o.hidden)
        self.feature_weight, self.reconstruction_weight = float(o.feature_weight), float(o.reconstruction_weight)
        self.sigmas = tuple(float(s) for s in o.sigmas)
        self.layers = LayerPairs(self.name, teachers, o.feature_layers, o.student_layers, o.teacher_layers)
        self.blocks = nn.ModuleList()  # one CommonFeatureBlock per depth, built by setup()

    def needs(self) -> Needs:
        return self.layers.needs()

    def prepare(self, ctx: Setup) -> None:
        """Build one CFL block per depth for the widths seen on the probe batch."""
        self.layers.student = list(ctx.student_stages)
        self.blocks = nn.ModuleList(
            CommonFeatureBlock(
                as_map(ctx.student_features[stage]).shape[1],
                [as_map(out.features[taps[b]]).shape[1]
                 for out, taps in zip(ctx.teacher_outputs, self.layers.teacher)],
                self.hidden,
            )
            for b, stage in enumerate(self.layers.student)
        )

    def common_feature_terms(self, step: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_b sum_k MMD^2(H_s, H_k), sum_b sum_k MSE(F^_k, F_k))``, before the weights."""
        mmd = reconstruction = step.student_logits.new_zeros(())
        for b, (stage, block) in enumerate(zip(self.layers.student, self.blocks)):
            student_map = as_map(step.student_features[stage])
            f_teachers = [common_map(out.features[self.layers.teacher[k][b]], student_map.shape[-2:])
                          for k, out in enumerate(step.teacher_outputs)]
            h_s, h_teachers = block.codes(student_map, f_teachers)
            mmd = mmd + sum(multi_kernel_mmds(h_s, h_teachers, self.sigmas))
            for decoder, h_k, f_k in zip(block.decoders, h_teachers, f_teachers):
                reconstruction = reconstruction + feature_reconstruction(decoder(h_k), f_k)
        return mmd, reconstruction

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        if not len(self.blocks):
            raise MethodError("cfl: the common-feature blocks are built by setup() (the engine calls it)")
        losses = super().loss(step)
        mmd, reconstruction = self.common_feature_terms(step)
        losses["mmd"] = self.feature_weight * mmd
        losses["reconstruction"] = self.feature_weight * self.reconstruction_weight * reconstruction
        return losses
