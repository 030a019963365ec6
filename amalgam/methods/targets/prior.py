"""Class priors for combined targets: move a target's classes so that their shares over the transfer set match
the shares the classes really have.

A teacher that never saw a class claims its images for classes of its own, confidently, so a combined target
over-fills some classes and starves others (on the Fashion-MNIST split both teachers' answers together call a
quarter of the images a Shirt). Knowing how common each class is corrects that: one log-weight per class,
added to every image's target, chosen so that the target's class shares over the transfer set equal the prior.
This is the label-shift correction of Saerens et al. (Neural Computation, 2002), ``p'(y|x) ~ p(y|x) w_y``, with
the weights fitted by Sinkhorn's scaling as in self-labelling (Asano et al., ICLR 2020), where they equalise
the clusters' sizes; ReMixMatch's distribution alignment (Berthelot et al., ICLR 2020) is its per-batch, soft form.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from amalgam.errors import MethodError
from amalgam.teachers.label_space import LabelSpace, normalize_class_name

ClassPrior = str | Mapping[str, float]


def fit_prior_shift(probs: torch.Tensor, prior: torch.Tensor, sharpness: float = 5.0,
                    max_evaluations: int = 500) -> torch.Tensor:
    """Log-weights ``b`` (``C``) such that ``softmax(sharpness * (log probs + b))``, averaged over the ``N`` rows of
    ``probs`` (``N x C``, each row a distribution), is ``prior`` (``C``, positive, summing to 1).

    ``sharpness = 1`` matches the shifted target's probability mass to the prior; larger values match the share of
    rows whose most likely class each class is (the hard counts) ever more closely. ``b`` minimises the convex
    ``mean_i logsumexp(sharpness * (log p_i + b)) / sharpness - prior . b``, whose gradient is the shares minus the
    prior (Sinkhorn's column scaling, solved here by L-BFGS: about 20 to 30 passes over ``probs`` whatever the
    sharpness, where Sinkhorn's own steps need thousands at 5). ``b`` is centred (it is defined up to a constant).

    Two identical rows ``(0.6, 0.4)`` and an even prior: each row must become ``(0.5, 0.5)``, so
    ``b_1 - b_0 = log(0.6 / 0.4) = 0.405``:

    >>> b = fit_prior_shift(torch.tensor([[0.6, 0.4], [0.6, 0.4]]), torch.tensor([0.5, 0.5]), sharpness=1.0)
    >>> round(float(b[1] - b[0]), 3)
    0.405
    """
    if probs.ndim != 2 or prior.shape != probs.shape[1:]:
        raise MethodError(f"fit_prior_shift: probs must be N x C and prior C, got {tuple(probs.shape)} and "
                          f"{tuple(prior.shape)}")
    logs = probs.detach().float().clamp(min=1e-12).log()
    weights = prior.detach().float().to(logs.device)
    shift = torch.zeros(probs.shape[1], device=logs.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([shift], lr=1.0, max_iter=max_evaluations, tolerance_grad=1e-7,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        value = (sharpness * (logs + shift)).logsumexp(dim=-1).mean() / sharpness - (weights * shift).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(objective)
    shift = shift.detach()
    return (shift - shift.mean()).to(probs.dtype)


def shift_probabilities(probs: torch.Tensor, shift: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``probs`` (``B x C``) with each class weighted by ``exp(shift / temperature)``, renormalised: the shift of
    :func:`fit_prior_shift`, fitted at temperature 1, applied to a target softened by ``temperature`` (it is a
    shift of the logits, so it softens with them).

    >>> shift_probabilities(torch.tensor([[0.6, 0.4]]), torch.tensor([0.0, 0.405465]))
    tensor([[0.5000, 0.5000]])
    """
    weighted = probs * (shift.to(probs.device, probs.dtype) / temperature).exp()
    return weighted / weighted.sum(dim=-1, keepdim=True).clamp(min=1e-12)


def resolve_prior(spec: ClassPrior, label_space: LabelSpace, labels: torch.Tensor | None) -> torch.Tensor:
    """The class prior a ``class_prior`` option names, over the union classes: ``"uniform"``; ``"labels"``, the
    classes' shares among the labeled fraction's ``labels`` (union indices; one added to each count, so that a
    class without a labeled image keeps a share); or ``{class name: share}`` for every union class (normalised).

    >>> space = LabelSpace.union([["cat", "dog"], ["bird"]])
    >>> resolve_prior("labels", space, torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])) * 11  # counts 3, 5, 0, plus one
    tensor([4., 6., 1.])
    >>> resolve_prior({"Cat": 2, "dog": 1, "bird": 1}, space, None).tolist()
    [0.5, 0.25, 0.25]
    """
    classes = list(label_space.class_names)
    if spec == "uniform":
        return torch.full((len(classes),), 1.0 / len(classes))
    if spec == "labels":
        if labels is None or not len(labels):
            raise MethodError("class_prior='labels' reads the classes' shares from the labeled fraction, and this "
                              "run has none: give it a labeled_fraction > 0, or class_prior='uniform' or a "
                              "{class: share} table")
        counts = torch.bincount(labels[labels >= 0].long().cpu(), minlength=len(classes)).double() + 1.0
        return (counts / counts.sum()).float()
    if isinstance(spec, Mapping):
        return _table_prior(spec, classes)
    raise MethodError(f"class_prior must be 'uniform', 'labels' or a {{class: share}} table, got {spec!r}")


def _table_prior(table: Mapping[str, float], classes: Sequence[str]) -> torch.Tensor:
    by_name = {normalize_class_name(str(name)): value for name, value in table.items()}
    known = {normalize_class_name(c) for c in classes}
    unknown = sorted(str(name) for name in table if normalize_class_name(str(name)) not in known)
    missing = [c for c in classes if normalize_class_name(c) not in by_name]
    if unknown or missing:
        raise MethodError(f"class_prior: the table must give a share to each union class {list(classes)}"
                          + (f"; it lacks {missing}" if missing else "")
                          + (f"; it names classes no teacher knows: {unknown}" if unknown else ""))
    shares = [by_name[normalize_class_name(c)] for c in classes]
    if any(isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 for s in shares):
        raise MethodError(f"class_prior: every share must be a positive number, got {dict(zip(classes, shares))}")
    prior = torch.tensor([float(s) for s in shares])
    return prior / prior.sum()
