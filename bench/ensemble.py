"""Ensemble benchmark: does a multi-head student keep what a teacher ensemble knows about its own uncertainty?

    python -m bench.ensemble --setting digits-ensemble             # a few minutes
    python -m bench.ensemble --setting fmnist-ensemble --seeds 3   # the table the README links

Three teachers of three architectures, each trained on every class (an ensemble), are distilled without labels
into the quality benchmark's student by ``hydra`` (one head per teacher) and by ``soft-targets`` (one head: Hinton
KD on the teachers' mean), same budget. Each model is measured on the test split (in distribution: accuracy, NLL,
ECE, Brier, mean total / data / model uncertainty) and on images from another data set (out of distribution:
Fashion-MNIST's students see digits, digits' students see Fashion-MNIST): mean uncertainties there, AUROC of
telling the two apart by model or by total uncertainty, and how far the student's model uncertainty is from the
teachers' (mean squared difference per image). Writes ``bench/results/ensemble-<setting>.md``, ``.json`` and
``.png`` (the distributions of model uncertainty in and out of distribution).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from amalgam import amalgamate, load_teacher
from amalgam.data import load_digits, load_fashion_mnist
from amalgam.engine.uncertainty import (
    auroc, decompose, ensemble_report, student_member_probabilities, teacher_member_probabilities,
)
from amalgam.teachers import LabelSpace
from bench.settings import ENSEMBLE_SETTINGS, STUDENT

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {"hydra (one head per teacher)": "hydra", "single-head KD (soft-targets)": "soft-targets"}
OOD_SAMPLES = 2000
OUT_OF_DISTRIBUTION = {"fmnist-ensemble": ("digits", load_digits), "digits-ensemble": ("fashion-mnist",
                                                                                       load_fashion_mnist)}


def test_images(dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    count = len(dataset) if limit is None else min(limit, len(dataset))
    pairs = [dataset[i] for i in range(count)]
    return torch.stack([p[0] for p in pairs]), torch.tensor([int(p[1]) for p in pairs])


def measure(members_in: torch.Tensor, labels: torch.Tensor, members_out: torch.Tensor,
            reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """In- and out-of-distribution numbers of ``M x N x C`` member probabilities; ``reference`` holds the
    teachers' per-image model uncertainty (in, out) to compare with."""
    inside, outside = decompose(members_in), decompose(members_out)
    result = {"in": ensemble_report(members_in, labels),
              "out": {f"{k}_uncertainty": float(v.mean()) for k, v in outside.items()},
              "auroc_model": auroc(inside["model"], outside["model"]),
              "auroc_total": auroc(inside["total"], outside["total"])}
    if reference is not None:
        result["model_uncertainty_mse"] = {
            "in": float(((inside["model"] - reference[0]) ** 2).mean()),
            "out": float(((outside["model"] - reference[1]) ** 2).mean())}
    result["model_uncertainty_values"] = {"in": inside["model"].tolist(), "out": outside["model"].tolist()}
    return result


def run(setting_name: str, seeds: Sequence[int], progress: bool = True) -> dict:
    setting = ENSEMBLE_SETTINGS[setting_name]
    teachers = [load_teacher(folder) for folder in setting.teacher_folders(progress=progress)]
    data = setting.data()
    ood_name, ood_loader = OUT_OF_DISTRIBUTION[setting_name]
    images_in, labels = test_images(data.test)
    images_out, _ = test_images(ood_loader().test, OOD_SAMPLES)
    budget = setting.budget
    label_space = LabelSpace.union([t.class_names for t in teachers])  # as amalgamate builds it
    mapped = torch.tensor([label_space.index_of(c) for c in data.class_names])[labels]
    teacher_in = teacher_member_probabilities(teachers, label_space, images_in)
    teacher_out = teacher_member_probabilities(teachers, label_space, images_out)
    rows: dict[str, list[dict]] = {"teachers": [measure(teacher_in, mapped, teacher_out)]}
    rows.update({label: [] for label in METHODS})
    reference = (decompose(teacher_in)["model"], decompose(teacher_out)["model"])
    for label, seed in tqdm([(label, seed) for label in METHODS for seed in seeds], desc=setting_name,
                            disable=not progress, unit="run"):
        started = time.perf_counter()
        result = amalgamate(teachers, student=STUDENT, data=data, method=METHODS[label], labeled_fraction=0.0,
                            epochs=budget.epochs, batch_size=budget.batch_size, lr=budget.lr, seed=seed,
                            progress=False)
        numbers = measure(student_member_probabilities(result.student, images_in), mapped,
                          student_member_probabilities(result.student, images_out), reference)
        numbers.update(seed=seed, seconds=time.perf_counter() - started)
        rows[label].append(numbers)
        if progress:
            tqdm.write(f"{label:<32} seed {seed}  accuracy {numbers['in']['accuracy']:.4f}  "
                       f"model uncertainty in {numbers['in']['model_uncertainty']:.4f} "
                       f"out {numbers['out']['model_uncertainty']:.4f}")
    return {"setting": setting_name, "student": STUDENT, "out_of_distribution": ood_name,
            "ood_samples": len(images_out), "test_samples": len(images_in),
            "budget": {"epochs": budget.epochs, "batch_size": budget.batch_size, "lr": budget.lr},
            "teachers": [t.describe() | {"parameters": t.num_parameters} for t in teachers], "rows": rows}


COLUMNS = [  # (header, path into a run's numbers)
    ("accuracy", ("in", "accuracy")), ("NLL", ("in", "nll")), ("ECE", ("in", "ece")), ("Brier", ("in", "brier")),
    ("model unc. in", ("in", "model_uncertainty")), ("model unc. out", ("out", "model_uncertainty")),
    ("total unc. in", ("in", "total_uncertainty")), ("total unc. out", ("out", "total_uncertainty")),
    ("AUROC by model unc.", ("auroc_model",)), ("AUROC by total unc.", ("auroc_total",)),
    ("MSE to teachers' model unc. in / out", None),
]


def _cell(runs: list[dict], path: tuple[str, ...] | None) -> str:
    if path is None:
        if "model_uncertainty_mse" not in runs[0]:
            return "—"
        return " / ".join(f"{statistics.fmean(r['model_uncertainty_mse'][w] for r in runs):.4f}" for w in ("in", "out"))
    values = []
    for run in runs:
        value = run
        for key in path:
            value = value[key]
        values.append(value)
    mean = statistics.fmean(values)
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else f"{mean:.4f}"


def table(results: dict) -> str:
    lines = ["| model | " + " | ".join(h for h, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for label, runs in [("teachers' ensemble (3 models)", results["rows"]["teachers"])] + [
            (label, results["rows"][label]) for label in METHODS]:
        lines.append(f"| {label} | " + " | ".join(_cell(runs, path) for _, path in COLUMNS) + " |")
    return "\n".join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [("teachers' ensemble", results["rows"]["teachers"][0])] + [
        (label, results["rows"][label][0]) for label in METHODS]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.2), sharey=True)
    top = max(max(r["model_uncertainty_values"]["out"] + r["model_uncertainty_values"]["in"]) for _, r in shown)
    bins = [top * i / 40 for i in range(41)] if top > 0 else 40
    for ax, (label, run) in zip(axes, shown):
        ax.hist(run["model_uncertainty_values"]["in"], bins=bins, alpha=0.6, density=True, label="in distribution")
        ax.hist(run["model_uncertainty_values"]["out"], bins=bins, alpha=0.6, density=True,
                label=f"out ({results['out_of_distribution']})")
        ax.set_title(f"{label}\nAUROC {run['auroc_model']:.3f}", fontsize=9)
        ax.set_xlabel("model uncertainty (mutual information, nats)", fontsize=8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict, out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"ensemble-{results['setting']}"
    seeds = len(results["rows"][next(iter(METHODS))])
    teachers = ", ".join(f"{t['name']} ({t['library']} {t['architecture']})" for t in results["teachers"])
    budget = results["budget"]
    header = (
        f"# Ensemble: {results['setting']}\n\n"
        f"Teachers, each on every class: {teachers}. Student `{results['student']}`, no labels, "
        f"{budget['epochs']} epochs, batch {budget['batch_size']}, lr {budget['lr']}; {seeds} seeds (mean ± std). "
        f"In distribution: the {results['test_samples']} test images; out of distribution: "
        f"{results['ood_samples']} {results['out_of_distribution']} test images. Uncertainties in nats; AUROC "
        "of telling out- from in-distribution images by the uncertainty (0.5: cannot).\n"
        f"Regenerate: `python -m bench.ensemble --setting {results['setting']} --seeds {seeds}`.\n\n"
    )
    stem.with_suffix(".md").write_text(header + table(results) + f"\n\n![model uncertainty]({stem.name}.png)\n")
    stem.with_suffix(".json").write_text(json.dumps(results))
    _plot(results, stem.with_suffix(".png"))
    return stem.with_suffix(".md")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(ENSEMBLE_SETTINGS), default="digits-ensemble")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    print(f"written: {write_report(run(args.setting, range(args.seeds)), args.out)}")


if __name__ == "__main__":
    main()
