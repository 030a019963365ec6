"""Teachers' outputs placed in the union label space through their index maps (shared/METHODS.md §0.1)."""

from __future__ import annotations

from typing import Sequence

import torch


def place_probabilities(
    probs: Sequence[torch.Tensor],
    indices: Sequence[torch.Tensor],
    weights: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """Teachers' probabilities moved into the union label space and summed with weights.

    ``q[:, j] = sum_k w_k * p_k[:, c]`` over the classes ``c`` of teacher ``k`` with ``idx_k[c] = j``: the
    scatter-add of shared/METHODS.md §6, which also covers disjoint teachers (then it is a weighted
    concatenation). ``weights`` is ``K`` (fixed) or ``B x K`` (per sample, e.g. trust).

    >>> place_probabilities([torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])],
    ...                     [torch.tensor([0, 1]), torch.tensor([1, 2])], torch.tensor([0.5, 0.5]), 3)
    tensor([[0.5000, 0.2500, 0.2500]])
    """
    batch = probs[0].shape[0]
    if weights.ndim == 1:
        weights = weights.expand(batch, -1)
    target = probs[0].new_zeros(batch, num_classes)
    for k, (p, idx) in enumerate(zip(probs, indices)):
        target.index_add_(1, idx.to(p.device), p * weights[:, k : k + 1])
    return target

def placed_targets(teacher_logits: Sequence[torch.Tensor], indices: Sequence[torch.Tensor], temperature: float,
                   num_classes: int) -> list[torch.Tensor]:
    """Each teacher's ``softmax(z_k / tau)`` alone in the union label space (zero on classes it does not know):
    the per-teacher targets of students with a head or branch per teacher.

    >>> placed_targets([torch.zeros(1, 2)], [torch.tensor([2, 0])], 1.0, 3)
    [tensor([[0.5000, 0.0000, 0.5000]])]
    """
    one = torch.ones(1, device=teacher_logits[0].device)
    return [place_probabilities([(z / temperature).softmax(dim=-1)], [idx.to(z.device)], one, num_classes)
            for z, idx in zip(teacher_logits, indices)]

def place_logits(logits: Sequence[torch.Tensor], indices: Sequence[torch.Tensor], num_classes: int) -> torch.Tensor:
    """Teachers' raw logits side by side in the union space, as one classifier's logits.

    For disjoint teachers this is the plain concatenation ``[z_1; ...; z_K]`` that KamalEngine's KD and CFL
    targets use (shared/METHODS.md §0.1). A class known to several teachers gets the mean of their logits.

    >>> place_logits([torch.tensor([[1.0, 2.0]]), torch.tensor([[4.0, 3.0]])],
    ...              [torch.tensor([0, 1]), torch.tensor([1, 2])], 3)
    tensor([[1., 3., 3.]])
    """
    batch = logits[0].shape[0]
    total = logits[0].new_zeros(batch, num_classes)
    count = logits[0].new_zeros(num_classes)
    for z, idx in zip(logits, indices):
        idx = idx.to(z.device)
        total.index_add_(1, idx, z)
        count.index_add_(0, idx, torch.ones_like(idx, dtype=count.dtype))
    return total / count.clamp(min=1)

def membership_from_predictions(probs: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """``B x K``: the share of each row's probability mass on each teacher's classes, normalised over teachers.

    ``membership`` is the ``K x C`` 0/1 matrix of :meth:`LabelSpace.membership`. A class several teachers know
    counts for each of them before the normalisation.

    >>> membership_from_predictions(torch.tensor([[0.6, 0.3, 0.1]]), torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    tensor([[0.9000, 0.1000]])
    """
    mass = probs @ membership.T.to(probs.dtype)
    return mass / mass.sum(dim=-1, keepdim=True).clamp(min=1e-12)
