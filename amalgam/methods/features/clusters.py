"""Zero-label trust per cluster of images: k-means on what the teachers see, and each cluster given to the teachers
that are confident on it as a whole."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from amalgam.errors import MethodError
from amalgam.methods.base import Needs, Setup
from amalgam.methods.features.seen import deepest_taps, probe_inputs
from amalgam.methods.registry import register_method
from amalgam.methods.targets.confidence import CalibratedConfidence, confidence_scores
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher, TeacherOutput


CACHE_ON = "cache_teachers=True and the knowledge cache on (knowledge_cache=True, the default, or a folder)"


@torch.no_grad()
def kmeans(points: torch.Tensor, k: int, generator: torch.Generator | None = None,
           iterations: int = 25) -> torch.Tensor:
    """``k`` centroids of ``points`` (``N x D``) by Lloyd's algorithm from ``k`` distinct random points; a cluster
    that empties keeps its centroid.

    >>> points = torch.tensor([[0.0], [0.2], [10.0], [10.2]])
    >>> kmeans(points, 2, torch.Generator().manual_seed(0)).sort(dim=0).values.squeeze(1).tolist()
    [0.10000000149011612, 10.100000381469727]
    """
    if not 1 <= k <= len(points):
        raise MethodError(f"kmeans: k must be between 1 and the number of points ({len(points)}), got {k}")
    centroids = points[torch.randperm(len(points), generator=generator)[:k].to(points.device)].clone()
    for _ in range(iterations):
        nearest = torch.cdist(points, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, points)
        counts = torch.bincount(nearest, minlength=k)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


def cluster_means(values: torch.Tensor, assignment: torch.Tensor, k: int) -> torch.Tensor:
    """``k x K``: the mean of ``values`` (``N x K``) over each cluster's rows (0 for an empty cluster).

    >>> cluster_means(torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([0, 0, 1]), 3).squeeze(1).tolist()
    [2.0, 5.0, 0.0]
    """
    sums = torch.zeros(k, values.shape[1], dtype=values.dtype, device=values.device).index_add_(0, assignment, values)
    return sums / torch.bincount(assignment, minlength=k).clamp(min=1)[:, None].to(values.dtype)


@register_method
class ClusterTrust(CalibratedConfidence):
    """Trust without labels, decided per cluster of images instead of per image (an amalgam method).

    ``confidence-trust`` asks each image which teacher is surest of it; a teacher that never saw a class can be
    sure of a wrong answer on it (both Fashion-MNIST teachers take a Shirt for one of their own classes), and one
    image cannot tell. A group of look-alike images can: the teacher whose classes they are is confident on most
    of them, the others only on some. So the transfer set is clustered (k-means) on what the teachers see, each
    teacher's deepest suggested tap averaged over positions beside its probabilities (as ``feature-probe`` reads
    them), standardised over the transfer set; each cluster's weights are the softmax, over teachers, of their
    mean standardised confidence (confidence-trust's score, calibrated on the same unlabeled set) over the
    cluster's images, divided by ``sharpness``. No single number of clusters is right for every data set (the
    best on the benchmark was 10 on one setting and 100 on another), so the weights are averaged over k-means runs
    for each count in ``clusters`` (each capped at the transfer set's size). An image's weights are those of its
    nearest centroid in each run; a training row's are computed once, in ``setup``, from the knowledge cache (so
    the run must cache the teachers). The target and loss are confidence-trust's.

    No paper: clustering the unlabeled transfer set to assign it to teachers is issue 17's direction ("decide whom
    to trust per cluster"); the score is Hendrycks & Gimpel's max-softmax (ICLR 2017) and the averaging over k
    is a plain ensemble of clusterings. How often its target is right on the test split (bench/trust_choices.py,
    2026-12-03): Fashion-MNIST split 0.805, three overlapping teachers 0.837, digits split 0.917 and overlap 0.886,
    against confidence-trust's 0.779, 0.776, 0.919 and 0.833. Its students (3 seeds, bench/results/feature-probe/):
    0.796, 0.798, 0.957 and 0.891, against 0.775, 0.777, 0.928 and 0.854. ``feature-probe`` with
    ``pseudo_labels=True, pseudo_from="cluster-trust"`` fits a class probe to this target's surer half.

    With ``class_prior="uniform"`` (an option of every weighted-target method, see
    :class:`~amalgam.methods.targets.soft_targets.WeightedTargets`) the target's class shares over the transfer set
    are matched to equal ones: the teachers' over-claiming (both Fashion-MNIST split teachers take a Shirt for one
    of theirs, the CNN takes a Sneaker for a T-shirt) is taken back class by class. With ``temperature=2`` these are
    the best label-free students of the benchmark (3 seeds, bench/results/class-prior/, 2026-12-06, bench teachers
    trained afresh, not those of the rows above): Fashion-MNIST split 0.840 and overlap 0.864
    against 0.764 and 0.794 without the prior (and 0.863 / 0.874 for ``feature-probe`` with 2% labels); digits
    0.968 and 0.947 against 0.957 and 0.862. The prior must be right: on a transfer set whose rarest class is a
    fifth as common as its commonest, a uniform prior makes the target worse than none (``bench/class_prior.py``);
    give the shares then.

    Its weights read features, so ``combined_target`` (the teachers' logits only) has none: the benchmark's
    trust-choices rows give its accuracy (:meth:`weights_of` on the test split's outputs).

    Args:
        clusters: the cluster counts whose weights are averaged (default 10, 20, 50, 100, 200).
        teacher_taps: one tap per teacher (default: each teacher's deepest suggested tap).
        score, sharpness, temperature, soft_weight, label_weight, target, student_feedback: as for
            ``confidence-trust``.
    """

    name = "cluster-trust"
    paper = "amalgam's zero-label mode (trust per k-means cluster of the teachers' features; Hendrycks & Gimpel, 2017)"
    summary = "No labels needed: cluster the images on the teachers' features, trust per cluster by confidence."

    @dataclass
    class Options(CalibratedConfidence.Options):
        """See the class."""

        clusters: Sequence[int] = (10, 20, 50, 100, 200)
        teacher_taps: Sequence[str] | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            self.require(len(self.clusters) > 0 and all(int(k) >= 1 for k in self.clusters),
                         f"clusters must be one or more positive counts, got {list(self.clusters)}")

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        self.taps = deepest_taps("cluster-trust", teachers, self.options.teacher_taps)
        self.counts = [int(k) for k in self.options.clusters]
        self.register_buffer("input_mean", torch.zeros(0))
        self.register_buffer("input_std", torch.ones(0))
        self.centroids: list[torch.Tensor] = []  # one k x D tensor per count
        self.cluster_weights: list[torch.Tensor] = []  # one k x K tensor per count
        self.row_weights: torch.Tensor | None = None

    def needs(self) -> Needs:
        return Needs(label_free=True, teacher_taps=tuple((tap,) for tap in self.taps))

    @torch.no_grad()
    def prepare(self, ctx: Setup) -> None:
        """Calibrate the confidences, cluster the transfer set for each count, and give every row its weights."""
        if ctx.transfer_logits is None or ctx.transfer_rows is None:
            raise MethodError("cluster-trust clusters the teachers' cached features over the transfer set: run it "
                              f"with {CACHE_ON}")
        super().prepare(ctx)
        rows = torch.arange(len(ctx.transfer_logits[0]))
        inputs = torch.cat([probe_inputs(ctx.transfer_rows(chunk), self.taps) for chunk in rows.split(4096)])
        device = self.score_mean.device
        inputs = inputs.to(device)
        self.input_mean, self.input_std = inputs.mean(dim=0), inputs.std(dim=0).nan_to_num(0.0) + 1e-6
        points = (inputs - self.input_mean) / self.input_std
        logits = [z.to(device) for z in ctx.transfer_logits]
        standard = (confidence_scores(logits, self.score) - self.score_mean) / self.score_std
        generator = torch.Generator().manual_seed(0)
        self.centroids, self.cluster_weights = [], []
        for k in self.counts:
            centroids = kmeans(points, min(k, len(points)), generator)
            nearest = torch.cdist(points, centroids).argmin(dim=1)
            self.centroids.append(centroids)
            self.cluster_weights.append((cluster_means(standard, nearest, len(centroids)) / self.sharpness)
                                        .softmax(dim=-1))
        self.row_weights = self._weights_of_points(points)

    def _weights_of_points(self, points: torch.Tensor) -> torch.Tensor:
        chunks = []
        for part in points.split(4096):
            chunks.append(torch.stack([weights[torch.cdist(part, centroids).argmin(dim=1)]
                                       for centroids, weights in zip(self.centroids, self.cluster_weights)]).mean(0))
        return torch.cat(chunks)

    @torch.no_grad()
    def weights_of(self, outputs: Sequence[TeacherOutput]) -> torch.Tensor:
        """``B x K`` teacher weights for any images, from the teachers' outputs on them (with the taps)."""
        if not self.centroids:
            raise MethodError("cluster-trust: not clustered yet; setup() clusters the transfer set (the engine "
                              "calls it)")
        inputs = probe_inputs(outputs, self.taps).to(self.input_mean.device)
        return self._weights_of_points((inputs - self.input_mean) / self.input_std)

    def teacher_weights(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor | None) -> torch.Tensor:
        raise MethodError(f"cluster-trust looks its weights up by the rows of the cached teacher signals: run it with "
                          f"{CACHE_ON}")

    def batch_teacher_weights(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor | None,
                              rows: torch.Tensor | None) -> torch.Tensor:
        if self.row_weights is None or rows is None:
            return self.teacher_weights(teacher_logits, images)
        if self.row_weights.device != teacher_logits[0].device:
            self.row_weights = self.row_weights.to(teacher_logits[0].device)
        return self.row_weights[rows.to(self.row_weights.device)]

    def combined_target(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor) -> torch.Tensor | None:
        return None
