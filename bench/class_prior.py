"""The class prior (``class_prior``) when the classes are not equally common: how often each zero-label target is
right on the transfer images, without a prior, with a uniform one, with the one read from 2% of the labels, and
with the true one, as the transfer set grows more imbalanced. No student is trained: the student learns this
target, and tracks it.

    python -m bench.class_prior --setting fmnist-split

Each imbalance keeps every class of the train split at a rate between 1 (the most common class) and ``ratio``
(the rarest), spaced evenly on a log scale, the classes in a random order (seeded); ``ratio = 1`` is the whole
balanced split. On each subset the zero-label methods are set up afresh (their calibration and clusters read
only that subset) and scored on it. Writes ``bench/results/class-prior-<setting>.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import matplotlib
import torch

from amalgam import load_teacher
from amalgam.data import RelabeledImages, stratified_indices
from amalgam.knowledge import CachedSignals
from amalgam.methods import LabeledSet, create_method
from amalgam.methods.base import Setup
from amalgam.pipeline import data_label_map
from amalgam.teachers import LabelSpace
from bench.quality import RESULTS
from bench.settings import LABELED_FRACTION, SETTINGS
from bench.trust_choices import pooled_features, pooled_outputs, union_labels

matplotlib.use("Agg")

RATIOS = (1.0, 0.5, 0.2, 0.05)
METHODS = ("confidence-trust", "cluster-trust")
PRIORS = ("none", "uniform", "labels", "true")  # "true": the subset's class shares, given as a table


def imbalanced_rows(labels: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """The rows kept: class ``c`` at rate ``ratio ** (rank_c / (C - 1))``, ranks in a seeded random order."""
    classes = int(labels.max()) + 1
    generator = torch.Generator().manual_seed(seed)
    rank = torch.randperm(classes, generator=generator)
    rates = torch.tensor(ratio) ** (rank.float() / max(1, classes - 1))
    keep = (torch.rand(len(labels), generator=generator) < rates[labels.clamp(min=0)]) & (labels >= 0)
    return keep.nonzero().squeeze(1)


def run(setting_name: str, seed: int = 0, progress: bool = True) -> dict:
    setting = SETTINGS[setting_name]
    teachers = [load_teacher(folder) for folder in setting.teacher_folders(progress=progress)]
    data = setting.data()
    space = LabelSpace.union([t.class_names for t in teachers])
    label_map = data_label_map(data, space)
    transfer = RelabeledImages(data.train, label_map)
    logits = CachedSignals.compute(teachers, transfer, progress=progress).logits
    features = [pooled_features(t, transfer) for t in teachers]
    taps = [t.tap_names()[-1] for t in teachers]
    labels = union_labels(data.train_labels, label_map)
    rows_out = []
    for ratio in RATIOS:
        rows = imbalanced_rows(labels, ratio, seed)
        sub_logits, sub_features, sub_labels = [z[rows] for z in logits], [f[rows] for f in features], labels[rows]
        shares = torch.bincount(sub_labels, minlength=space.num_classes).float() / len(rows)
        visible = torch.as_tensor(stratified_indices(sub_labels.numpy(), LABELED_FRACTION, seed))
        labeled = LabeledSet(torch.empty(len(visible), 0), sub_labels[visible], [], visible)
        ctx = Setup(labeled, sub_logits, transfer_rows=lambda r: pooled_outputs(sub_logits, sub_features, taps, r))
        for method_name in METHODS:
            for prior in PRIORS:
                started = time.perf_counter()
                spec = {"none": None, "true": dict(zip(space.class_names, shares.tolist()))}.get(prior, prior)
                options = {"class_prior": spec} | ({"teacher_taps": taps} if method_name == "cluster-trust" else {})
                method = create_method(method_name, space, teachers, options)
                method.setup(ctx)
                with torch.no_grad():
                    target = method.target(sub_logits, temperature=1.0, rows=torch.arange(len(rows)))
                rows_out.append({"ratio": ratio, "images": len(rows), "method": method_name, "prior": prior,
                                 "accuracy": float((target.argmax(-1) == sub_labels).float().mean()),
                                 "rarest_share": float(shares.min()), "commonest_share": float(shares.max()),
                                 "seconds": time.perf_counter() - started})
                if progress:
                    print(f"ratio {ratio:<5} {method_name:<17} prior {prior:<8} {rows_out[-1]['accuracy']:.4f}")
    return {"setting": setting_name, "seed": seed, "teachers": [t.name for t in teachers], "rows": rows_out}


def write_report(results: dict, out: Path = RESULTS) -> Path:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"class-prior-{results['setting']}.md"
    by = {(r["ratio"], r["method"], r["prior"]): r for r in results["rows"]}
    lines = [
        f"# The class prior on imbalanced transfer sets: {results['setting']}",
        "",
        f"How often the zero-label targets are right on the transfer images (temperature 1; teachers "
        f"{', '.join(results['teachers'])}) when the train split is subsampled so that its rarest class is `ratio` "
        "times as common as its commonest. Priors: none (the method as it was), `\"uniform\"`, `\"labels\"` (read "
        f"from a stratified {LABELED_FRACTION:.0%} of the subset's labels) and the subset's true shares as a table.",
        f"Regenerate: `python -m bench.class_prior --setting {results['setting']}` (seed {results['seed']}).",
        "",
        "| ratio | images | method | " + " | ".join(f"prior {p}" for p in PRIORS) + " |",
        "|---|---|---|" + "---|" * len(PRIORS),
    ]
    for ratio in RATIOS:
        for method in METHODS:
            first = by[(ratio, method, "none")]
            values = [by[(ratio, method, p)]["accuracy"] for p in PRIORS]
            best = max(values)
            cells = [f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in values]
            lines.append(f"| {ratio:g} | {first['images']} | `{method}` | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(results, indent=1))
    figure, axes = plt.subplots(1, len(METHODS), figsize=(5 * len(METHODS), 3.6), sharey=True)
    for axis, method in zip(axes, METHODS):
        for prior in PRIORS:
            axis.plot(RATIOS, [by[(r, method, prior)]["accuracy"] for r in RATIOS], marker="o", label=prior)
        axis.set(xscale="log", title=method, xlabel="rarest / commonest class")
        axis.invert_xaxis()
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("target right on transfer images")
    axes[-1].legend(title="class_prior")
    figure.suptitle(results["setting"])
    figure.tight_layout()
    figure.savefig(path.with_suffix(".png"), dpi=110)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="digits-split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    print(write_report(run(args.setting, args.seed), args.out).read_text())


if __name__ == "__main__":
    main()
