"""Multi-task benchmark: one student with a head per teacher's task (SOKA), each head against its teacher.

    python -m bench.tasks --seeds 3    # Fashion-MNIST, about 20 minutes on one core

Two teachers of two architectures do two jobs on Fashion-MNIST: a timm CNN names the item (10 classes), a
transformers ViT the coarse category (tops, bottoms, dresses, footwear, bags). ``soka`` trains one student
(the quality benchmark's, same budget, no labels) with a head per task; each head is measured on the test
images against its teacher, on that teacher's task. Writes ``bench/results/tasks-fmnist.md``, ``.json`` and
``.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from amalgam import amalgamate, load_teacher
from amalgam.data import ImageData, load_fashion_mnist
from amalgam.data.images import TensorImages
from amalgam.paths import amalgam_home
from amalgam.zoo import ZOO_VERSION, TeacherSpec, build_teachers
from bench.settings import FASHION, FASHION_BUDGET, STUDENT

RESULTS = Path(__file__).resolve().parent / "results"
COARSE = ["tops", "bottoms", "dresses", "footwear", "bags"]
COARSE_OF_ITEM = {"T-shirt/top": "tops", "Trouser": "bottoms", "Pullover": "tops", "Dress": "dresses",
                  "Coat": "tops", "Sandal": "footwear", "Shirt": "tops", "Sneaker": "footwear", "Bag": "bags",
                  "Ankle boot": "footwear"}
TASKS = {"item": TeacherSpec("timm-cnn", FASHION, size=32, epochs=3, batch_size=128),
         "coarse": TeacherSpec("vit", COARSE, size=28, epochs=5, batch_size=128)}


def coarse_fashion_mnist() -> ImageData:
    """Fashion-MNIST with each item relabeled as its coarse category."""
    items = load_fashion_mnist()
    to_coarse = np.array([COARSE.index(COARSE_OF_ITEM[name]) for name in items.class_names])

    def relabeled(split: TensorImages, labels: np.ndarray) -> tuple[TensorImages, np.ndarray]:
        coarse = to_coarse[labels]
        return TensorImages(split.images, torch.from_numpy(coarse)), coarse

    train, train_labels = relabeled(items.train, items.train_labels)
    test, test_labels = relabeled(items.test, items.test_labels)
    return ImageData("fashion-mnist-coarse", list(COARSE), train, test, train_labels, test_labels, items.channels,
                     items.size)


def teacher_folders(progress: bool = True) -> list[Path]:
    root = amalgam_home() / "bench-teachers" / ZOO_VERSION / "fmnist-tasks"
    return [build_teachers({"item": TASKS["item"]}, load_fashion_mnist, root, progress=progress)[0],
            build_teachers({"coarse": TASKS["coarse"]}, coarse_fashion_mnist, root, progress=progress)[0]]


@torch.no_grad()
def task_accuracy(predict, images: torch.Tensor, labels: torch.Tensor) -> float:
    predictions = torch.cat([predict(chunk).argmax(dim=-1) for chunk in images.split(512)])
    return float((predictions == labels).float().mean())


def run(seeds: Sequence[int], progress: bool = True) -> dict:
    teachers = [load_teacher(folder) for folder in teacher_folders(progress)]
    data = load_fashion_mnist()
    images = data.test.images.float() / 255.0
    labels = {"item": data.test.labels, "coarse": coarse_fashion_mnist().test.labels}
    teacher_rows = {task: task_accuracy(lambda x, t=t: t(x).logits, images, labels[task])
                    for task, t in zip(TASKS, teachers)}
    runs = []
    for seed in tqdm(seeds, desc="fmnist-tasks", disable=not progress, unit="run"):
        started = time.perf_counter()
        result = amalgamate(teachers, student=STUDENT, data=data, method="soka", labeled_fraction=0.0,
                            epochs=FASHION_BUDGET.epochs, batch_size=FASHION_BUDGET.batch_size,
                            lr=FASHION_BUDGET.lr, seed=seed, progress=False)
        student = result.student.eval()
        heads = [h.name for h in student.head_specs]
        runs.append({"seed": seed, "seconds": time.perf_counter() - started,
                     "heads": {task: task_accuracy(lambda x, h=head: student(x)[h], images, labels[task])
                               for task, head in zip(TASKS, heads)},
                     "task_weights": {k: v for k, v in result.history[-1].items() if k.startswith("task_weight")},
                     "student_parameters": student.num_parameters})
        if progress:
            tqdm.write(f"seed {seed}: " + ", ".join(f"{t} head {a:.4f}" for t, a in runs[-1]["heads"].items()))
    return {"student": STUDENT, "teachers": [t.describe() | {"parameters": t.num_parameters} for t in teachers],
            "budget": {"epochs": FASHION_BUDGET.epochs, "batch_size": FASHION_BUDGET.batch_size,
                       "lr": FASHION_BUDGET.lr},
            "teacher_accuracy": teacher_rows, "runs": runs}


def table(results: dict) -> str:
    lines = ["| task | teacher | teacher's accuracy | student head's accuracy (mean ± std) | head / teacher |",
             "|---|---|---|---|---|"]
    for (task, teacher_accuracy), teacher in zip(results["teacher_accuracy"].items(), results["teachers"]):
        values = [r["heads"][task] for r in results["runs"]]
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {task} | {teacher['name']} ({teacher['library']} {teacher['architecture']}, "
                     f"{teacher['parameters']:,} parameters) | {teacher_accuracy:.4f} | {mean:.4f} ± {std:.4f} | "
                     f"{mean / teacher_accuracy:.3f} |")
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["teacher_accuracy"])
    heads = [statistics.fmean(r["heads"][t] for r in results["runs"]) for t in tasks]
    fig, ax = plt.subplots(figsize=(5, 3))
    positions = np.arange(len(tasks))
    ax.bar(positions - 0.2, [results["teacher_accuracy"][t] for t in tasks], 0.4, label="teacher")
    ax.bar(positions + 0.2, heads, 0.4, label="student head (soka)")
    ax.set_xticks(positions, tasks)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy on the task")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict, out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / "tasks-fmnist"
    seeds = len(results["runs"])
    budget = results["budget"]
    parameters = results["runs"][0]["student_parameters"]
    header = (
        "# Tasks: Fashion-MNIST items and coarse categories in one student\n\n"
        f"`soka`, student `{results['student']}` ({parameters:,} parameters) with a head per task, no labels, "
        f"{budget['epochs']} epochs, batch {budget['batch_size']}, lr {budget['lr']}, {seeds} seeds; each head and "
        "its teacher on the 10,000 test images, on that teacher's task.\n"
        f"Regenerate: `python -m bench.tasks --seeds {seeds}`.\n\n"
    )
    stem.with_suffix(".md").write_text(header + table(results) + f"\n\n![heads]({stem.name}.png)\n")
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    _plot(results, stem.with_suffix(".png"))
    return stem.with_suffix(".md")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    print(f"written: {write_report(run(range(args.seeds)), args.out)}")


if __name__ == "__main__":
    main()
