"""Many teachers from one: each batch distils a sub-network of every teacher with random residual blocks skipped."""

from __future__ import annotations

import dataclasses
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from amalgam.errors import MethodError
from amalgam.methods.base import Needs, StepInputs
from amalgam.methods.registry import register_method
from amalgam.methods.targets.soft_targets import SoftTargets
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher

_BLOCK_CLASS = re.compile(r"(Block|Bottleneck|Layer)$")  # timm's BasicBlock, Bottleneck, Block; HF's ViTLayer...


def survival_probabilities(count: int, last: float) -> list[float]:
    """``p_l = 1 - (l / L) (1 - p_L)`` for blocks ``l = 1..L`` (§10e's linear decay).

    >>> survival_probabilities(4, 0.5)
    [0.875, 0.75, 0.625, 0.5]
    """
    return [1.0 - (l / count) * (1.0 - last) for l in range(1, count + 1)]


def residual_blocks(model: nn.Module, probe: torch.Tensor, run) -> list[str]:
    """Module paths of ``model``'s residual blocks, shallow to deep: modules whose class is a block or layer
    (``Block``, ``Bottleneck``, ``Layer`` at the end of its name) whose output has its input's shape, so that
    skipping one (output := input) is the skip connection alone; nested ones inside a chosen block are left out.
    ``run(probe)`` runs the model once to see the shapes."""
    candidates = {name: module for name, module in model.named_modules()
                  if name and _BLOCK_CLASS.search(type(module).__name__)}
    keeps: list[str] = []

    def record(name):
        def hook(_module, inputs, output):
            first = output[0] if isinstance(output, tuple) else output
            if inputs and isinstance(inputs[0], torch.Tensor) and getattr(first, "shape", None) == inputs[0].shape:
                keeps.append(name)
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in candidates.items()]
    try:
        with torch.no_grad():
            run(probe)
    finally:
        for handle in handles:
            handle.remove()
    chosen = [n for n in candidates if n in keeps]  # named_modules order: shallow to deep
    return [n for n in chosen if not any(n.startswith(other + ".") for other in chosen)]


@contextmanager
def skipped(model: nn.Module, paths: Sequence[str]) -> Iterator[None]:
    """Inside the block, the modules at ``paths`` return their input (a tuple output keeps its other items);
    the hooks are removed on exit."""
    def identity(_module, inputs, output):
        return (inputs[0], *output[1:]) if isinstance(output, tuple) else inputs[0]

    handles = [model.get_submodule(path).register_forward_hook(identity) for path in paths]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@register_method
class StochasticTeachers(SoftTargets):
    """Many teachers from one (Nguyen, Lee, Shim, 2020; shared/METHODS.md §10e, inferred form).

    Every teacher is an aggregate of paths through its residual blocks. For each training batch, each block
    ``l`` of ``L`` survives with probability ``p_l = 1 - (l / L)(1 - p_L)`` (``p_L = survival``); a skipped block
    passes its input through, as its skip connection does. The sub-networks drawn batch after batch are the
    "teachers from one", and the student learns their outputs with the soft-target loss (union label space,
    ``alpha``-weighted: ``alpha tau^2 KL + (1 - alpha) CE`` on the labeled fraction, as §10e writes it).

    The blocks are found by probing each teacher once: modules named as blocks or layers (timm's ``BasicBlock``,
    ``Bottleneck``, ``Block``; transformers' ``ViTLayer``, ``ConvNextLayer``) whose output keeps their input's
    shape (the first block of a stage, which downsamples, is never skipped); ``blocks`` (one list of module
    paths per teacher) overrides that. Teachers run live (a cached output is of the whole teacher) in eval mode.
    Inferred (the abstract only was read): the decay of ``p_l``, one draw per batch, ``alpha = 0.9``,
    ``tau = 4``, ``p_L = 0.5``. Deviation: the teachers were not trained with stochastic depth, which the paper
    assumes; with ``survival`` near 1 the sub-networks stay close to the teacher.

    Args:
        survival: ``p_L``, the deepest block's survival probability.
        alpha: the distillation term's share; ``1 - alpha`` goes to the labels.
        blocks: explicit module paths per teacher (``[]`` keeps a teacher whole).
        temperature, weights, target, student_feedback: as for ``soft-targets``. ``soft_weight`` and
            ``label_weight`` are not options here: they are ``alpha`` and ``1 - alpha`` (setting them is an error).
    """

    name = "stochastic-teachers"
    paper = ("Nguyen, Lee, Shim. Stochasticity and Skip Connections Improve Knowledge Transfer. ICLR 2020 "
             "submission")
    summary = "Each batch distils sub-networks of the teachers with random residual blocks skipped."

    @dataclass
    class Options(SoftTargets.Options):
        """``survival``: ``p_L``; ``alpha``: the distillation term's share (it sets ``soft_weight = alpha`` and
        ``label_weight = 1 - alpha``, which must stay at their defaults); ``blocks``: explicit module paths per
        teacher."""

        survival: float = 0.5
        alpha: float = 0.9
        blocks: Sequence[Sequence[str]] | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            self.require(0.0 < self.survival <= 1.0 and 0.0 <= self.alpha <= 1.0,
                         f"survival must be in (0, 1] and alpha in [0, 1], got {self.survival}, {self.alpha}")
            defaults = SoftTargets.Options()
            self.require(self.soft_weight == defaults.soft_weight and self.label_weight == defaults.label_weight,
                         "soft_weight and label_weight are alpha and 1 - alpha here: set alpha instead, got "
                         f"soft_weight={self.soft_weight}, label_weight={self.label_weight}")

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        o = self.options
        self.soft_weight, self.label_weight = float(o.alpha), float(1.0 - o.alpha)
        self.survival = float(o.survival)
        blocks = o.blocks
        self.teachers = tuple(teachers)  # a tuple: run live, never saved or optimised with the method
        if blocks is not None and len(blocks) != len(teachers):
            raise MethodError(f"stochastic-teachers: blocks needs one list per teacher ({len(teachers)}), got "
                              f"{len(blocks)}")
        if blocks is None:  # found on a one-image probe
            probe = torch.rand(1, teachers[0].input_spec.channels, 8, 8)
            blocks = [residual_blocks(t.model, probe, t) for t in teachers]
        for teacher, paths in zip(teachers, blocks):
            known = set(teacher.tap_names(all_modules=True))
            unknown = [p for p in paths if p not in known]
            if unknown:
                raise MethodError(f"stochastic-teachers: teacher {teacher.name!r} has no module(s) {unknown}; "
                                  "its modules are teacher.tap_names(all_modules=True)")
        self.blocks = [list(b) for b in blocks]

    def sample_skipped(self) -> list[list[str]]:
        """For each teacher, the blocks skipped in this batch."""
        chosen = []
        for paths in self.blocks:
            keep = torch.rand(len(paths)) < torch.tensor(survival_probabilities(len(paths), self.survival))
            chosen.append([p for p, k in zip(paths, keep.tolist()) if not k])
        return chosen

    def needs(self) -> Needs:
        return Needs(teacher_signals="live")

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        outputs = []
        for teacher, skip in zip(self.teachers, self.sample_skipped()):
            with skipped(teacher.model, skip):
                outputs.append(teacher(step.images))
        return super().loss(dataclasses.replace(step, teacher_outputs=outputs))
