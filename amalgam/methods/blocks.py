"""Loss building blocks shared by methods (shared/METHODS.md §0.1 and §11.2): one definition each."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD loss ``tau^2 * KL(p || softmax(z_s / tau))``, averaged over the batch.

    ``0 * log 0`` counts as 0, so targets may have exact zeros (classes a teacher does not know).

    >>> kd_loss(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]), temperature=2.0).item()
    0.0
    """
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    kl = torch.special.xlogy(target_probs, target_probs) - target_probs * log_q
    return temperature**2 * kl.sum(dim=-1).mean()


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


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of ``probs``.

    >>> entropy(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    tensor([0.6931, 0.3251])
    """
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def least_entropy_teacher(teacher_logits: Sequence[torch.Tensor], normalize: bool = False) -> torch.Tensor:
    """Per sample, the index of the teacher whose prediction has the least entropy (shared/METHODS.md §4).

    With ``normalize``, each teacher's entropy is divided by ``log C_k`` (its maximum), so teachers with more
    classes are not penalised for it.

    >>> least_entropy_teacher([torch.tensor([[0.0, 0.0], [5.0, 0.0]]), torch.tensor([[3.0, 0.0], [0.0, 0.0]])])
    tensor([1, 0])
    """
    scores = []
    for z in teacher_logits:
        h = entropy(z.softmax(dim=-1))
        scores.append(h / math.log(z.shape[-1]) if normalize and z.shape[-1] > 1 else h)
    return torch.stack(scores, dim=-1).argmin(dim=-1)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labeled rows (``labels >= 0``); 0 (with a graph) when the batch has none."""
    labeled = labels >= 0
    if not labeled.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labeled], labels[labeled])
