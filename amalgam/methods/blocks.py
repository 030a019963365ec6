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


MMD_SIGMAS = (0.001, 0.01, 0.05, 0.1, 0.2, 1.0, 2.0)  # CFL's official kernel widths (shared/METHODS.md §0.1)


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
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"multi_kernel_mmd needs batches of one size, got {x.shape[0]} and {y.shape[0]}")
    x, y = x.flatten(1).float(), y.flatten(1).float()
    if normalize:
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # |a|^2 + |b|^2 - 2ab, as the official code computes it; the clamp keeps the diagonal's rounding >= 0
        distances = ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T).clamp(min=1e-12)
        return sum(torch.exp(-distances / (2.0 * s * s)) for s in sigmas)

    return (kernel(x, x).mean() + kernel(y, y).mean() - 2.0 * kernel(x, y).mean()).clamp(min=0.0)


def feature_reconstruction(reconstructed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a decoded feature against the (frozen) feature it should give back (§2, §3).

    >>> feature_reconstruction(torch.ones(2, 3), torch.zeros(2, 3)).item()
    1.0
    """
    return F.mse_loss(reconstructed.float(), target.float())


def triplet_votes(features: Sequence[torch.Tensor], normalize: bool = True) -> torch.Tensor:
    """The teachers' summed votes on every in-batch triplet (relative dissimilarity, §1, inferred).

    ``features`` holds one ``B x D_k`` tensor per teacher (widths may differ). Entry ``[a, i, j]`` of the
    ``B x B x B`` result is ``sum_k sign(d_k(a, j) - d_k(a, i))`` with ``d_k`` the squared Euclidean distance
    between teacher ``k``'s (optionally L2-normalised) features: positive when the teachers say ``x_i`` is
    closer to the anchor ``x_a`` than ``x_j``. Entries whose indices are not distinct are 0.

    >>> triplet_votes([torch.tensor([[0.0], [1.0], [3.0]])], normalize=False)[0]  # anchor 0: 1 is closer than 3
    tensor([[ 0.,  0.,  0.],
            [ 0.,  0.,  1.],
            [ 0., -1.,  0.]])
    """
    total = None
    for g in features:
        d = squared_distances(g, normalize)
        votes = torch.sign(d[:, None, :] - d[:, :, None])  # [a, i, j] = sign(d(a, j) - d(a, i))
        total = votes if total is None else total + votes
    batch = total.shape[0]
    eye = torch.eye(batch, dtype=torch.bool, device=total.device)
    distinct = ~(eye[:, :, None] | eye[:, None, :] | eye[None, :, :])
    return torch.where(distinct, total, torch.zeros_like(total))


def squared_distances(features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``B x B`` squared Euclidean distances between the rows of ``features`` (flattened, L2-normalised first
    with ``normalize``).

    >>> squared_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), normalize=False)
    tensor([[ 0., 25.],
            [25.,  0.]])
    """
    g = features.flatten(1).float()
    if normalize:
        g = F.normalize(g, dim=1)
    return (g[:, None, :] - g[None, :, :]).pow(2).sum(-1)


def relative_dissimilarity_loss(student_features: torch.Tensor, votes: torch.Tensor, num_teachers: int,
                                margin: float = 0.1, normalize: bool = True, vote: str = "hard") -> torch.Tensor:
    """The student's triplet loss on the orderings its teachers voted for (You et al., KDD 2017, §1, inferred).

    Each triplet ``(a, i, j)`` with a positive vote ``v = votes[a, i, j]`` (``x_i`` closer to ``x_a``; the
    same triplet with ``i``, ``j`` swapped has ``-v`` and is not counted twice) costs
    ``[d_s(a, i) - d_s(a, j) + margin]_+``. Ties (``v = 0``) are dropped. ``vote="hard"`` weights every voted
    triplet 1 (the sign of the vote), ``"soft"`` by ``|v| / K``. The result is the weighted sum over the
    number of voted triplets (0, with a graph, when there are none).

    >>> g = torch.tensor([[0.0], [1.0], [3.0]])
    >>> relative_dissimilarity_loss(g, triplet_votes([g], normalize=False), 1, margin=0.0, normalize=False).item()
    0.0
    """
    d = squared_distances(student_features, normalize)
    hinge = (d[:, :, None] - d[:, None, :] + margin).clamp(min=0.0)  # [a, i, j]: d(a, i) - d(a, j) + margin
    voted = votes > 0
    if not voted.any():
        return student_features.sum() * 0.0
    if vote == "soft":
        weights = votes.abs() / num_teachers
    elif vote == "hard":
        weights = torch.ones_like(votes)
    else:
        raise ValueError(f"vote must be 'hard' or 'soft', got {vote!r}")
    return (hinge * weights * voted).sum() / voted.sum()


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


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def gradient_reversal(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``x`` unchanged, but the gradient flowing back through it multiplied by ``-scale`` (Ganin & Lempitsky's
    gradient-reversal layer): a loss that a module after it minimises is maximised by everything before it, so
    one optimizer step plays both sides of a min-max game.

    >>> x = torch.ones(2, requires_grad=True)
    >>> gradient_reversal(x, 0.5).sum().backward()
    >>> x.grad
    tensor([-0.5000, -0.5000])
    """
    return _GradientReversal.apply(x, float(scale))
