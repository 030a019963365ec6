"""Autoencoder (layer-wise) amalgamation: the teachers' features at each depth, compressed into one code the
student's feature learns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import nn

from amalgam.errors import MethodError
from amalgam.methods.base import Needs, Setup, StepInputs
from amalgam.methods.losses import feature_reconstruction
from amalgam.methods.features.layers import LayerOptions, LayerPairs, adapter, as_map, common_map
from amalgam.methods.registry import register_method
from amalgam.methods.targets.soft_targets import SoftTargets
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher


class FeatureAutoencoder(nn.Module):
    """One amalgamated layer of §3: ``E`` (1x1 conv) compresses the concatenated teacher features to the
    student's width, ``D`` (1x1 conv) decodes them back; ``student_adapter`` (1x1 conv, KamalEngine's ``fam``)
    maps the student's feature to the code, or is the identity."""

    def __init__(self, teacher_widths: Sequence[int], code_width: int, student_adapter: bool) -> None:
        super().__init__()
        self.teacher_widths = list(teacher_widths)
        self.encoder = adapter(sum(teacher_widths), code_width)
        self.decoder = adapter(code_width, sum(teacher_widths))
        self.student_adapter = adapter(code_width, code_width) if student_adapter else nn.Identity()

    def forward(self, teacher_maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The code ``A = E([F_1; ...; F_K])`` and ``sum_k MSE(D(A)_k, F_k)``."""
        code = self.encoder(torch.cat(list(teacher_maps), dim=1))
        decoded = self.decoder(code).split(self.teacher_widths, dim=1)
        return code, sum(feature_reconstruction(d, f) for d, f in zip(decoded, teacher_maps))


@register_method
class AutoencoderAmalgamation(SoftTargets):
    """Layer-wise amalgamation through feature autoencoders (Shen et al., AAAI 2019; shared/METHODS.md §3).

    At each amalgamated depth ``b`` (paired by relative depth: ``feature_layers`` stage outputs of the student
    and of each teacher, or given explicitly), the teachers' features are concatenated,
    ``F_b = [F_1; ...; F_K]``, encoded by a 1x1 convolution to the student's width at that depth,
    ``A_b = E_b(F_b)``, and decoded back, ``D_b(A_b)``. The student's feature learns the code:

        ``soft-targets' terms + code_weight * sum_b MSE(fam_b(F^s_b), sg[A_b])
        + reconstruction_weight * sum_b sum_k MSE(D_b(A_b)_k, F_b^k)``

    ``sg`` is a stop-gradient: the code is shaped only by the reconstruction, so the student cannot pull it
    towards a trivial target. ``fam_b`` is a 1x1 convolution (KamalEngine's ``AmalBlock``), or the identity
    with ``student_adapter=False`` (the paper's direct regression of the layer onto ``A_b``, inferred).

    Schedules:

    - ``"end-to-end"`` (default): every term from the first epoch (KamalEngine's simplified version, the only
      code that was read).
    - ``"progressive"``: the paper's layer-by-layer learning as a schedule over one run (inferred; the paper's
      procedure was not read). The autoencoders' reconstruction terms are on from the start (the paper fits
      them first: step 1). With ``L = feature_layers + 1`` stages (the output layer last), depth ``b``'s code
      term (``b = 0`` shallowest) switches on at the epoch where ``(epoch - 1) / epochs >= b / L``, and the
      output terms (soft targets and labels) at ``(L - 1) / L``. A term, once on, stays on (earlier layers
      keep learning; the paper trains each layer once, on the amalgamated feature of the layer below).

    Deviations: the soft-target term is amalgam's soft targets over the union label space (not the
    concatenated logits of KamalEngine, nor the paper's L2 on logits); teachers of any architecture are
    allowed, each teacher map resized to the student's spatial size at that depth (average-pooled or
    bilinearly upsampled; ViT tokens become a grid first) so the maps can be concatenated; the code's width
    is the student's (the spec's library default is ``max_k C_k``); the autoencoders train in their own
    parameter group at the run's ``parts_lr`` (default: the student's learning rate); with ``"progressive"``
    each student layer receives its own previous output, not the teachers' amalgamated feature.

    Args:
        feature_layers: how many depths to amalgamate (the deepest included).
        student_layers, teacher_layers: explicit stage indices (student) and taps (one list per teacher).
        schedule: ``"end-to-end"`` or ``"progressive"``.
        student_adapter: learn the code through a 1x1 convolution of the student's feature (True) or directly.
        code_weight: ``w_2``, weight of the student's code regression.
        reconstruction_weight: ``w_3``, weight of the autoencoders' reconstruction.
        temperature, weights, soft_weight, label_weight, target: as for ``soft-targets`` (``soft_weight`` is
            ``w_1``).
    """

    name = "autoencoder-amalgamation"
    paper = ("Shen, Wang, Song, Sun, Song. Amalgamating Knowledge towards Comprehensive Classification. "
             "AAAI 2019")
    summary = ("Per layer, the teachers' concatenated features are auto-encoded to the student's width; the student "
               "learns the code.")

    @dataclass
    class Options(LayerOptions, SoftTargets.Options):
        """``schedule``, ``student_adapter``, ``code_weight``, ``reconstruction_weight``: see the class; the
        layers as in :class:`LayerOptions` (three depths by default)."""

        feature_layers: int = 3
        schedule: Literal["end-to-end", "progressive"] = "end-to-end"
        student_adapter: bool = True
        code_weight: float = 1.0
        reconstruction_weight: float = 1.0

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        o = self.options
        self.schedule = o.schedule
        self.student_adapter = bool(o.student_adapter)
        self.code_weight, self.reconstruction_weight = float(o.code_weight), float(o.reconstruction_weight)
        self.layers = LayerPairs(self.name, teachers, o.feature_layers, o.student_layers, o.teacher_layers)
        self.autoencoders = nn.ModuleList()  # one FeatureAutoencoder per depth, built by setup()
        self.active_layers = self.layers.count  # depths 0 .. active_layers - 1 learn their code
        self.output_active = True

    def needs(self) -> Needs:
        return self.layers.needs()

    def prepare(self, ctx: Setup) -> None:
        """Build one autoencoder per depth: teachers' widths in, the student's width as the code."""
        self.layers.student = list(ctx.student_stages)
        self.autoencoders = nn.ModuleList(
            FeatureAutoencoder(
                [as_map(out.features[taps[b]]).shape[1]
                 for out, taps in zip(ctx.teacher_outputs, self.layers.teacher)],
                as_map(ctx.student_features[stage]).shape[1],
                self.student_adapter,
            )
            for b, stage in enumerate(self.layers.student)
        )

    def start_epoch(self, epoch: int, epochs: int) -> None:
        super().start_epoch(epoch, epochs)
        if self.schedule == "progressive":
            stages = self.layers.count + 1  # the amalgamated layers, then the output layer
            done = (epoch - 1) / epochs
            self.active_layers = sum(1 for b in range(self.layers.count) if done >= b / stages)
            self.output_active = done >= (stages - 1) / stages

    def layer_terms(self, step: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum over active depths of MSE(fam(F^s_b), sg[A_b]), sum over all depths of the reconstruction)``."""
        code_loss = reconstruction = step.student_logits.new_zeros(())
        for b, (stage, autoencoder) in enumerate(zip(self.layers.student, self.autoencoders)):
            student_map = as_map(step.student_features[stage])
            teacher_maps = [common_map(out.features[self.layers.teacher[k][b]], student_map.shape[-2:])
                            for k, out in enumerate(step.teacher_outputs)]
            code, rebuilt = autoencoder(teacher_maps)
            reconstruction = reconstruction + rebuilt
            if b < self.active_layers:
                code_loss = code_loss + feature_reconstruction(autoencoder.student_adapter(student_map),
                                                               code.detach())
        return code_loss, reconstruction

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        if not len(self.autoencoders):
            raise MethodError("autoencoder-amalgamation: the autoencoders are built by setup() (the engine calls it)")
        if self.output_active:
            losses = super().loss(step)
        else:  # progressive schedule, before the output layer's turn: logged as 0
            losses = {"soft": step.student_logits.new_zeros(())}
        code_loss, reconstruction = self.layer_terms(step)
        losses["code"] = self.code_weight * code_loss
        losses["reconstruction"] = self.reconstruction_weight * reconstruction
        return losses
