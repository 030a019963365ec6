"""Loss building blocks shared by methods (shared/METHODS.md §0.1 and §11.2): one definition each."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float,
            sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton's KD loss ``tau^2 * KL(p || softmax(z_s / tau))``, averaged over the batch.

    ``0 * log 0`` counts as 0, so targets may have exact zeros (classes a teacher does not know).
    ``sample_weights`` (``B``) multiply each sample's term before the batch mean.

    >>> kd_loss(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]), temperature=2.0).item()
    0.0
    """
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    kl = (torch.special.xlogy(target_probs, target_probs) - target_probs * log_q).sum(dim=-1)
    if sample_weights is not None:
        kl = kl * sample_weights
    return temperature**2 * kl.mean()


def teacher_kd_terms(student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor],
                     indices: Sequence[torch.Tensor], temperature: float,
                     sample_weights: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One KD term per teacher, each over that teacher's own classes only.

    Term ``k`` is ``kd_loss(z_s[:, idx_k], softmax(z_k / tau))``: the student's distribution restricted to
    teacher ``k``'s classes learns teacher ``k``'s (the expert terms of LFME, §10f; the paths of §10g).

    >>> [round(t.item(), 4) for t in teacher_kd_terms(torch.zeros(1, 3), [torch.tensor([[0.0, 0.0]])],
    ...                                               [torch.tensor([0, 2])], 1.0)]
    [0.0]
    """
    return [
        kd_loss(student_logits[:, idx.to(z.device)], (z / temperature).softmax(dim=-1), temperature, sample_weights)
        for z, idx in zip(teacher_logits, indices)
    ]


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


def membership_from_predictions(probs: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """``B x K``: the share of each row's probability mass on each teacher's classes, normalised over teachers.

    ``membership`` is the ``K x C`` 0/1 matrix of :meth:`LabelSpace.membership`. A class several teachers know
    counts for each of them before the normalisation.

    >>> membership_from_predictions(torch.tensor([[0.6, 0.3, 0.1]]), torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    tensor([[0.9000, 0.1000]])
    """
    mass = probs @ membership.T.to(probs.dtype)
    return mass / mass.sum(dim=-1, keepdim=True).clamp(min=1e-12)


def wsl_weights(student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights of weighted soft labels (WSL, shared/METHODS.md §10i), without gradient.

    ``w_i = 1 - exp(-max(0, l_s / (l_t + 1e-7)))`` with ``l_s = CE(y, softmax(z_s))`` and ``l_t = -log p_t[y]``
    at temperature 1: a sample the student already fits much better than the teacher gets a weight near 0.

    >>> wsl_weights(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([0]))  # l_s == l_t
    tensor([0.6321])
    """
    with torch.no_grad():
        student_loss = F.cross_entropy(student_logits.float(), labels, reduction="none")
        teacher_loss = -teacher_probs.float().gather(1, labels[:, None]).squeeze(1).clamp(min=1e-12).log()
        return 1.0 - torch.exp(-(student_loss / (teacher_loss + 1e-7)).clamp(min=0.0))


def self_paced_weight(teacher_accuracy: float, student_accuracy: float, theta: float = 0.3) -> float:
    """LFME's self-paced expert weight (shared/METHODS.md §10f).

    1 while the student is below ``theta`` of the expert's accuracy ``A``; then ``(A - a) / (A (1 - theta))``,
    down to 0 when the student matches the expert.

    >>> [self_paced_weight(1.0, a) for a in (0.2, 0.65, 1.0)]
    [1.0, 0.5, 0.0]
    """
    if teacher_accuracy <= 0 or student_accuracy < theta * teacher_accuracy:
        return 1.0
    return max(0.0, (teacher_accuracy - student_accuracy) / (teacher_accuracy * (1.0 - theta)))


def curriculum_weight(initial: torch.Tensor, epoch: int, epochs: int, clamp: bool = True) -> torch.Tensor:
    """LFME's curriculum instance weight ``v(e) = v(0) + (1 - v(0)) e / (E / 2)`` (§10f), epochs from 0.

    The official code does not clamp, so weights exceed 1 after half the run; ``clamp`` (default) stops at 1.

    >>> curriculum_weight(torch.tensor([0.5]), epoch=1, epochs=4)
    tensor([0.7500])
    >>> curriculum_weight(torch.tensor([0.5]), epoch=4, epochs=4, clamp=False)
    tensor([1.5000])
    """
    weight = initial + (1.0 - initial) * epoch / (epochs / 2.0)
    return weight.clamp(max=1.0) if clamp else weight


def alignment_weights(path_gradients: Sequence[torch.Tensor], task_gradient: torch.Tensor) -> torch.Tensor | None:
    """Weights of loss paths from how well each path's gradient agrees with the task's (§10g, inferred).

    ``lambda_p ~ max(0, cos(g_p, g_task))``, normalised so the weights sum to the number of paths ``P``;
    ``None`` when no path agrees (the caller keeps its previous weights).

    >>> alignment_weights([torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])], torch.tensor([1.0, 1.0]))
    tensor([2., 0.])
    """
    cosines = torch.stack([F.cosine_similarity(g.flatten(), task_gradient.flatten(), dim=0) for g in path_gradients])
    agree = cosines.clamp(min=0.0)
    if agree.sum() <= 0:
        return None
    return agree * len(path_gradients) / agree.sum()


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over the processes of a distributed run (``values`` itself in one process).

    Statistics a method keeps from its batches (path weights...) must be the same on every rank, or the ranks
    optimise different losses.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()
