"""What the teachers see, as one vector per image: each teacher's tap averaged over positions beside its
probabilities (read by ``feature-probe`` and ``cluster-trust``)."""

from __future__ import annotations

from typing import Sequence

import torch

from amalgam.errors import MethodError
from amalgam.methods.features.layers import feature_vector
from amalgam.teachers.teacher import Teacher, TeacherOutput


def probe_inputs(outputs: Sequence[TeacherOutput], taps: Sequence[str]) -> torch.Tensor:
    """``B x D``: each teacher's feature at its tap averaged over positions (ViT tokens as a grid, class token
    out), then each teacher's probabilities, side by side.

    >>> out = TeacherOutput(logits=torch.zeros(1, 2), features={"f": torch.ones(1, 3, 2, 2)})
    >>> probe_inputs([out], ["f"])
    tensor([[1.0000, 1.0000, 1.0000, 0.5000, 0.5000]])
    """
    features = [feature_vector(out.features[tap].float(), "mean") for out, tap in zip(outputs, taps)]
    return torch.cat(features + [out.logits.float().softmax(dim=-1) for out in outputs], dim=1)


def deepest_taps(method: str, teachers: Sequence[Teacher], taps: Sequence[str] | None = None) -> list[str]:
    """One tap per teacher: ``taps`` as given (checked for one per teacher), else each teacher's deepest
    suggested tap; ``method`` names the caller in the errors."""
    if taps is not None:
        if len(taps) != len(teachers):
            raise MethodError(f"{method}: teacher_taps needs one tap per teacher ({len(teachers)}), got {len(taps)}")
        return list(taps)
    missing = [t.name for t in teachers if not t.tap_names()]
    if missing:
        raise MethodError(f"{method}: teacher(s) {missing} suggest no feature taps; name one per teacher with "
                          "teacher_taps")
    return [t.tap_names()[-1] for t in teachers]
