"""Feature-level building blocks shared by methods: which layers to pair, features as maps, adapters.

Layers are paired by relative depth so nobody lists layer pairs by hand: a method asks for ``n`` taps and gets
the stage outputs at depths ``1/n, 2/n, ..., 1`` of each model (the deepest last), for the student (its stages
by index, :mod:`amalgam.students.stages`) and for each teacher (:meth:`Teacher.tap_names`). Explicit lists
override it. Adapters are sized from one probe batch (:meth:`Method.setup`), so they fit whatever widths the
models have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from amalgam.errors import MethodError
from amalgam.methods.base import Needs, Options
from amalgam.students.stages import spread_indices

if TYPE_CHECKING:
    from amalgam.teachers.teacher import Teacher


def spread_taps(names: Sequence[str], count: int) -> list[str]:
    """``count`` of ``names`` (ordered shallow to deep) at relative depths ``1/count, ..., 1``.

    >>> spread_taps(["s1", "s2", "s3", "s4", "s5"], 2)
    ['s3', 's5']
    >>> spread_taps(["a", "b"], 3)
    ['a', 'b', 'b']
    """
    if not names:
        raise MethodError("the model has no stage taps to pair; name its layers explicitly")
    return [names[i] for i in spread_indices(len(names), count)]


@dataclass
class LayerOptions(Options):
    """The options of a method that pairs layers (:class:`LayerPairs`): ``feature_layers``: how many depths
    (the deepest included); ``student_layers``: explicit stage indices of the student (negative counts from the
    deepest) instead; ``teacher_layers``: explicit taps, one list per teacher. A method mixes this into its
    options (``class Options(LayerOptions, SoftTargets.Options)``) and redeclares a field to change its default.
    """

    feature_layers: int = 1
    student_layers: Sequence[int] | None = None
    teacher_layers: Sequence[Sequence[str]] | None = None


def as_map(feature: torch.Tensor) -> torch.Tensor:
    """A feature as a ``B x C x H x W`` map: maps pass through; ViT tokens ``B x N x D`` become a ``D`` channel
    grid (the class token dropped when ``N - 1`` is square); other token counts a ``D x N x 1`` map. Token grids
    are copied to a contiguous map: the transposed view is channels-last in memory, and every convolution,
    concatenation and loss that meets it beside the student's (contiguous) maps runs several times slower.

    >>> as_map(torch.zeros(2, 17, 8)).shape, as_map(torch.zeros(2, 6, 8)).shape
    (torch.Size([2, 8, 4, 4]), torch.Size([2, 8, 6, 1]))
    """
    if feature.ndim == 4:
        return feature
    if feature.ndim == 2:
        return feature[:, :, None, None]
    if feature.ndim != 3:
        raise MethodError(f"cannot use a feature of shape {tuple(feature.shape)} as a map")
    tokens = feature.shape[1]
    for count in (tokens - 1, tokens):
        side = math.isqrt(count)
        if count > 0 and side * side == count:
            grid = feature[:, tokens - count:]
            return grid.transpose(1, 2).reshape(feature.shape[0], feature.shape[2], side, side).contiguous()
    return feature.transpose(1, 2)[..., None].contiguous()


def resize_map(feature: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``feature`` at spatial ``size``: average-pooled down, or bilinearly up."""
    if tuple(feature.shape[-2:]) == tuple(size):
        return feature
    if feature.shape[-2] >= size[0] and feature.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=tuple(size), mode="bilinear", align_corners=False)


def on_single_positions(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 convolution of a ``B x C x 1 x 1`` map with ``weight`` (``O x C x 1 x 1``) as one matrix product:
    the same numbers up to rounding, and on CPUs about twice as fast as the convolution kernels, forward and
    backward, at the sizes of a small student's deepest stage (128 x 256 -> 128 measured: 0.46 ms against 0.94).
    On larger maps neither wins everywhere, so those keep the convolution."""
    return F.linear(x.flatten(1), weight.flatten(1), bias)[:, :, None, None]


class Pointwise(nn.Conv2d):
    """A 1x1 convolution (a ``Conv2d``, with its weights and state dict) that on 1 x 1 maps is one matrix
    product (:func:`on_single_positions`).

    >>> conv = Pointwise(4, 2)
    >>> x = torch.randn(3, 4, 1, 1)
    >>> torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias), atol=1e-6)
    True
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (1, 1):
            return on_single_positions(x, self.weight, self.bias)
        return super().forward(x)


def adapter(in_channels: int, out_channels: int, bias: bool = True) -> Pointwise:
    """A 1x1 convolution from one width to another (the FAMs of §4, the align layers of §2)."""
    return Pointwise(in_channels, out_channels, bias=bias)


class Conv3x3(nn.Conv2d):
    """A 3x3 convolution with padding 1 that keeps the spatial size. On a 1 x 1 map (a small student's deepest
    stage) only the kernel's centre meets the input, the other taps meeting the zero padding, so it multiplies by
    the centre alone (:func:`on_single_positions`): the same output and gradients (zero on the other taps) at a
    ninth of the work.

    >>> conv = Conv3x3(4, 2)
    >>> x = torch.randn(3, 4, 1, 1)
    >>> torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-6)
    True
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (1, 1):
            return on_single_positions(x, self.weight[:, :, 1:2, 1:2], self.bias)
        return super().forward(x)


def unit_norm_penalty(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_W mean_o (sum_i W_oi^2 - 1)^2``: pushes each output filter to unit squared norm, so an alignment
    cannot collapse to zero (§4's regulariser). 0 for orthonormal filters.

    >>> unit_norm_penalty([torch.eye(3).reshape(3, 3, 1, 1)]).item()
    0.0
    """
    return sum(((w.flatten(1) ** 2).sum(dim=1) - 1.0).pow(2).mean() for w in weights)


def common_map(feature: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
    """A (frozen) teacher feature as a float ``B x C x H x W`` map, resized to ``size`` when given (ViT tokens
    become a grid first): how teachers of different shapes meet at one spatial size."""
    grid = as_map(feature).float()
    return grid if size is None else resize_map(grid, size)


def feature_vector(feature: torch.Tensor, pool: str = "flatten") -> torch.Tensor:
    """A feature as one ``B x D`` vector per sample: the map flattened (``"flatten"``) or averaged over its
    positions (``"mean"``); ViT tokens are a grid first, so the class token is left out as in :func:`as_map`.

    >>> feature_vector(torch.ones(2, 3, 4, 4)).shape, feature_vector(torch.ones(2, 17, 8), "mean").shape
    (torch.Size([2, 48]), torch.Size([2, 8]))
    """
    grid = as_map(feature)
    if pool == "flatten":
        return grid.flatten(1)
    if pool == "mean":
        return grid.mean(dim=(2, 3))
    raise MethodError(f"pool must be 'flatten' or 'mean', got {pool!r}")


class LayerPairs:
    """Which layers a feature method amalgamates: at each of ``count`` depths, one student stage and one tap
    per teacher.

    By default both sides are the stage outputs at relative depths ``1/count, ..., 1`` (the student's stages
    spread by :func:`~amalgam.students.stages.resolve_stages`, each teacher's :meth:`Teacher.tap_names` by
    :func:`spread_taps`); ``student_layers`` (stage indices) and ``teacher_layers`` (one list of taps per
    teacher) override them. Wrong teacher taps fail here, with the model's available taps in the message; a
    wrong student stage fails when the engine resolves :meth:`student_request`. ``student`` is the resolved
    stage indices, which the method sets in its ``setup`` from ``ctx.student_stages``.
    """

    def __init__(self, method: str, teachers: Sequence["Teacher"], count: int,
                 student_layers: Sequence[int] | None = None,
                 teacher_layers: Sequence[Sequence[str]] | None = None) -> None:
        self.method = method
        # explicit lists fix the number of depths
        self.count = len(student_layers) if student_layers else len(teacher_layers[0]) if teacher_layers else int(count)
        if self.count < 1:
            raise MethodError(f"{method}: feature_layers must be at least 1, got {count}")
        if teacher_layers is None:
            self.teacher = [spread_taps(t.tap_names(), self.count) for t in teachers]
        else:
            if len(teacher_layers) != len(teachers) or any(len(t) != self.count for t in teacher_layers):
                raise MethodError(f"{method}: teacher_layers needs {len(teachers)} lists (one per teacher) of "
                                  f"{self.count} taps, got {teacher_layers}")
            for teacher, taps in zip(teachers, teacher_layers):
                known = set(teacher.tap_names(all_modules=True))
                unknown = [tap for tap in taps if tap not in known]
                if unknown:
                    raise MethodError(f"{method}: teacher {teacher.name!r} has no tap(s) {unknown}; its taps are "
                                      f"{teacher.tap_names()} (any module path of "
                                      "teacher.tap_names(all_modules=True) also works)")
            self.teacher = [list(t) for t in teacher_layers]
        self.explicit = tuple(int(i) for i in student_layers) if student_layers else None
        self.student: list[int] = []

    def student_request(self) -> tuple[int, ...] | int:
        """The student's stages for :attr:`Needs.student_stages`: the explicit indices, else the count."""
        return self.explicit if self.explicit is not None else self.count

    def needs(self) -> Needs:
        """What a method that reads these pairs needs: every teacher's taps and the student's stages."""
        return Needs(teacher_taps=tuple(tuple(t) for t in self.teacher), student_stages=self.student_request())


def attention_map(feature: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
    """The spatial attention map ``sum_c |A_c|^2`` of a feature as ``B x 1 x H x W`` (Zagoruyko & Komodakis'
    attention transfer, used by §10d), resized to ``size`` when given. ViT tokens become a grid first
    (:func:`as_map`); the map is computed at the feature's own resolution and then resized, so one channel is
    pooled or interpolated instead of all of them.

    >>> attention_map(torch.tensor([[[[1.0, -2.0], [0.0, 1.0]], [[1.0, 0.0], [3.0, 0.0]]]]))
    tensor([[[[2., 4.],
              [9., 1.]]]])
    """
    grid = as_map(feature).float().pow(2).sum(dim=1, keepdim=True)
    return grid if size is None else resize_map(grid, size)
