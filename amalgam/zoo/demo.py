"""The demo zoo: two small teachers of different libraries, trained on disjoint halves of digits.

``cnn-digits-0to4`` is a timm CNN (grey 32x32 input) for digits 0-4, saved in timm's Hub layout;
``vit-digits-5to9`` is a transformers ViT (RGB 16x16 input) for digits 5-9, saved with ``save_pretrained``.
They differ in library, architecture, input size, channels and label space on purpose: that is the problem
amalgam solves. They are trained on the digits *train* split only, so the test split stays unseen.

Built on first use into ``$AMALGAM_HOME/zoo/<version>`` (default ``~/.cache/amalgam``), each teacher in a
temporary folder renamed into place when complete, so an interrupted build never leaves half a teacher.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from amalgam.data import RelabeledImages, load_digits
from amalgam.engine import TrainConfig, accuracy, train
from amalgam.methods import create_method
from amalgam.teachers import ImageSpec, LabelSpace

ZOO_VERSION = "v1"
DIGITS_LOW = [str(d) for d in range(5)]
DIGITS_HIGH = [str(d) for d in range(5, 10)]


def amalgam_home() -> Path:
    return Path(os.environ.get("AMALGAM_HOME", Path.home() / ".cache" / "amalgam")).expanduser()


class _RawClassifier(nn.Module):
    """Wraps a model so it takes raw [0, 1] batches, like amalgam's students, for training with the engine."""

    def __init__(self, model: nn.Module, spec: ImageSpec, transformers: bool) -> None:
        super().__init__()
        self.model, self.spec, self.transformers = model, spec, transformers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.spec(images)
        return self.model(pixel_values=x).logits if self.transformers else self.model(x)


def _timm_cnn(classes: list[str]) -> tuple[nn.Module, ImageSpec, Callable[[Path], None]]:
    import timm
    from timm.models import save_for_hf

    spec = ImageSpec(size=(32, 32), channels=1, mean=(0.5,), std=(0.5,))
    model = timm.create_model("test_resnet", num_classes=len(classes), in_chans=1)
    data_config = {"input_size": (1, *spec.size), "mean": spec.mean, "std": spec.std}

    def save(folder: Path) -> None:
        save_for_hf(model, folder, model_config={"label_names": classes}, safe_serialization=True,
                    data_config=data_config)

    return model, spec, save


def _transformers_vit(classes: list[str]) -> tuple[nn.Module, ImageSpec, Callable[[Path], None]]:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    spec = ImageSpec(size=(16, 16), channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    config = ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=128, id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)},
    )
    model = ViTForImageClassification(config)
    processor = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=list(spec.mean),
                                  image_std=list(spec.std))

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return model, spec, save


# name: (builder, classes, is a transformers model, training epochs)
DEMO_TEACHERS = {
    "cnn-digits-0to4": (_timm_cnn, DIGITS_LOW, False, 10),
    "vit-digits-5to9": (_transformers_vit, DIGITS_HIGH, True, 40),
}


def _train_teacher(name: str, folder: Path, progress: bool) -> float:
    build, classes, is_transformers, epochs = DEMO_TEACHERS[name]
    torch.manual_seed(0)
    model, spec, save = build(classes)
    digits = load_digits()
    own = LabelSpace.union([classes])
    label_map = [own.index_of(name) if own.index_of(name) is not None else -1 for name in digits.class_names]
    keep_train = np.flatnonzero(np.isin(digits.train_labels, [int(c) for c in classes]))
    keep_test = np.flatnonzero(np.isin(digits.test_labels, [int(c) for c in classes]))
    transfer = RelabeledImages(Subset(digits.train, keep_train), label_map)
    test = RelabeledImages(Subset(digits.test, keep_test), label_map)
    wrapped = _RawClassifier(model, spec, is_transformers)
    method = create_method("supervised", own, [])
    config = TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=0, cpu=True)
    history = train(wrapped, method, [], transfer, config, evaluate=lambda m: accuracy(m, test), progress=False)
    save(folder)
    return history[-1]["test_accuracy"]


def build_demo_zoo(root: str | os.PathLike | None = None, force: bool = False, progress: bool = True) -> list[Path]:
    """Train (once) and return the folders of the demo teachers.

    Example:
        >>> folders = build_demo_zoo()  # doctest: +SKIP
        >>> [f.name for f in folders]  # doctest: +SKIP
        ['cnn-digits-0to4', 'vit-digits-5to9']
    """
    root = Path(root) if root is not None else amalgam_home() / "zoo" / ZOO_VERSION
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    for name in DEMO_TEACHERS:
        folder = root / name
        if force and folder.exists():
            shutil.rmtree(folder)
        if not (folder / "config.json").is_file():
            with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as scratch:
                staged = Path(scratch) / name
                if progress:
                    print(f"Training demo teacher {name} (once; saved to {folder})")
                test_accuracy = _train_teacher(name, staged, progress)
                if progress:
                    print(f"  {name}: test accuracy on its classes {test_accuracy:.4f}")
                staged.rename(folder)
        folders.append(folder)
    return folders
