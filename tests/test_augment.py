"""Consistent augmentation: the views' arithmetic by hand, their determinism (any worker count, any epoch order),
labels that follow the view, and teachers that see the student's view, live or from the knowledge cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import amalgam
from amalgam.config import TrainConfig
from amalgam.data import UNLABELED, RelabeledImages, TensorImages, load_data
from amalgam.data.augment import (
    Augmentation, TransferViews, ViewSampler, crop_and_flip, cutmix_masks, random_resized_boxes,
)
from amalgam.engine.checkpoint import CheckpointError
from amalgam.errors import DataError
from amalgam.knowledge import KnowledgeCache
from amalgam.knowledge.cache import data_fingerprint
from tiny import tiny_teacher


def _images(count: int = 12, side: int = 8) -> TensorImages:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, 1, side, side), generator=generator, dtype=torch.uint8)
    return TensorImages(pixels, torch.arange(count) % 3)


def test_crop_flip_and_cutmix_by_hand():
    image = torch.arange(16.0).reshape(1, 1, 4, 4) / 15
    # a box on whole pixels is that crop resized back: what F.interpolate gives (bilinear, half-pixel centres)
    # inside; at the box's edges the image around it is sampled, where a crop-then-resize repeats the edge
    cropped = crop_and_flip(image, np.array([[0.25, 0.5, 0.5, 0.5]]), np.array([False]))
    expected = F.interpolate(image[..., 1:3, 2:4], size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(cropped[..., 1:3, 1:3], expected[..., 1:3, 1:3], atol=1e-6)
    assert cropped.min() >= image[..., 0:4, 1:4].min() and cropped.max() <= image[..., 0:4, 1:4].max() + 1e-6
    mirrored = crop_and_flip(image, np.array([[0.25, 0.5, 0.5, 0.5]]), np.array([True]))
    assert torch.allclose(mirrored, cropped.flip(-1), atol=1e-6)
    whole = crop_and_flip(image, np.array([[0.0, 0.0, 1.0, 1.0]]), np.array([False]))
    assert torch.allclose(whole, image, atol=1e-6)
    mask = cutmix_masks(np.array([0.75, 0.5]), np.array([[0.5, 0.5], [0.5, 0.5]]), 4, 4)
    assert mask[0].sum() == 4 and mask[1].sum() == 4  # 2x2 boxes: at most 1 - lam of the area (floor of 2.83)
    assert mask[0, 0, 1:3, 1:3].sum() == 4  # centred


def test_views_in_a_batch_are_the_views_read_one_by_one():
    views = TransferViews(_images(), Augmentation.parse("crop,flip,mixup,cutmix", views=3), seed=5)
    batch = views.__getitems__([5, 30, 17, 0])
    for row, item in zip([5, 30, 17, 0], batch):
        alone = views[row]
        assert torch.allclose(item[0], alone[0], atol=1e-6) and item[1:] == alone[1:]


def test_boxes_stay_inside_the_image_with_the_area_drawn():
    boxes = random_resized_boxes(np.random.default_rng(1), 500, 20, 30, (0.35, 1.0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 1 + 1e-6).all() and (left + w <= 1 + 1e-6).all()
    area = h * w
    assert ((area >= 0.35 - 1e-6) & (area <= 1 + 1e-6)).all()
    aspect = (w * 30) / (h * 20)
    crops = area < 1 - 1e-6
    assert ((aspect[crops] >= 0.75 - 1e-4) & (aspect[crops] <= 4 / 3 + 1e-4)).all()


def test_a_view_depends_only_on_its_row_not_on_workers_or_reads():
    views = TransferViews(_images(), Augmentation.parse("crop,flip,mixup,cutmix", views=3), seed=5)
    assert len(views) == 36
    first = [views[row] for row in range(len(views))]
    again = [views[row] for row in reversed(range(len(views)))][::-1]
    assert all(torch.equal(a[0], b[0]) and a[1:] == b[1:] for a, b in zip(first, again))
    in_workers = [item for batch in DataLoader(views, batch_size=5, num_workers=2) for item in zip(*batch)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, in_workers))
    assert not torch.equal(views[0][0], views[12][0])  # views 0 and 1 of image 0 differ
    other_seed = TransferViews(_images(), Augmentation.parse("crop,flip,mixup,cutmix", views=3), seed=6)
    assert not torch.equal(views[0][0], other_seed[0][0])


def test_without_augmentation_the_view_is_the_image():
    images = _images()
    views = TransferViews(images)
    image, label, index, row, partner, weight = views[4]
    assert torch.equal(image, images[4][0]) and (label, index, row, partner, weight) == (1, 4, 4, 1, 1.0)


def test_labels_follow_the_view():
    base = RelabeledImages(_images(30), [0, 1, 2], visible=np.array([0, 3, 6, 9, 12]))
    views = TransferViews(base, Augmentation.parse("mixup,cutmix", views=8), seed=0)
    labeled = {0, 3, 6, 9, 12}
    for row in range(len(views)):
        image, label, index, _, partner, weight = views[row]
        assert 0.5 <= weight <= 1.0  # the indexed image dominates its view
        if index in labeled:  # mixed with labeled images only: both classes known
            assert label == base[index][1] and partner in {base[i][1] for i in labeled}
        else:
            assert label == UNLABELED and partner == UNLABELED


def test_each_epoch_shows_every_image_once_with_a_view_drawn_by_seed_and_epoch():
    views = TransferViews(_images(), Augmentation.parse("flip", views=4), seed=0)
    sampler = ViewSampler(views, torch.Generator().manual_seed(0), seed=0)
    epochs = []
    for epoch in (1, 2):
        sampler.use_epoch(epoch)
        rows = list(sampler)
        assert sorted(r % 12 for r in rows) == list(range(12))
        epochs.append({r % 12: r // 12 for r in rows})
    assert epochs[0] != epochs[1]  # other views in another epoch
    replay = ViewSampler(views, torch.Generator().manual_seed(0), seed=0)
    replay.use_epoch(2)
    assert {r % 12: r // 12 for r in replay} == epochs[1]  # views do not depend on the shuffling's state


def test_k_epochs_show_each_image_all_of_its_k_views_before_any_repeats():
    views = TransferViews(_images(), Augmentation.parse("flip", views=3), seed=4)
    sampler = ViewSampler(views, torch.Generator().manual_seed(0), seed=4)
    seen = {index: [] for index in range(12)}
    for epoch in range(1, 7):  # two cycles of three epochs
        sampler.use_epoch(epoch)
        for row in sampler:
            seen[row % 12].append(row // 12)
    assert all(sorted(v[:3]) == [0, 1, 2] and sorted(v[3:]) == [0, 1, 2] for v in seen.values())
    assert len({tuple(v[:3]) for v in seen.values()}) > 1  # each image its own order


def test_augmentation_is_checked_and_named_in_the_config():
    assert TrainConfig(augment=["flip", "crop"]).augment == "crop,flip"
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        TrainConfig(augment="crop,rotate")
    with pytest.raises(ValueError, match="augment_views must be a positive integer"):
        TrainConfig(augment="flip", augment_views=0)
    with pytest.raises(DataError, match="crop_scale"):
        Augmentation(crop=True, crop_scale=(0.0, 1.0))


def test_the_cache_stores_every_view_and_its_key_follows_the_augmentation(tmp_path):
    images = _images()
    teacher = tiny_teacher(["0", "1", "2"])
    crop = TransferViews(images, Augmentation.parse("crop,flip", views=3), seed=0)
    cache = KnowledgeCache.build([teacher], crop, data_name="blank", root=tmp_path, progress=False)
    assert cache.logits[0].shape == (36, 3)
    for row in (0, 17, 35):  # each row holds what the teacher says about that view
        with torch.no_grad():
            expected = teacher(crop[row][0][None]).logits[0]
        assert torch.allclose(cache.logits[0][row], expected, atol=1e-5)
    digests = {data_fingerprint(v, "blank")["digest"] for v in (
        crop, TransferViews(images, Augmentation.parse("crop,flip", views=2), seed=0),
        TransferViews(images, Augmentation.parse("crop,flip", views=3), seed=1),
        TransferViews(images, Augmentation.parse("crop", views=3), seed=0), TransferViews(images))}
    assert len(digests) == 5
    assert data_fingerprint(TransferViews(images), "blank") == data_fingerprint(images, "blank")  # old keys hold
    mixed = [TransferViews(images, Augmentation.parse("mixup"), labeled=rows) for rows in ([0, 1], [0, 2])]
    assert not torch.equal(mixed[0][1][0], mixed[1][1][0])  # another labeled set: other partners, other views
    assert data_fingerprint(mixed[0], "blank") != data_fingerprint(mixed[1], "blank")


@pytest.mark.parametrize("method", ["soft-targets", "supervised"])
def test_live_teachers_and_the_cache_train_the_same_student_on_the_same_views(demo_zoo, tmp_path, method):
    """The teachers' outputs a cached run reads are those of the very views its student sees: a run with live
    teachers (which see each batch as it is) trains exactly the same student."""
    options = dict(data="digits", method=method, epochs=2, labeled_fraction=0.1, augment="crop,flip,mixup",
                   augment_views=2, seed=3, progress=False)
    cached = amalgam.amalgamate(demo_zoo, knowledge_cache=tmp_path, **options)
    live = amalgam.amalgamate(demo_zoo, cache_teachers=False, **options)
    assert [h["loss"] for h in cached.metrics["history"]] == pytest.approx([h["loss"] for h in live.metrics["history"]],
                                                                            rel=1e-5)
    for a, b in zip(cached.student.state_dict().values(), live.student.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    plain = amalgam.amalgamate(demo_zoo, knowledge_cache=tmp_path, **{**options, "augment": ""})
    assert plain.metrics["history"][0]["loss"] != pytest.approx(cached.metrics["history"][0]["loss"], rel=1e-3)


def test_the_run_records_the_augmentation_and_a_changed_one_does_not_resume(demo_zoo, tmp_path):
    from amalgam.pipeline import Pipeline

    data = load_data("digits")
    run = Pipeline.plan(demo_zoo, data=data, config=TrainConfig(epochs=1, augment="flip"))
    assert run.description["train"]["augment"] == "flip" and run.description["train"]["augment_views"] == 4
    run.record(tmp_path)
    other = Pipeline.plan(demo_zoo, data=data, config=TrainConfig(epochs=1, augment="flip,crop"))
    with pytest.raises(CheckpointError, match="train.augment was 'flip'"):
        other.check_resumes(tmp_path)
