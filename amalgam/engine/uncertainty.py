"""Calibration and the uncertainty of an ensemble (teachers, or a student's heads), shared/METHODS.md §7.

For members' probabilities ``p_m`` with mean ``p``: total uncertainty ``H[p]``, data (aleatoric) uncertainty
``mean_m H[p_m]``, model (epistemic) uncertainty their difference, the mutual information (>= 0, 0 when the
members agree).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from amalgam.methods.losses import entropy
from amalgam.teachers.placement import placed_targets
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher


def decompose(member_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample ``total``, ``data`` and ``model`` uncertainty (nats) of ``M x B x C`` member probabilities.

    >>> parts = decompose(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))  # two members, sure and opposite
    >>> [round(parts[k].item(), 4) for k in ("total", "data", "model")]  # log 2 = 0.6931
    [0.6931, 0.0, 0.6931]
    """
    total = entropy(member_probs.mean(dim=0))
    data = entropy(member_probs).mean(dim=0)
    return {"total": total, "data": data, "model": (total - data).clamp_min(0.0)}


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean ``-log p(y)`` (probabilities clamped at 1e-12)."""
    return float(-probs.gather(1, labels[:, None]).clamp_min(1e-12).log().mean())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE: over ``bins`` equal-width bins of confidence, the sample-weighted gap between mean confidence and
    accuracy.

    >>> round(expected_calibration_error(torch.tensor([[0.9, 0.1], [0.9, 0.1]]), torch.tensor([0, 1])), 4)
    0.4
    """
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    which = (confidence * bins).ceil().clamp(1, bins).long() - 1  # bin b holds (b/bins, (b+1)/bins]
    gap = torch.zeros(bins).index_add_(0, which, confidence - correct).abs()
    return float(gap.sum() / len(labels))


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean squared distance between the probabilities and the one-hot label, summed over classes."""
    one_hot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return float(((probs - one_hot) ** 2).sum(dim=1).mean())


def auroc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of a score that should be higher on ``positives`` (e.g. out-of-distribution
    images) than on ``negatives``: the chance that a random positive outscores a random negative (ties: half).

    >>> auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.2]))
    0.875
    """
    scores = torch.cat([negatives, positives]).double()
    ranks = _average_ranks(scores)
    n_neg, n_pos = len(negatives), len(positives)
    positive_rank_sum = ranks[n_neg:].sum()
    return float((positive_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks, ties sharing their mean rank (the Mann-Whitney convention)."""
    order = values.argsort()
    sorted_values = values[order]
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=values.dtype)
    unique, inverse = torch.unique(sorted_values, return_inverse=True)
    mean_rank = torch.zeros(len(unique), dtype=values.dtype).index_add_(0, inverse, ranks[order])
    mean_rank /= torch.bincount(inverse, minlength=len(unique)).to(values.dtype)
    result = torch.empty_like(values)
    result[order] = mean_rank[inverse]
    return result


def ensemble_report(member_probs: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
    """Mean total, data and model uncertainty of ``M x B x C`` member probabilities; with ``labels``, the
    accuracy, NLL, ECE and Brier score of the members' mean."""
    parts = decompose(member_probs)
    report = {f"{k}_uncertainty": float(v.mean()) for k, v in parts.items()}
    if labels is not None:
        mean = member_probs.mean(dim=0)
        report.update(accuracy=float((mean.argmax(dim=1) == labels).float().mean()),
                      nll=negative_log_likelihood(mean, labels), ece=expected_calibration_error(mean, labels),
                      brier=brier_score(mean, labels))
    return report


@torch.no_grad()
def teacher_member_probabilities(teachers: Sequence[Teacher], label_space: LabelSpace, images: torch.Tensor,
                                 batch_size: int = 256) -> torch.Tensor:
    """``K x N x C``: each teacher's probabilities on raw ``images``, placed in the union label space (zero on
    the classes it does not know), to compare a student's heads with the teachers they learned."""
    device = teachers[0].device
    members = []
    for k, teacher in enumerate(teachers):
        index = label_space.index_tensor(k, device)
        members.append(torch.cat([
            placed_targets([teacher(chunk.to(device)).logits.float()], [index], 1.0, label_space.num_classes)[0].cpu()
            for chunk in images.split(batch_size)
        ]))
    return torch.stack(members)


def member_probabilities_of(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``M x B x C``: the probabilities of a model's voting members on a batch (a student's heads over its
    classes, or the model itself when it has one output)."""
    outputs = model(images)
    members = model.members(outputs) if isinstance(outputs, dict) else [outputs]
    return torch.stack([z.float().softmax(dim=-1) for z in members])


@torch.no_grad()
def student_member_probabilities(student: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``M x N x C``: :func:`member_probabilities_of` over raw ``images``, in batches."""
    device = next(student.parameters()).device
    was_training = student.training
    student.eval()
    chunks = [member_probabilities_of(student, chunk.to(device)).cpu() for chunk in images.split(batch_size)]
    student.train(was_training)
    return torch.cat(chunks, dim=1)
