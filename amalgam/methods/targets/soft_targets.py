"""Targets built from the teachers' probabilities, placed in the union label space with weights.

:class:`WeightedTargets` is the shared mechanism: each teacher's softened probabilities go through its index
map into the union space and are summed with weights (``place_probabilities``), and the student is distilled
towards that target. The methods differ only in the weights: fixed (soft targets), one-hot on the least
uncertain teacher (selective learning), learned trust (the teacher trust learner).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F

from amalgam.data.augment import strong_views
from amalgam.errors import MethodError
from amalgam.methods.base import Batch, Method, Options, Setup, StepInputs, StudentForward
from amalgam.methods.losses import kd_loss, label_cross_entropy, pseudo_label_loss
from amalgam.methods.registry import register_method
from amalgam.methods.targets.prior import fit_prior_shift, resolve_prior, shift_probabilities
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.placement import membership_from_predictions, place_logits, place_probabilities
from amalgam.teachers.teacher import Teacher

class WeightedTargets(Method):
    """Base of the methods whose target is ``q = sum_k w_k(x) * softmax(z_k / tau)`` in the union space.

    Loss: ``soft_weight * tau^2 KL(q || softmax(z_s / tau)) + label_weight * CE(y, z_s)`` on the labeled
    fraction. With ``target="hard"`` the student learns the argmax of ``q`` instead (cross-entropy, tau = 1).
    Subclasses implement :meth:`teacher_weights`, and may weight samples (:meth:`sample_weights`).

    ``student_feedback`` (an option of ours, 0 = off) mixes the student's own view into per-sample teacher
    weights: ``w <- (1 - a) w + a m_s(x)``, where ``m_s`` is the share of the student's probability on each
    teacher's classes and ``a`` grows linearly from 0 in the first epoch to ``student_feedback`` in the last.
    The student, which learns from all the unlabeled data, thus corrects the choice of teacher as it improves.

    ``consistency`` (ours, 0 = off) adds FixMatch's term (Sohn et al., NeurIPS 2020), so the student can learn
    from the images what its target gets wrong: each batch also goes through the student as a strong view
    (:func:`~amalgam.data.augment.strong_views`: crop and Cutout, in one forward with the batch, as FixMatch
    batches its views), and where the student's prediction on the batch's own view, times the combined target at
    temperature 1 (``consistency_prior="target"``; ``"none"``: the student's alone), is at least
    ``consistency_threshold`` sure of a class, the strong view learns that class
    (:func:`~amalgam.methods.losses.pseudo_label_loss`; labeled samples learn their label). Its weight is
    ``consistency``; each epoch's record has ``consistency_kept``, the share of samples that learnt a class on
    their strong view. Deviations: FixMatch has no teachers (the prior is ours), uses RandAugment, and trains for
    about a thousand epochs.

    ``class_prior`` (ours, ``None`` = off) moves the combined target's classes so that their shares over the
    transfer set match a prior (:mod:`amalgam.methods.targets.prior`): ``"uniform"`` (the classes are about equally
    common), ``"labels"`` (their shares among the labeled fraction) or a ``{class: share}`` table. Once, after
    :meth:`prepare`, the target is computed on every cached transfer row (so the run must cache the teachers) and
    one log-weight per class is fitted (:func:`~amalgam.methods.targets.prior.fit_prior_shift`, ``prior_sharpness``:
    the share of images each class wins, not only its probability mass, is matched), at the method's temperature
    (the target the student learns: a mixture of softened teachers is not the softened mixture, so the shift at 1
    divided by the temperature would not balance it) and at 1 (the consistency term's and the pseudo-labels'
    target). A teacher confidently wrong on classes it never saw over-fills its own classes; the prior takes the
    surplus back. With a wrong prior it does harm: see the README's table of imbalanced transfer sets.
    """

    @dataclass
    class Options(Options):
        """``temperature``: ``tau``; ``soft_weight``: the distillation term's weight; ``label_weight``: the
        cross-entropy's on labeled samples (used only when the run has labels); ``target``: ``"soft"``, or
        ``"hard"`` for the argmax of the combined target; ``student_feedback``: see the class."""

        temperature: float = 4.0
        soft_weight: float = 1.0
        label_weight: float = 1.0
        target: Literal["soft", "hard"] = "soft"
        student_feedback: float = 0.0
        consistency: float = 0.0
        consistency_threshold: float = 0.95
        consistency_prior: Literal["target", "none"] = "target"
        class_prior: Literal["uniform", "labels"] | dict[str, float] | None = None
        prior_sharpness: float = 5.0

        def __post_init__(self) -> None:
            super().__post_init__()
            self.require(self.prior_sharpness > 0, f"prior_sharpness must be positive, got {self.prior_sharpness}")
            self.require(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
            self.require(self.consistency >= 0, f"consistency must be 0 (off) or positive, got {self.consistency}")
            self.require(0.0 < self.consistency_threshold <= 1.0,
                         f"consistency_threshold must be in (0, 1], got {self.consistency_threshold}")
            self.require(0.0 <= self.student_feedback <= 1.0,
                         f"student_feedback must be in [0, 1], got {self.student_feedback}")

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        o = self.options
        self.student_feedback = float(o.student_feedback)
        self.feedback_share = 0.0
        self.temperature = float(o.temperature)
        self.soft_weight = float(o.soft_weight)
        self.label_weight = float(o.label_weight)
        self.target_mode = o.target
        self.consistency = float(o.consistency)
        self.consistency_threshold = float(o.consistency_threshold)
        self.consistency_prior = o.consistency_prior
        self.kept: list[torch.Tensor] = []  # each batch's share of samples the consistency term kept (on the device)
        self.register_buffer("membership", label_space.membership(), persistent=False)
        self.class_prior = o.class_prior
        if self.class_prior is not None and type(self).setup is not WeightedTargets.setup:
            # a subclass's own setup() would skip fitting the prior, and the option would do nothing
            raise MethodError(f"{self.name} overrides setup(), which skips class_prior: implement prepare() instead "
                              "(WeightedTargets.setup runs it, then fits the prior)")
        # the class prior's log-weights at the method's temperature and at 1 (empty: none), fitted in setup() from
        # the cached signals, so not saved
        self.register_buffer("prior_shift", torch.zeros(0), persistent=False)
        self.register_buffer("plain_prior_shift", torch.zeros(0), persistent=False)

    def setup(self, ctx: Setup) -> None:
        """:meth:`prepare`, then, with a ``class_prior``, fit the target's shift towards it on the transfer set."""
        self.prepare(ctx)
        if self.class_prior is not None:
            self.fit_class_prior(ctx)

    def prepare(self, ctx: Setup) -> None:
        """Fit or build what the teachers' weights and the method's other parts need (nothing by default)."""

    @torch.no_grad()
    def fit_class_prior(self, ctx: Setup) -> None:
        """The combined target on every cached transfer row (evaluation mode), and the log-weights that bring its
        class shares to the ``class_prior``: at the method's temperature (the target the student learns) and at
        temperature 1 (the one its consistency term and pseudo-labels read)."""
        if ctx.transfer_logits is None:
            raise MethodError(f"{self.name}: class_prior fits the target's class shares on the teachers' outputs over "
                              "the transfer set: run it with cache_teachers=True")
        prior = resolve_prior(self.class_prior, self.label_space, ctx.labeled.labels if ctx.labeled else None)
        was_training = self.training
        self.eval()
        device, rows = self.membership.device, torch.arange(len(ctx.transfer_logits[0]))
        self.prior_shift = self.plain_prior_shift = torch.zeros(0, device=device)
        temperatures = list(dict.fromkeys([self.temperature, 1.0]))
        targets: dict[float, list[torch.Tensor]] = {tau: [] for tau in temperatures}
        for chunk in rows.split(4096):  # each chunk's logits and images read once, for both temperatures
            logits = [z[chunk].to(device) for z in ctx.transfer_logits]
            images = self.transfer_images(ctx, chunk)
            for tau in temperatures:
                targets[tau].append(self.target(logits, images, temperature=tau, rows=chunk).float())
        shifts = [fit_prior_shift(torch.cat(targets[tau]), prior.to(device), float(self.options.prior_sharpness))
                  for tau in temperatures]
        self.prior_shift, self.plain_prior_shift = shifts[0], shifts[-1]
        self.train(was_training)

    def transfer_images(self, ctx: Setup, rows: torch.Tensor) -> torch.Tensor | None:
        """The images of transfer ``rows``, for teacher weights that read them (none by default)."""
        return None

    def teacher_weights(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor | None) -> torch.Tensor:
        """``K`` or ``B x K`` weights of the teachers for this batch (``images``: the raw batch)."""
        raise NotImplementedError

    def batch_teacher_weights(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor | None,
                              rows: torch.Tensor | None) -> torch.Tensor:
        """The teachers' weights on a training batch (``rows``: its rows in the teacher signals); by default
        :meth:`teacher_weights`. A method whose weights are a fixed function of the cached signals may look
        them up by row instead of computing them each step."""
        return self.teacher_weights(teacher_logits, images)

    def sample_weights(self, step: StepInputs, teacher_logits: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """``B`` weights of the samples' distillation terms (``None``: all 1)."""
        return None

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.feedback_share = self.student_feedback * (epoch - 1) / max(1, epochs - 1)

    def target(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor | None = None,
               temperature: float | None = None, student_logits: torch.Tensor | None = None,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        """The combined target over the union classes (with the student's feedback when its logits are given;
        ``rows``: a training batch's rows, see :meth:`batch_teacher_weights`), shifted towards the class prior
        once it is fitted."""
        tau = self.temperature if temperature is None else temperature
        combined = self.combine(teacher_logits, images, tau, student_logits, rows)
        if not len(self.prior_shift):
            return combined
        if tau == self.temperature:
            return shift_probabilities(combined, self.prior_shift)
        # at any other temperature, the shift fitted at 1, softened with the logits (exact at 1 itself)
        return shift_probabilities(combined, self.plain_prior_shift, tau)

    def combine(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor | None, tau: float,
                student_logits: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor:
        """The teachers combined at temperature ``tau`` (see :meth:`target`), before any class prior."""
        probs = [(z / tau).softmax(dim=-1) for z in teacher_logits]
        weights = self.batch_teacher_weights(teacher_logits, images, rows) if rows is not None \
            else self.teacher_weights(teacher_logits, images)
        if student_logits is not None and self.feedback_share > 0:
            student_view = membership_from_predictions(student_logits.detach().float().softmax(dim=-1),
                                                       self.membership)
            weights = (1.0 - self.feedback_share) * weights + self.feedback_share * student_view
        return place_probabilities(probs, self.indices(), weights, self.label_space.num_classes)

    def combined_target(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        return self.target(teacher_logits, images)

    def step(self, batch: Batch, student: StudentForward) -> dict[str, torch.Tensor]:
        """The default step, plus the consistency term on a strong view of the batch when ``consistency > 0``."""
        if self.consistency == 0 or not self.training:
            return super().step(batch, student)
        size = len(batch.images)
        both, features = student(torch.cat([batch.images, strong_views(batch.images)]))
        logits, strong = both[:size], both[size:]
        losses = self.loss(StepInputs.of(batch, logits, {k: v[:size] for k, v in features.items()}))
        teacher_logits = [out.logits for out in batch.teacher_outputs]
        with torch.no_grad():
            prior = (self.target(teacher_logits, batch.images, temperature=1.0, rows=batch.rows)
                     if self.consistency_prior == "target" else None)
            weak = logits.detach().float().softmax(dim=-1)
        term, kept = pseudo_label_loss(strong, weak, batch.labels, self.consistency_threshold, prior)
        self.kept.append(kept.detach())
        losses["consistency"] = self.consistency * term
        return losses

    def end_epoch(self, student: torch.nn.Module) -> dict[str, float]:
        """With consistency: the share of samples whose strong view learnt a class this epoch (read once here)."""
        if not self.kept:
            return {}
        share, self.kept = float(torch.stack(self.kept).mean()), []
        return {"consistency_kept": share}

    def loss(self, step: StepInputs) -> dict[str, torch.Tensor]:
        logits = [out.logits for out in step.teacher_outputs]
        target = self.target(logits, step.images, student_logits=step.student_logits, rows=step.rows)
        weights = self.sample_weights(step, logits)
        if self.target_mode == "hard":
            hard = F.one_hot(target.argmax(dim=-1), self.label_space.num_classes).to(target.dtype)
            losses = {"soft": self.soft_weight * kd_loss(step.student_logits, hard, 1.0, weights)}
        else:
            losses = {"soft": self.soft_weight * kd_loss(step.student_logits, target, self.temperature, weights)}
        if self.label_weight > 0:
            losses["labels"] = self.label_weight * label_cross_entropy(step.student_logits, step.labels, step.label_mix)
        return losses


@register_method
class SoftTargets(WeightedTargets):
    """Distil the teachers' averaged softened predictions, placed in the union label space.

    Output level of You et al., KDD 2017 (shared/METHODS.md §1): ``p = sum_k w_k softmax(z_k / tau)``
    with fixed weights ``w`` (the mean by default; fixed weighted averaging as in §10h). Each teacher's
    probabilities go through its index map into the union space (scatter-add), so teachers with different or
    overlapping label spaces are combined by class name, never by position. Loss:
    ``soft_weight * tau^2 KL(p || softmax(z_s / tau)) + label_weight * CE(y, z_s)`` on the labeled fraction.

    The relative-dissimilarity term of §1 is a feature method and lives with those. Known limit (and the
    reason for the trust methods): a teacher is confidently wrong on classes it has never seen, and a fixed
    weight cannot tell.

    Args:
        temperature: ``tau`` (§1's library default, 4).
        weights: one non-negative weight per teacher (normalised to sum 1), default equal.
        soft_weight: ``lambda_ST``.
        label_weight: weight of the cross-entropy on labeled samples (used only when the run has labels).
        target: ``"soft"``, or ``"hard"`` for the argmax of the combined target.
    """

    name = "soft-targets"
    paper = "You, Xu, Xu, Tao. Learning from Multiple Teacher Networks. KDD 2017"
    summary = "Average the teachers' softened predictions over the union label space and distil them."

    @dataclass
    class Options(WeightedTargets.Options):
        """``weights``: one non-negative weight per teacher (normalised to sum 1), default equal."""

        weights: Sequence[float] | None = None

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        weights = self.options.weights
        weights = [1.0] * self.num_teachers if weights is None else [float(w) for w in weights]
        if len(weights) != self.num_teachers or min(weights) < 0 or sum(weights) <= 0:
            raise MethodError(
                f"{self.name}: weights needs {self.num_teachers} non-negative values (one per teacher) with a "
                f"positive sum, got {weights}"
            )
        self.register_buffer("weights", torch.tensor(weights) / sum(weights), persistent=False)

    def teacher_weights(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor | None) -> torch.Tensor:
        return self.weights


@register_method
class ConcatenatedLogits(WeightedTargets):
    """Distil one softmax over the teachers' logits placed side by side (concatenated) in the union space.

    The KD target of KamalEngine's amalgamators and of CFL's soft-target term (shared/METHODS.md §0.1, §2):
    ``p = softmax([z_1; ...; z_K] / tau)``. Teachers compete inside one softmax, so a teacher that is
    confidently wrong on a class it never saw wins over the right, less confident one: the baseline the
    selection and trust methods exist to beat. Overlapping classes take the mean of their teachers' logits
    (a choice of ours: concatenation by position has no meaning there). Options as for ``soft-targets``.
    """

    name = "concat-logits"
    paper = "Reference target of KamalEngine (Luo et al., IJCAI 2019; Shen et al., AAAI 2019)"
    summary = "One softmax over the teachers' concatenated logits (the naive amalgamation target)."

    def combine(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor | None, tau: float,
                student_logits: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor:
        logits = place_logits(list(teacher_logits), self.indices(), self.label_space.num_classes)
        return (logits / tau).softmax(dim=-1)


@register_method
class TeacherSwitching(WeightedTargets):
    """Each mini-batch learns from one teacher only, switching teacher from batch to batch (§10h, inferred).

    Fukuda et al. (Interspeech 2017) switch teacher labels at the mini-batch level; their other option, one
    copy of each sample per teacher, has the gradient of ``soft-targets`` (the KD loss is linear in the
    target), so it is that method. Batches take teachers in turn (``order="round-robin"``) or at random
    (``"random"``, seeded by the run). In evaluation the target is the teachers' mean, what switching averages to.

    Args:
        order: ``"round-robin"`` or ``"random"``.
        temperature, soft_weight, label_weight, target: as for ``soft-targets``.
    """

    name = "teacher-switching"
    paper = ("Fukuda, Suzuki, Kurata, Thomas, Cui, Ramabhadran. Efficient Knowledge Distillation from an Ensemble "
             "of Teachers. Interspeech 2017")
    summary = "Each mini-batch distils one teacher, switching teachers from batch to batch."

    @dataclass
    class Options(WeightedTargets.Options):
        """``order``: ``"round-robin"`` or ``"random"``."""

        order: Literal["round-robin", "random"] = "round-robin"

    def __init__(self, label_space: LabelSpace, teachers: Sequence[Teacher], options: Options | None = None,
                 **overrides: Any) -> None:
        super().__init__(label_space, teachers, options, **overrides)
        self.order = self.options.order
        self.batches_seen = 0
        self.generator = torch.Generator().manual_seed(int(torch.initial_seed()) % 2**31)

    def teacher_weights(self, teacher_logits: Sequence[torch.Tensor], images: torch.Tensor | None) -> torch.Tensor:
        device = teacher_logits[0].device
        if not self.training:
            return torch.full((self.num_teachers,), 1.0 / self.num_teachers, device=device)
        if self.order == "random":
            chosen = int(torch.randint(self.num_teachers, (1,), generator=self.generator))
        else:
            chosen = self.batches_seen % self.num_teachers
        self.batches_seen += 1
        return F.one_hot(torch.tensor(chosen, device=device), self.num_teachers).float()
