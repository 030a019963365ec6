"""Consistent augmentation: one view per transfer image and step, which the student and every teacher look at.

Beyer et al. ("Knowledge distillation: a good teacher is patient and consistent", CVPR 2022) get their best
students when teacher and student see the *same* augmented view of each image, for many epochs. Here a view is
made from the decoded image at the data set's working size (crop, flip, and mixup/cutmix with a second transfer
image); each model then takes it through its own eval resize (:mod:`amalgam.teachers.preprocess`), so they agree
on what they looked at.

**Views are finite and deterministic.** Each transfer image has ``views`` (K) views; the random draws of
every view are made at once from the seed (:class:`ViewParams`), so view ``v`` of image ``i`` depends only on the
seed, the set and ``(i, v)``, never on a worker's random state or on the batch it is read in, and each epoch
draws one view per image (:class:`ViewSampler`). So the knowledge cache can store the teachers' outputs on all K
views (K times the rows of a cache without augmentation: K x 4 bytes x classes per image for the logits, plus
K x the tapped features) and a run reads them back, and a run with live teachers sees exactly the same views:
both give the same student. Views are made a batch at a time (one ``grid_sample`` for the crops and flips), in
the DataLoader's workers.

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

import hashlib
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


@dataclass(frozen=True)
class LabelMix:
    """The second class of each sample's view and the weight of the first: the label loss of sample ``b`` is
    ``weight[b] * CE(label[b]) + (1 - weight[b]) * CE(partner[b])`` (an unmixed view: ``partner = label``,
    ``weight = 1``)."""

    partner: torch.Tensor
    weight: torch.Tensor


@dataclass(frozen=True)
class ViewParams:
    """Every view's random draws for one image size, as arrays over the rows (``view * N + index``); drawn at
    once from ``(seed, STREAM)``, so a view depends only on the seed, the set (its size, K, the labeled rows) and
    its row: never on a worker, a batch or the order rows are read in.

    Boxes are ``(top, left, height, width)`` as fractions of the image (random resized crop: area share from
    ``crop_scale``, aspect ratio log-uniform in [3/4, 4/3], torchvision's 10 tries, else the whole image).
    """

    box: np.ndarray | None  # R x 4, crop of the image itself
    flip: np.ndarray  # R, bool
    partner: np.ndarray | None  # R, the index of the image it is mixed with
    partner_box: np.ndarray | None
    partner_flip: np.ndarray | None
    lam: np.ndarray | None  # R, in [0.5, 1]
    cutmix: np.ndarray | None  # R, bool: cutmix (else mixup)
    cut_centre: np.ndarray | None  # R x 2, fractions

    @classmethod
    def draw(cls, aug: "Augmentation", images: int, height: int, width: int, seed: int,
             labeled: np.ndarray) -> "ViewParams":
        rows = images * aug.views
        rng = np.random.default_rng([seed, _STREAM])

        def boxes() -> np.ndarray | None:
            return random_resized_boxes(rng, rows, height, width, aug.crop_scale) if aug.crop else None

        def flips() -> np.ndarray:
            return rng.random(rows) < 0.5 if aug.flip else np.zeros(rows, dtype=bool)

        box, flip = boxes(), flips()
        if not aug.mixes:
            return cls(box, flip, None, None, None, None, None, None)
        index = np.arange(rows) % images
        pool = np.flatnonzero(labeled)
        anyone = rng.integers(images, size=rows)
        among_labeled = pool[rng.integers(len(pool), size=rows)] if len(pool) else anyone
        partner = np.where(labeled[index], among_labeled, anyone)
        cutmix = rng.random(rows) < 0.5 if aug.mixup and aug.cutmix else np.full(rows, aug.cutmix)
        lam = np.where(cutmix, rng.beta(aug.cutmix_alpha, aug.cutmix_alpha, rows),
                       rng.beta(aug.mixup_alpha, aug.mixup_alpha, rows))
        lam = np.maximum(lam, 1.0 - lam)
        return cls(box, flip, partner, boxes(), flips(), lam, cutmix, rng.random((rows, 2)))


def random_resized_boxes(rng: np.random.Generator, rows: int, height: int, width: int,
                         scale: tuple[float, float]) -> np.ndarray:
    """``rows`` random resized crops of an ``height x width`` image, as ``(top, left, h, w)`` fractions.

    >>> box = random_resized_boxes(np.random.default_rng(0), 3, 10, 10, (1.0, 1.0))  # all of the area
    >>> np.allclose(box, [0, 0, 1, 1])
    True
    """
    share = rng.uniform(*scale, (rows, 10))
    aspect = np.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3), (rows, 10)))
    h = np.sqrt(share * height * width / aspect) / height
    w = np.sqrt(share * height * width * aspect) / width
    fits = (h <= 1) & (w <= 1)
    first = fits.argmax(axis=1)
    pick = np.arange(rows)
    h, w = np.where(fits.any(axis=1), h[pick, first], 1.0), np.where(fits.any(axis=1), w[pick, first], 1.0)
    top, left = rng.random(rows) * (1 - h), rng.random(rows) * (1 - w)
    return np.stack([top, left, h, w], axis=1).astype(np.float32)


def crop_and_flip(images: torch.Tensor, box: np.ndarray | None, flip: np.ndarray) -> torch.Tensor:
    """Each image of the batch cropped to its box (fractions) and resized back to its size, then mirrored left
    to right where ``flip``: one bilinear ``grid_sample`` for the batch (a crop is never smaller in the output,
    so no antialiasing is needed), the same per image whatever else is in the batch. Within half a pixel of the
    box's edges it samples the image around the box (a crop-then-resize would repeat the crop's edge pixels).

    >>> image = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    >>> crop_and_flip(image, None, np.array([True]))[0, 0].tolist()
    [[2.0, 1.0], [4.0, 3.0]]
    >>> # the top-left quarter, sampled at x, y = 0.25 and 0.75 of pixel (0, 0)'s width (centres at 0.5)
    >>> crop_and_flip(image, np.array([[0.0, 0.0, 0.5, 0.5]]), np.array([False]))[0, 0].tolist()
    [[1.0, 1.25], [1.5, 1.75]]
    """
    flip = torch.as_tensor(flip, dtype=torch.bool, device=images.device)  # arrays, or tensors on any device
    if box is None:
        return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    box = torch.as_tensor(box, dtype=images.dtype, device=images.device)
    top, left, h, w = box.unbind(dim=1)
    sign = 1.0 - 2.0 * flip.to(images.dtype)
    theta = torch.zeros(len(images), 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, 2 * left + w - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * top + h - 1
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def cutmix_masks(lam: np.ndarray, centre: np.ndarray, height: int, width: int) -> torch.Tensor:
    """``B x 1 x H x W`` masks of the boxes pasted from the partners: about ``1 - lam`` of the area (sides rounded
    down, centred at ``centre`` and clipped to the image, as timm's rand_bbox), so never more than ``1 - lam``.

    >>> cutmix_masks(np.array([0.75]), np.array([[0.0, 0.0]]), 4, 4)[0, 0].sum().item()  # a 2x2 box, clipped
    1.0
    """
    cut_h = np.floor(height * np.sqrt(1 - lam)).astype(int)
    cut_w = np.floor(width * np.sqrt(1 - lam)).astype(int)
    cy, cx = (centre[:, 0] * height).astype(int), (centre[:, 1] * width).astype(int)
    top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h - cut_h // 2, 0, height)
    left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w - cut_w // 2, 0, width)
    ys, xs = torch.arange(height).view(1, -1, 1), torch.arange(width).view(1, 1, -1)
    inside = ((ys >= torch.as_tensor(top).view(-1, 1, 1)) & (ys < torch.as_tensor(bottom).view(-1, 1, 1))
              & (xs >= torch.as_tensor(left).view(-1, 1, 1)) & (xs < torch.as_tensor(right).view(-1, 1, 1)))
    return inside[:, None].float()


def strong_views(images: torch.Tensor, crop_scale: tuple[float, float] = (0.35, 1.0),
                 cutout: float = 0.5) -> torch.Tensor:
    """A strongly augmented view of each image of a batch, made where the batch is (no host sync), for
    consistency training: a random resized crop (area share from ``crop_scale``, aspect ratio log-uniform in
    [3/4, 4/3], clamped to the image instead of torchvision's retries), then a square of side ``cutout`` x the
    shorter side, placed uniformly inside the image, filled with grey 0.5 (FixMatch's Cutout). No flip: a mirror
    changes the class of some images (digits, text). The draws come from torch's generator on the batch's
    device, which the engine seeds and checkpoints, so a resumed run draws the same views.

    (Inferred: FixMatch's strong augmentation is RandAugment + Cutout; here crop + Cutout, which every image
    type allows.)

    >>> views = strong_views(torch.ones(2, 1, 8, 8), crop_scale=(1.0, 1.0), cutout=0.5)
    >>> (views == 0.5).sum(dim=(1, 2, 3)).tolist()  # a 4 x 4 grey square in each constant image
    [16, 16]
    """
    batch, _, height, width = images.shape
    device = images.device
    share = torch.empty(batch, device=device).uniform_(*crop_scale)
    aspect = torch.empty(batch, device=device).uniform_(math.log(3 / 4), math.log(4 / 3)).exp()
    h = (share * width / height / aspect).sqrt().clamp(max=1.0)  # fractions of the height and the width
    w = (share * height / width * aspect).sqrt().clamp(max=1.0)
    top, left = torch.rand(batch, device=device) * (1 - h), torch.rand(batch, device=device) * (1 - w)
    views = crop_and_flip(images, torch.stack([top, left, h, w], dim=1).to(images.dtype),
                          torch.zeros(batch, dtype=torch.bool, device=device))
    side = int(cutout * min(height, width))
    if side == 0:
        return views
    y0 = (torch.rand(batch, device=device) * (height - side + 1)).floor().view(-1, 1, 1)
    x0 = (torch.rand(batch, device=device) * (width - side + 1)).floor().view(-1, 1, 1)
    ys, xs = torch.arange(height, device=device).view(1, -1, 1), torch.arange(width, device=device).view(1, 1, -1)
    inside = (ys >= y0) & (ys < y0 + side) & (xs >= x0) & (xs < x0 + side)
    return torch.where(inside[:, None], torch.full_like(views, 0.5), views)


class TransferViews(Dataset):
    """The transfer set as training reads it: row ``view * N + i`` is view ``view`` of image ``i``, yielded as
    ``(image, label, i, row, partner_label, label_weight)`` (see the module docstring).

    Without an augmentation there is one view, the image itself (row ``i`` is image ``i``, weight 1).
    ``labeled``: the rows whose labels the run may use; their mixing partners are drawn among them. A DataLoader
    reads whole batches through :meth:`__getitems__`, which makes the batch's views in a few tensor operations.
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
        self.is_labeled = np.zeros(self.images, dtype=bool)
        self.is_labeled[np.asarray(list(labeled) if labeled is not None else [], dtype=np.int64)] = True
        self._params: dict[tuple[int, int], ViewParams] = {}  # by image size, drawn when first needed

    def __len__(self) -> int:
        return self.images * self.views

    def row(self, index: int, view: int) -> int:
        return view * self.images + index

    def describe(self) -> dict[str, Any] | None:
        """What the views depend on (``None`` without augmentation), for the knowledge cache's key."""
        if self.augmentation is None:
            return None
        described = {**self.augmentation.to_dict(), "seed": self.seed}
        if self.augmentation.mixes:  # mixing partners are drawn among the labeled rows: they shape the views
            described["labeled"] = hashlib.blake2b(np.flatnonzero(self.is_labeled).tobytes(), digest_size=8).hexdigest()
        return described

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int, int, int, int, float]:
        return self.__getitems__([row])[0]

    def __getitems__(self, rows: Sequence[int]) -> list[tuple[torch.Tensor, int, int, int, int, float]]:
        rows = np.asarray([int(r) for r in rows], dtype=np.int64)
        indices = rows % self.images
        items = [self.base[int(i)] for i in indices]
        labels = [int(label) for _, label in items]
        aug = self.augmentation
        if aug is None:
            return [(image, label, int(i), int(r), label, 1.0) for (image, label), i, r in zip(items, indices, rows)]
        images = torch.stack([torch.as_tensor(image) for image, _ in items]).float()
        height, width = images.shape[-2:]
        params = self._params.get((height, width))
        if params is None:
            params = self._params[(height, width)] = ViewParams.draw(aug, self.images, height, width, self.seed,
                                                                      self.is_labeled)
        pick = (lambda array: None if array is None else array[rows])  # noqa: E731
        images = crop_and_flip(images, pick(params.box), params.flip[rows]) if aug.crop or aug.flip else images
        partners, weights = list(labels), [1.0] * len(rows)
        if aug.mixes:
            seconds = [self.base[int(j)] for j in params.partner[rows]]
            second = torch.stack([torch.as_tensor(image) for image, _ in seconds]).float()
            second = crop_and_flip(second, pick(params.partner_box), params.partner_flip[rows]) \
                if aug.crop or aug.flip else second
            lam = params.lam[rows]
            mask = cutmix_masks(lam, params.cut_centre[rows], height, width)
            cut = torch.from_numpy(params.cutmix[rows]).view(-1, 1, 1, 1)
            mixup = torch.as_tensor(lam, dtype=images.dtype).view(-1, 1, 1, 1)
            images = torch.where(cut, images * (1 - mask) + second * mask, mixup * images + (1 - mixup) * second)
            shares = 1.0 - mask.mean(dim=(1, 2, 3)).numpy()
            weights = np.where(params.cutmix[rows], shares, lam).tolist()
            partners = [int(label) for _, label in seconds]
            for b in range(len(rows)):
                if labels[b] == UNLABELED or partners[b] == UNLABELED:
                    labels[b] = partners[b] = UNLABELED
        return [(images[b].clamp(0, 1), labels[b], int(indices[b]), int(rows[b]), partners[b], float(weights[b]))
                for b in range(len(rows))]


class ViewSampler(Sampler[int]):
    """Shuffles the images (with ``generator``, as ``DataLoader(shuffle=True)`` would) and, each epoch, picks one
    of every image's views. Each run of K epochs shows every view of an image once, in an order drawn per image:
    no view is repeated before all K were seen, so K epochs give K distinct views of each image. The view of
    image ``i`` in epoch ``e`` depends only on ``(seed, e, i)``, so a resumed run draws the same ones. Call
    :meth:`use_epoch` before iterating an epoch."""

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
        chosen = None
        if k > 1:
            cycle, turn = divmod(self.epoch - 1, k)
            order = np.argsort(np.random.default_rng([self.seed, cycle, _STREAM]).random((n, k)), axis=1)
            chosen = order[:, turn]
        for index in self.order:
            yield int(index) if chosen is None else int(chosen[index]) * n + int(index)
