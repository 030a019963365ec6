"""The cache both sides of test_sharded_cache.py build: a seeded tiny teacher with a feature tap, on augmented
views of 50 random images (100 rows), in batches of 16 (7 batches: the shards split them 3 + 4)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from amalgam.data import TensorImages
from amalgam.data.augment import Augmentation, TransferViews
from amalgam.knowledge import KnowledgeCache
from amalgam.teachers import load_teacher

BATCH = 16


def build(root: Path) -> KnowledgeCache:
    torch.manual_seed(0)
    teacher = load_teacher(timm.create_model("test_resnet", num_classes=3), class_names=["a", "b", "c"])
    generator = torch.Generator().manual_seed(1)
    images = TensorImages(torch.randint(0, 256, (50, 1, 8, 8), generator=generator, dtype=torch.uint8),
                          torch.zeros(50, dtype=torch.long))
    views = TransferViews(images, Augmentation.parse("crop,flip", views=2), seed=0)
    return KnowledgeCache.build([teacher], views, data_name="random", taps=[["layer1"]], root=root,
                                batch_size=BATCH, progress=False)
