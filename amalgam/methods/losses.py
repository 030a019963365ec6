"""Loss terms that several methods share (shared/METHODS.md §0.1 and §11.2): one definition each."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from amalgam.data.augment import LabelMix


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

def label_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mix: LabelMix | None = None) -> torch.Tensor:
    """:func:`masked_cross_entropy` for views that may be mixed (:mod:`amalgam.data.augment`): sample ``b``
    costs ``w_b CE(labels_b) + (1 - w_b) CE(partner_b)``, averaged over the labeled rows.

    >>> logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    >>> mix = LabelMix(partner=torch.tensor([1]), weight=torch.tensor([0.75]))
    >>> round(label_cross_entropy(logits, torch.tensor([0]), mix).item(), 4)  # 0.75 ln 2 + 0.25 ln 4
    0.8664
    """
    if mix is None:
        return masked_cross_entropy(logits, labels)
    labeled = (labels >= 0) & (mix.partner >= 0)
    if not labeled.any():
        return logits.sum() * 0.0
    log_probs = F.log_softmax(logits[labeled].float(), dim=-1)
    weight = mix.weight[labeled].to(log_probs.dtype)
    first = log_probs.gather(1, labels[labeled, None])[:, 0]
    second = log_probs.gather(1, mix.partner[labeled, None])[:, 0]
    return -(weight * first + (1 - weight) * second).mean()


def pseudo_label_loss(strong_logits: torch.Tensor, weak_probs: torch.Tensor, labels: torch.Tensor,
                      threshold: float, prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's consistency term (Sohn et al., NeurIPS 2020): the class of each sample's weak view, where the
    model is sure of it, is learnt on its strong view.

    The pseudo-label distribution is ``r = weak_probs``, or with a ``prior`` (``B x C``, here the teachers'
    combined target) ``r ∝ weak_probs * prior``: the student and its teachers must agree for a class to pass
    (ours, inferred). Sample ``b`` costs ``CE(strong_logits_b, argmax r_b)`` where ``max r_b >= threshold``, and
    its label instead where it has one (``labels_b >= 0``); the sum is divided by the whole batch, as FixMatch
    divides by the unlabeled batch size, so few confident samples make a small term. Returns the term and the
    share of the batch that counted (on the device: read it when logging).

    >>> strong = torch.zeros(2, 2)  # CE = ln 2 whatever the class
    >>> weak = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    >>> loss, kept = pseudo_label_loss(strong, weak, torch.tensor([-1, -1]), 0.8)  # only the first: ln 2 / 2
    >>> round(loss.item(), 4), kept.item()
    (0.3466, 0.5)
    >>> prior = torch.tensor([[0.5, 0.5], [0.1, 0.9]])  # r_2 = (0.06, 0.36) / 0.42: 0.857 passes
    >>> round(pseudo_label_loss(strong, weak, torch.tensor([-1, -1]), 0.8, prior)[0].item(), 4)
    0.6931
    >>> round(pseudo_label_loss(strong, weak, torch.tensor([-1, 1]), 0.99)[0].item(), 4)  # a label always counts
    0.3466
    """
    r = weak_probs.float() if prior is None else weak_probs.float() * prior.float()
    confidence, pseudo = (r / r.sum(dim=-1, keepdim=True).clamp(min=1e-12)).max(dim=-1)
    labeled = labels >= 0
    classes = torch.where(labeled, labels, pseudo)
    keep = (labeled | (confidence >= threshold)).to(strong_logits.dtype)
    return (F.cross_entropy(strong_logits, classes, reduction="none") * keep).sum() / len(strong_logits), keep.mean()


def normalized_distance(x: torch.Tensor, y: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``B`` distances ``|| x_i / ||x_i||_2 - y_i / ||y_i||_2 ||_p`` between rows flattened to vectors.

    Only the direction of each feature counts, not its scale: FEED's term with ``p = 1`` (§10a), attention
    transfer's with ``p = 2`` (§10d). ``x`` and ``y`` need the same number of elements per row.

    >>> normalized_distance(torch.tensor([[3.0, 4.0]]), torch.tensor([[6.0, 8.0]])).item()  # same direction
    0.0
    >>> [round(normalized_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), p).item(), 4)
    ...  for p in (1, 2)]
    [2.0, 1.4142]
    """
    x, y = F.normalize(x.flatten(1).float(), dim=1), F.normalize(y.flatten(1).float(), dim=1)
    return torch.linalg.vector_norm(x - y, ord=p, dim=1)

def feature_reconstruction(reconstructed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a decoded feature against the (frozen) feature it should give back (§2, §3).

    >>> feature_reconstruction(torch.ones(2, 3), torch.zeros(2, 3)).item()
    1.0
    """
    return F.mse_loss(reconstructed.float(), target.float())
