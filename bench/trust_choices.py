"""Which teacher to trust, measured without training a student: how often each way of combining the teachers
gets a test image right (the target the student would learn).

    python -m bench.trust_choices --setting fmnist-split --seeds 3

The teachers' logits on the transfer and test splits are computed once; then each variant is fitted (on the
same 2% of labels for every labeled variant, one draw per seed) or calibrated (zero-label variants, on the
unlabeled transfer set) and scored on the test split. Rows: trust-learner's trust models (on the teachers'
outputs or on the input; official softmax-of-sigmoids or normalised sigmoids), confidence-trust's scores,
and the label-free references (mean, least entropy, concatenated logits). Writes
``bench/results/trust-choices-<setting>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from amalgam import load_teacher
from amalgam.pipeline import data_label_map
from amalgam.data import RelabeledImages, stratified_indices
from amalgam.knowledge import CachedSignals
from amalgam.methods import LabeledSet, create_method
from amalgam.methods.base import Setup
from amalgam.teachers import LabelSpace
from bench.quality import RESULTS
from bench.settings import LABELED_FRACTION, SETTINGS

# (label, method, options, uses labels)
VARIANTS: list[tuple[str, str, dict[str, Any], bool]] = [
    ("trust model on teachers' outputs, softmax(sigmoid) (default)", "trust-learner", {}, True),
    ("trust model on teachers' outputs, normalised sigmoids", "trust-learner", {"trust_norm": "sigmoid"}, True),
    ("trust model on the input (CNN), softmax(sigmoid)", "trust-learner", {"trust_input": "input"}, True),
    ("trust model on the input (CNN), normalised sigmoids", "trust-learner",
     {"trust_input": "input", "trust_norm": "sigmoid"}, True),
    ("confidence-trust, max-prob (default)", "confidence-trust", {}, False),
    ("confidence-trust, max-prob, sharpness 0.25", "confidence-trust", {"sharpness": 0.25}, False),
    ("confidence-trust, energy", "confidence-trust", {"score": "energy"}, False),
    ("teachers' mean (soft-targets)", "soft-targets", {}, False),
    ("least-entropy teacher (selective-learning)", "selective-learning", {}, False),
    ("concatenated logits (concat-logits)", "concat-logits", {}, False),
]


@torch.no_grad()
def combined_accuracy(method, test_logits: Sequence[torch.Tensor], test: RelabeledImages, batch: int = 1024) -> float:
    labels = torch.tensor([test[i][1] for i in range(len(test))])
    correct = 0
    for start in range(0, len(test), batch):
        rows = range(start, min(start + batch, len(test)))
        images = torch.stack([test[i][0] for i in rows])
        target = method.combined_target([z[start:start + len(rows)] for z in test_logits], images)
        correct += int((target.argmax(-1) == labels[start:start + len(rows)]).sum())
    return correct / len(test)


def run(setting_name: str, seeds: Sequence[int], progress: bool = True) -> dict:
    setting = SETTINGS[setting_name]
    teachers = [load_teacher(folder) for folder in setting.teacher_folders(progress=progress)]
    data = setting.data()
    space = LabelSpace.union([t.class_names for t in teachers])
    label_map = data_label_map(data, space)
    transfer, test = RelabeledImages(data.train, label_map), RelabeledImages(data.test, label_map)
    train_signals = CachedSignals.compute(teachers, transfer, progress=progress)
    test_logits = CachedSignals.compute(teachers, test, progress=progress).logits
    rows = []
    for label, method_name, options, uses_labels in tqdm(VARIANTS, desc=setting_name, disable=not progress):
        runs = []
        for seed in seeds if uses_labels else seeds[:1]:  # the label-free variants do not depend on the draw
            started = time.perf_counter()
            torch.manual_seed(seed)
            method = create_method(method_name, space, teachers, options)
            visible = stratified_indices(data.train_labels, LABELED_FRACTION, seed)
            labeled = LabeledSet.gather(transfer, visible, train_signals) if uses_labels else None
            method.setup(Setup(labeled, train_signals.logits))
            method.eval()
            runs.append({"seed": seed, "accuracy": combined_accuracy(method, test_logits, test),
                         "seconds": time.perf_counter() - started})
        rows.append({"label": label, "method": method_name, "options": options, "uses_labels": uses_labels,
                     "runs": runs})
        if progress:
            tqdm.write(f"{label:<64} {statistics.fmean(r['accuracy'] for r in runs):.4f}")
    return {"setting": setting_name, "labeled_fraction": LABELED_FRACTION, "rows": rows,
            "teachers": [t.name for t in teachers]}


def write_report(results: dict, out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"trust-choices-{results['setting']}.md"
    lines = [
        f"# Whom to trust: {results['setting']}",
        "",
        f"Accuracy on the test split of the teachers ({', '.join(results['teachers'])}) combined per image by each "
        f"variant: the target a student learns, before any student is trained. Labeled variants are fitted on a "
        f"stratified {results['labeled_fraction']:.0%} of the train split (one draw per seed); zero-label variants "
        "use no labels (calibrated on the unlabeled train split).",
        f"Regenerate: `python -m bench.trust_choices --setting {results['setting']}`.",
        "",
        "| variant | method | labels | accuracy of the combined target (mean ± std) | seconds to fit |",
        "|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        values = [r["accuracy"] for r in row["runs"]]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        seconds = statistics.median(r["seconds"] for r in row["runs"])
        labels = f"{results['labeled_fraction']:.0%}" if row["uses_labels"] else "none"
        lines.append(f"| {row['label']} | `{row['method']}` | {labels} | {statistics.fmean(values):.4f} ± {std:.4f} "
                     f"| {seconds:.1f} |")
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="digits-split")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    path = write_report(run(args.setting, list(range(args.seeds))), args.out)
    print(path.read_text())


if __name__ == "__main__":
    main()
