"""Training small teachers of different libraries on a subset of a data set's classes, saved in Hub layouts.

Used by the demo zoo and by the benchmark's teacher zoos. Each kind is a different library and architecture
with its own input (size, channels, normalisation), because that heterogeneity is what amalgam must handle:

- ``timm-cnn``: timm ``test_resnet``, grey input, saved with timm's ``save_for_hf`` (timm's Hub layout);
- ``vit``: a transformers ViT, RGB input, saved with ``save_pretrained`` plus its image processor;
- ``convnext``: a transformers ConvNeXt, RGB input, likewise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from amalgam.data import ImageData, RelabeledImages
from amalgam.engine import TrainConfig, accuracy, train
from amalgam.methods import create_method
from amalgam.teachers import ImageSpec, LabelSpace

Saver = Callable[[Path], None]


class RawClassifier(nn.Module):
    """Wraps a model so it takes raw [0, 1] batches, like amalgam's students, for training with the engine."""

    def __init__(self, model: nn.Module, spec: ImageSpec, transformers: bool) -> None:
        super().__init__()
        self.model, self.spec, self.transformers = model, spec, transformers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.spec(images)
        return self.model(pixel_values=x).logits if self.transformers else self.model(x)


def _timm_cnn(classes: list[str], size: int) -> tuple[nn.Module, ImageSpec, Saver]:
    import timm
    from timm.models import save_for_hf

    spec = ImageSpec(size=(size, size), channels=1, mean=(0.5,), std=(0.5,))
    model = timm.create_model("test_resnet", num_classes=len(classes), in_chans=1)
    # the transform it is trained with, so that timm's eval transform (and amalgam's) give it the same input
    # (timm's default for test_resnet would centre-crop 95% of the image)
    data_config = {"input_size": (1, size, size), "mean": spec.mean, "std": spec.std, "crop_pct": 1.0,
                   "crop_mode": "squash", "interpolation": spec.interpolation}

    def save(folder: Path) -> None:
        save_for_hf(model, folder, model_config={"label_names": classes}, safe_serialization=True,
                    data_config=data_config)

    return model, spec, save


def _transformers(model: nn.Module, spec: ImageSpec) -> Saver:
    from transformers import ViTImageProcessor

    processor = ViTImageProcessor(size={"height": spec.size[0], "width": spec.size[1]},
                                  image_mean=list(spec.mean), image_std=list(spec.std))

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return save


def _labels(classes: list[str]) -> dict:
    return {"id2label": dict(enumerate(classes)), "label2id": {c: i for i, c in enumerate(classes)}}


def _vit(classes: list[str], size: int) -> tuple[nn.Module, ImageSpec, Saver]:
    from transformers import ViTConfig, ViTForImageClassification

    spec = ImageSpec(size=(size, size), channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    config = ViTConfig(image_size=size, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=3,
                       num_attention_heads=4, intermediate_size=128, **_labels(classes))
    model = ViTForImageClassification(config)
    return model, spec, _transformers(model, spec)


def _convnext(classes: list[str], size: int) -> tuple[nn.Module, ImageSpec, Saver]:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    spec = ImageSpec(size=(size, size), channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    config = ConvNextConfig(num_channels=3, patch_size=2, hidden_sizes=[24, 48, 96], depths=[1, 1, 1],
                            num_stages=3, **_labels(classes))
    model = ConvNextForImageClassification(config)
    return model, spec, _transformers(model, spec)


TEACHER_KINDS = {"timm-cnn": (_timm_cnn, False), "vit": (_vit, True), "convnext": (_convnext, True)}


def train_teacher(kind: str, classes: Sequence[str], data: ImageData, folder: Path, *, size: int, epochs: int,
                  lr: float = 3e-3, batch_size: int = 64, seed: int = 0) -> float:
    """Train a ``kind`` teacher on ``data``'s train images of ``classes``, save it to ``folder``.

    Returns its test accuracy on those classes.
    """
    build, is_transformers = TEACHER_KINDS[kind]
    classes = list(classes)
    torch.manual_seed(seed)
    model, spec, save = build(classes, size)
    own = LabelSpace.union([classes])
    label_map = [-1 if own.index_of(name) is None else own.index_of(name) for name in data.class_names]
    known = [data.class_names.index(c) for c in classes]
    transfer = RelabeledImages(Subset(data.train, np.flatnonzero(np.isin(data.train_labels, known))), label_map)
    test = RelabeledImages(Subset(data.test, np.flatnonzero(np.isin(data.test_labels, known))), label_map)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    history = train(RawClassifier(model, spec, is_transformers), create_method("supervised", own, []), None,
                    transfer, config, evaluate=lambda m: accuracy(m, test), progress=False)
    save(folder)
    return history[-1]["test_accuracy"]
