"""Consistent augmentation: one view per transfer image and step, which the student and every teacher look at.

Beyer et al. ("Knowledge distillation: a good teacher is patient and consistent", CVPR 2022) get their best
students when teacher and student see the *same* augmented view of each image, for many epochs. Here a view is
made from the decoded image at the data set's working size (crop, flip, and mixup/cutmix with a second transfer
image); each model then takes it through its own eval resize (:mod:`amalgam.teachers.preprocess`), so they agree
on what they looked at.

**Views are finite and deterministic.** Each transfer image has ``views`` (K) views; view ``v`` of image ``i``
depends only on ``(seed, i, v)`` (never on a worker's random state), and each epoch draws one view per image
(:class:`ViewSampler`). So the knowledge cache can store the teachers' outputs on all K views (K times the rows
of a cache without augmentation: K x 4 bytes x classes per image for the logits, plus K x the tapped features)
and a run reads them back, and a run with live teachers sees exactly the same views: both give the same student.

**Labels follow the view.** A labeled image's crop and flip keep its class; a mixed view (mixup or cutmix) of
image ``i`` with partner ``j`` carries both classes with weights ``lam`` and ``1 - lam`` (:class:`LabelMix`), and
a labeled image is mixed only with labeled images, so its label stays whole. ``lam`` is drawn as
``max(l, 1 - l)`` with ``l ~ Beta(alpha, alpha)``: the image a view is indexed by always dominates it (methods
that read one class per sample read that one).

Example:
    >>> import torch
    >>> from amalgam.data import TensorImages
    >>> images = TensorImages(torch.randint(0, 255, (6, 1, 8, 8), dtype=torch.uint8), torch.arange(6) % 2)
    >>> views = TransferViews(images, Augmentation.parse("crop,flip,mixup"), seed=0)
    >>> image, label, index, row, partner, lam = views[views.row(index=2, view=1)]
    >>> image.shape, index, row, 0.5 <= lam <= 1.0
    (torch.Size([1, 8, 8]), 2, 8, True)
    >>> torch.equal(views[8][0], views[8][0])  # a view is the same every time it is read
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from amalgam.data.images import UNLABELED, RelabeledImages
from amalgam.errors import DataError

AUGMENTATIONS = {
    "crop": "random resized crop (area 35-100%, aspect 3/4-4/3) back to the working size",
    "flip": "horizontal flip, half of the views",
    "mixup": "mixup with another transfer image, lam ~ Beta(0.8, 0.8) (timm's default alpha)",
    "cutmix": "cutmix: a box of another transfer image pasted in, area share ~ Beta(1, 1)",
}
DEFAULT_VIEWS = 4
_STREAM = 0x5EED  # keeps the views' random streams apart from any other use of the seed


@dataclass(frozen=True)
class Augmentation:
    """Which augmentations make a view, and how many views each image has (see the module docstring).

    With both ``mixup`` and ``cutmix``, each mixed view uses one of them (half and half), as timm's Mixup does.
    """

    crop: bool = False
    flip: bool = False
    mixup: bool = False
    cutmix: bool = False
    views: int = DEFAULT_VIEWS
    crop_scale: tuple[float, float] = (0.35, 1.0)
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.views, int) or isinstance(self.views, bool) or self.views < 1:
            raise DataError(f"augment_views must be a positive number of views per image, got {self.views!r}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise DataError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {self.crop_scale}")

    @classmethod
    def parse(cls, names: str | Sequence[str], views: int = DEFAULT_VIEWS) -> "Augmentation | None":
        """``"crop,flip,mixup"`` (or a list of names) as an :class:`Augmentation`; ``""`` / ``[]``: ``None``.

        >>> Augmentation.parse("crop, flip").to_dict()
        {'names': ['crop', 'flip'], 'views': 4}
        >>> Augmentation.parse("rotate")
        Traceback (most recent call last):
        ...
        amalgam.errors.DataError: unknown augmentation 'rotate': choose from crop, flip, mixup, cutmix ...
        """
        chosen = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
        for name in chosen:
            if name not in AUGMENTATIONS:
                raise DataError(f"unknown augmentation {name!r}: choose from {', '.join(AUGMENTATIONS)} "
                                "(comma-separated, e.g. augment='crop,flip,mixup')")
        return cls(**{name: True for name in chosen}, views=views) if chosen else None

    @property
    def names(self) -> list[str]:
        return [name for name in AUGMENTATIONS if getattr(self, name)]

    @property
    def mixes(self) -> bool:
        return self.mixup or self.cutmix

    def to_dict(self) -> dict[str, Any]:
        """What a view depends on besides the seed (in the knowledge cache's key); defaults left out."""
        described = {"names": self.names, "views": self.views}
        defaults = asdict(Augmentation())
        for key in ("crop_scale", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) != defaults[key]:
                described[key] = list(getattr(self, key)) if key == "crop_scale" else getattr(self, key)
        return described

    def describe(self) -> str:
        return "; ".join(AUGMENTATIONS[name] for name in self.names) + f"; {self.views} views per image"


@dataclass(frozen=True)
class LabelMix:
    """The second class of each sample's view and the weight of the first: the label loss of sample ``b`` is
    ``weight[b] * CE(label[b]) + (1 - weight[b]) * CE(partner[b])`` (an unmixed view: ``partner = label``,
    ``weight = 1``)."""

    partner: torch.Tensor
    weight: torch.Tensor


def random_resized_box(rng: np.random.Generator, height: int, width: int,
                       scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a crop covering a share of the area drawn from ``scale``, its aspect ratio
    log-uniform in [3/4, 4/3] (torchvision's RandomResizedCrop; the whole image after 10 misses).

    >>> random_resized_box(np.random.default_rng(0), 10, 10, (1.0, 1.0))[2:]  # all of the area: all of the image
    (10, 10)
    """
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        h, w = round(math.sqrt(target / aspect)), round(math.sqrt(target * aspect))
        if 0 < h <= height and 0 < w <= width:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return 0, 0, height, width


def cutmix_box(rng: np.random.Generator, height: int, width: int, share: float) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a box of at most ``share`` of the area, centred anywhere and clipped to the image
    (timm's rand_bbox, its sides rounded down); the share actually covered is ``h * w / (height * width)``."""
    cut_h, cut_w = int(height * math.sqrt(share)), int(width * math.sqrt(share))
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    return top, left, bottom - top, right - left


def crop_and_flip(image: torch.Tensor, box: tuple[int, int, int, int] | None, flip: bool) -> torch.Tensor:
    """``image`` (C x H x W) cropped to ``box`` and resized back to H x W (bilinear, antialiased), then mirrored
    left to right if ``flip``."""
    if box is not None and (box[2], box[3]) != tuple(image.shape[-2:]):
        top, left, h, w = box
        patch = image[:, top:top + h, left:left + w]
        image = F.interpolate(patch[None], size=tuple(image.shape[-2:]), mode="bilinear", antialias=True,
                              align_corners=False)[0].clamp(0, 1)
    return image.flip(-1) if flip else image


def mix_images(first: torch.Tensor, second: torch.Tensor, lam: float,
               box: tuple[int, int, int, int] | None = None) -> tuple[torch.Tensor, float]:
    """Mixup (``lam * first + (1 - lam) * second``) or, with ``box``, cutmix (``second`` pasted into ``box``);
    returns the image and the weight of ``first``'s label (for cutmix: the share of pixels that are still
    ``first``'s).

    >>> a, b = torch.ones(1, 2, 2), torch.zeros(1, 2, 2)
    >>> mix_images(a, b, 0.75)[0][0, 0, 0].item()
    0.75
    >>> mixed, weight = mix_images(a, b, 0.5, box=(0, 0, 1, 2))  # the top row pasted from b
    >>> mixed[0].tolist(), weight
    ([[0.0, 0.0], [1.0, 1.0]], 0.5)
    """
    if box is None:
        return lam * first + (1 - lam) * second, lam
    top, left, h, w = box
    mixed = first.clone()
    mixed[:, top:top + h, left:left + w] = second[:, top:top + h, left:left + w]
    return mixed, 1.0 - h * w / (first.shape[-2] * first.shape[-1])


class TransferViews(Dataset):
    """The transfer set as training reads it: row ``view * N + i`` is view ``view`` of image ``i``, yielded as
    ``(image, label, i, row, partner_label, label_weight)`` (see the module docstring).

    Without an augmentation there is one view, the image itself (row ``i`` is image ``i``, weight 1).
    ``labeled``: the rows whose labels the run may use; their mixing partners are drawn among them.
    """

    def __init__(self, base: Dataset, augmentation: Augmentation | None = None, seed: int = 0,
                 labeled: Sequence[int] | None = None) -> None:
        self.base = base
        self.augmentation = augmentation
        self.seed = seed
        self.views = augmentation.views if augmentation is not None else 1
        self.images = len(base)
        if labeled is None and isinstance(base, RelabeledImages) and base.visible is not None:
            labeled = sorted(base.visible)
        self.labeled = np.asarray(sorted(labeled) if labeled is not None else [], dtype=np.int64)
        self._is_labeled = np.zeros(self.images, dtype=bool)
        self._is_labeled[self.labeled] = True

    def __len__(self) -> int:
        return self.images * self.views

    def row(self, index: int, view: int) -> int:
        return view * self.images + index

    def describe(self) -> dict[str, Any] | None:
        """What the views depend on (``None`` without augmentation), for the knowledge cache's key."""
        return None if self.augmentation is None else {**self.augmentation.to_dict(), "seed": self.seed}

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int, int, int, int, float]:
        view, index = divmod(int(row), self.images)
        image, label = self.base[index]
        aug = self.augmentation
        if aug is None:
            return image, label, index, int(row), label, 1.0
        rng = np.random.default_rng([self.seed, index, view, _STREAM])
        image = self._crop_and_flip(image, rng)
        partner, weight = label, 1.0
        if aug.mixes:
            pool = self.labeled if self._is_labeled[index] else None
            other = int(pool[rng.integers(len(pool))] if pool is not None else rng.integers(self.images))
            second, partner = self.base[other]
            second = self._crop_and_flip(second, rng)
            use_cutmix = aug.cutmix and (not aug.mixup or rng.random() < 0.5)
            alpha = aug.cutmix_alpha if use_cutmix else aug.mixup_alpha
            lam = float(rng.beta(alpha, alpha))
            lam = max(lam, 1.0 - lam)
            box = cutmix_box(rng, *image.shape[-2:], 1.0 - lam) if use_cutmix else None
            image, weight = mix_images(image, second, lam, box)
            if label == UNLABELED or partner == UNLABELED:
                label = partner = UNLABELED
        return image, label, index, int(row), partner, float(weight)

    def _crop_and_flip(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        aug = self.augmentation
        box = random_resized_box(rng, *image.shape[-2:], aug.crop_scale) if aug.crop else None
        return crop_and_flip(image, box, bool(aug.flip and rng.random() < 0.5))


class ViewSampler(Sampler[int]):
    """Shuffles the images (with ``generator``, as ``DataLoader(shuffle=True)`` would) and, each epoch, picks one
    of every image's views: the view of image ``i`` in epoch ``e`` depends only on ``(seed, e, i)``, so a resumed
    run draws the same ones. Call :meth:`use_epoch` before iterating an epoch."""

    def __init__(self, views: TransferViews, generator: torch.Generator, seed: int = 0) -> None:
        self.views = views
        self.generator = generator  # accelerate keeps it in step across processes
        self.order = torch.utils.data.RandomSampler(range(views.images), generator=generator)
        self.seed = seed
        self.epoch = 1

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.views.images

    def __iter__(self) -> Iterator[int]:
        n, k = self.views.images, self.views.views
        chosen = np.random.default_rng([self.seed, self.epoch, _STREAM]).integers(k, size=n) if k > 1 else None
        for index in self.order:
            yield int(index) if chosen is None else int(chosen[index]) * n + int(index)
