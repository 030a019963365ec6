"""Which teacher to trust, measured without training a student: how often each way of combining the teachers
gets a test image right (the target the student would learn).

    python -m bench.trust_choices --setting fmnist-split --seeds 3

The teachers' logits on the transfer and test splits are computed once; then each variant is fitted (on the
same 2% of labels for every labeled variant, one draw per seed) or calibrated (zero-label variants, on the
unlabeled transfer set) and scored on the test split. Rows: trust-learner's trust models (on the teachers'
outputs or on the input; official softmax-of-sigmoids or normalised sigmoids), confidence-trust's scores,
each of the two with a class prior (``class_prior``: from the labels, uniform), and the label-free references
(mean, least entropy, concatenated logits).

Probe rows (not registered methods: measurements of a direction, issue 17) fit a trust model, here, on
what the teachers *see*: each teacher's deepest suggested tap averaged over its positions, beside its
probabilities. With 2% of the labels, and with every label of the train split: the ceiling of any trust model
that reads these teachers, however many labels it gets. Each row also gives the accuracy of its target on the
three classes it gets most wrong. ``feature-probe``'s rows fit that method's linear class probe (on the teachers'
pooled deepest features and probabilities) with 2% of the labels, with every label, and with none
(``pseudo_labels=True``: the confident half of confidence-trust's target, or of cluster-trust's). Zero-label
rows decide per cluster instead of per image: ``cluster-trust`` with one k-means count (10, 100) and with its
default counts averaged, and with a uniform class prior (``class_prior="uniform"``: its target's class shares over
the transfer set matched to it, at temperature 1). A last zero-label probe scores confidence by feature density
(Mahalanobis distance to each teacher's class means) instead of the top probability.
Writes ``bench/results/trust-choices-<setting>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from amalgam import load_teacher
from amalgam.pipeline import data_label_map
from amalgam.data import RelabeledImages, stratified_indices
from amalgam.knowledge import CachedSignals
from amalgam.methods import LabeledSet, create_method
from amalgam.methods.base import Setup
from amalgam.methods.features.layers import feature_vector
from amalgam.methods.targets.confidence import confidence_scores
from amalgam.methods.targets.prior import shift_probabilities
from amalgam.methods.targets.trust import fit_membership, trust_weights
from amalgam.teachers import LabelSpace, Teacher, TeacherOutput
from amalgam.teachers.placement import place_probabilities
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
    ("confidence-trust, max-prob, class_prior='uniform'", "confidence-trust", {"class_prior": "uniform"}, False),
    ("trust model on teachers' outputs, class_prior='labels'", "trust-learner", {"class_prior": "labels"}, True),
    ("teachers' mean (soft-targets)", "soft-targets", {}, False),
    ("least-entropy teacher (selective-learning)", "selective-learning", {}, False),
    ("concatenated logits (concat-logits)", "concat-logits", {}, False),
]


# (label, what the probe reads, fitted on all labels rather than 2%)
PROBES: list[tuple[str, str, bool]] = [
    ("probe: trust model on teachers' features + outputs", "features+outputs", False),
    ("probe: trust model on teachers' outputs, every label (ceiling)", "outputs", True),
    ("probe: trust model on teachers' features + outputs, every label (ceiling)", "features+outputs", True),
]

CLUSTER_COUNTS = (10, 100)  # k of the zero-label cluster probes


@torch.no_grad()
def combined_predictions(method, test_logits: Sequence[torch.Tensor], test: RelabeledImages,
                         batch: int = 1024) -> torch.Tensor:
    predictions = []
    for start in range(0, len(test), batch):
        rows = range(start, min(start + batch, len(test)))
        images = torch.stack([test[i][0] for i in rows])
        predictions.append(method.combined_target([z[start:start + len(rows)] for z in test_logits], images)
                           .argmax(-1))
    return torch.cat(predictions)


def union_labels(labels, label_map: Sequence[int]) -> torch.Tensor:
    """A split's labels (``ImageData.train_labels``/``test_labels``) in the union label space, as
    :class:`RelabeledImages` gives them one image at a time (-1: a class no teacher knows), without decoding
    the images."""
    return torch.tensor([label_map[label] if label >= 0 else -1 for label in labels.tolist()])


def scores(predictions: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Accuracy, and per class (by name) for the classes that occur."""
    per_class = {name: float((predictions[labels == j] == j).float().mean())
                 for j, name in enumerate(class_names) if (labels == j).any()}
    return {"accuracy": float((predictions == labels).float().mean()), "per_class": per_class}


@torch.no_grad()
def pooled_features(teacher: Teacher, data: RelabeledImages) -> torch.Tensor:
    """The teacher's deepest suggested tap on every sample, averaged over its positions (``N x D``)."""
    tap = teacher.tap_names()[-1]
    return torch.cat([feature_vector(teacher(images, taps=[tap]).features[tap].float(), "mean")
                      for images, _ in DataLoader(data, batch_size=512)])


def probe_inputs(logits: Sequence[torch.Tensor], features: Sequence[torch.Tensor], reads: str) -> torch.Tensor:
    parts = [z.softmax(dim=-1) for z in logits]
    return torch.cat(([*features] if reads == "features+outputs" else []) + parts, dim=1)


def fit_probe(inputs: torch.Tensor, membership: torch.Tensor, seed: int, steps: int = 2000) -> torch.nn.Module:
    """A trust model of trust-learner's shape (one hidden layer of 64) on standardised inputs, fitted as
    trust-learner fits its own (BCE on ``1[y in Y_k]``, Adam lr 0.01, batches of 64), with a little weight decay
    for the wide feature inputs; at least 5 epochs and ``steps`` steps, so that 2% of the labels and all of them
    are fitted alike."""
    torch.manual_seed(seed)
    epochs = max(5, math.ceil(steps * 64 / len(inputs)))
    mean, std = inputs.mean(dim=0), inputs.std(dim=0) + 1e-6
    model = torch.nn.Sequential(Standardise(mean, std), torch.nn.Linear(inputs.shape[1], 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, membership.shape[1]))
    fit_membership(lambda rows: model(inputs[rows]), model.parameters(), membership, epochs, 0.01,
                   weight_decay=1e-3, clip=None)
    return model.eval()


class Standardise(torch.nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def run(setting_name: str, seeds: Sequence[int], progress: bool = True) -> dict:
    setting = SETTINGS[setting_name]
    teachers = [load_teacher(folder) for folder in setting.teacher_folders(progress=progress)]
    data = setting.data()
    space = LabelSpace.union([t.class_names for t in teachers])
    label_map = data_label_map(data, space)
    transfer, test = RelabeledImages(data.train, label_map), RelabeledImages(data.test, label_map)
    train_signals = CachedSignals.compute(teachers, transfer, progress=progress)
    test_logits = CachedSignals.compute(teachers, test, progress=progress).logits
    test_labels = union_labels(data.test_labels, label_map)
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
            predictions = combined_predictions(method, test_logits, test)
            runs.append({"seed": seed, **scores(predictions, test_labels, space.class_names),
                         "seconds": time.perf_counter() - started})
        rows.append({"label": label, "method": method_name, "options": options, "uses_labels": uses_labels,
                     "runs": runs})
        if progress:
            tqdm.write(f"{label:<64} {statistics.fmean(r['accuracy'] for r in runs):.4f}")
    rows += probe_rows(teachers, space, transfer, test, train_signals.logits, test_logits, test_labels,
                       data.train_labels, label_map, seeds, progress)
    return {"setting": setting_name, "labeled_fraction": LABELED_FRACTION, "rows": rows,
            "teachers": [t.name for t in teachers]}


def visible_rows(transfer_labels: torch.Tensor, train_labels, every_label: bool, seed: int) -> torch.Tensor:
    """The labeled rows a probe is fitted on: every train row, or the seed's stratified 2%; rows of classes no
    teacher knows left out."""
    visible = torch.arange(len(transfer_labels)) if every_label else \
        torch.as_tensor(stratified_indices(train_labels, LABELED_FRACTION, seed))
    return visible[transfer_labels[visible] >= 0]


def probe_rows(teachers: Sequence[Teacher], space: LabelSpace, transfer: RelabeledImages, test: RelabeledImages,
               train_logits: Sequence[torch.Tensor], test_logits: Sequence[torch.Tensor], test_labels: torch.Tensor,
               train_labels, label_map: Sequence[int], seeds: Sequence[int], progress: bool) -> list[dict]:
    """The :data:`PROBES`: trust models on the teachers' features and outputs; then :func:`class_probe_rows`."""
    train_features = [pooled_features(t, transfer) for t in teachers]
    test_features = [pooled_features(t, test) for t in teachers]
    transfer_labels = union_labels(train_labels, label_map)
    membership = space.membership().float()
    indices = [space.index_tensor(k) for k in range(len(teachers))]
    test_probs = [z.softmax(dim=-1) for z in test_logits]
    rows = []
    for label, reads, every_label in PROBES:
        train_inputs = probe_inputs(train_logits, train_features, reads)
        test_inputs = probe_inputs(test_logits, test_features, reads)
        runs = []
        for seed in seeds[:1] if every_label else seeds:
            started = time.perf_counter()
            visible = visible_rows(transfer_labels, train_labels, every_label, seed)
            probe = fit_probe(train_inputs[visible], membership[:, transfer_labels[visible]].T, seed)
            with torch.no_grad():
                weights = trust_weights(probe(test_inputs), "sigmoid")
            predictions = place_probabilities(test_probs, indices, weights, space.num_classes).argmax(-1)
            runs.append({"seed": seed, **scores(predictions, test_labels, space.class_names),
                         "seconds": time.perf_counter() - started})
        rows.append({"label": label, "method": "(bench probe)", "options": {"reads": reads},
                     "uses_labels": True, "labels": "all" if every_label else None, "runs": runs})
        if progress:
            tqdm.write(f"{label:<64} {statistics.fmean(r['accuracy'] for r in runs):.4f}")
    rows += class_probe_rows(teachers, space, train_logits, test_logits, train_features, test_features, test_labels,
                             transfer_labels, train_labels, seeds, progress)
    return rows


def pooled_outputs(logits: Sequence[torch.Tensor], features: Sequence[torch.Tensor], taps: Sequence[str],
                   rows: torch.Tensor | None = None) -> list[TeacherOutput]:
    """Teacher outputs whose tap holds the pooled feature as a 1 x 1 map, so that ``feature-probe`` reads the
    inputs it reads in training (a map averaged over its positions)."""
    rows = slice(None) if rows is None else rows
    return [TeacherOutput(z[rows], {tap: f[rows][:, :, None, None]}) for z, f, tap in zip(logits, features, taps)]


def class_probe_rows(teachers: Sequence[Teacher], space: LabelSpace, train_logits, test_logits, train_features,
                     test_features, test_labels: torch.Tensor, transfer_labels: torch.Tensor, train_labels,
                     seeds: Sequence[int], progress: bool) -> list[dict]:
    """``feature-probe``'s target (2% labels, and every label: the ceiling of a linear probe on these teachers);
    with no labels, the same probe fitted on pseudo-labels (``pseudo_labels=True``); ``cluster-trust``'s target
    (one cluster count, and its default counts); and confidence-trust with a feature-density score (Mahalanobis
    distance to the teacher's class means), a zero-label probe."""
    taps = [t.tap_names()[-1] for t in teachers]
    test_outputs = pooled_outputs(test_logits, test_features, taps)
    test_probs = [z.softmax(-1) for z in test_logits]
    indices = [space.index_tensor(k) for k in range(len(teachers))]
    rows = []

    def row(label: str, method: str, uses_labels: bool, runs: list[dict], labels: str | None = None) -> None:
        rows.append({"label": label, "method": method, "options": {},
                     "uses_labels": uses_labels, "labels": labels, "runs": runs})
        if progress:
            tqdm.write(f"{label:<64} {statistics.fmean(r['accuracy'] for r in runs):.4f}")

    for label, every_label in (("feature-probe's target", False), ("feature-probe's target, every label (ceiling)",
                                                                   True)):
        runs = []
        for seed in seeds[:1] if every_label else seeds:
            started = time.perf_counter()
            visible = visible_rows(transfer_labels, train_labels, every_label, seed)
            torch.manual_seed(seed)
            method = create_method("feature-probe", space, teachers, {"teacher_taps": taps})
            method.setup(Setup(LabeledSet(torch.empty(len(visible), 0), transfer_labels[visible],
                                          pooled_outputs(train_logits, train_features, taps, visible), visible)))
            with torch.no_grad():
                predictions = method.probe_logits(test_outputs).argmax(-1)
            runs.append({"seed": seed, **scores(predictions, test_labels, space.class_names),
                         "seconds": time.perf_counter() - started})
        row(label, "feature-probe", True, runs, "all" if every_label else None)

    started = time.perf_counter()
    torch.manual_seed(0)
    method = create_method("feature-probe", space, teachers, {"teacher_taps": taps, "pseudo_labels": True})
    method.setup(Setup(transfer_logits=list(train_logits),
                       transfer_rows=lambda rows: pooled_outputs(train_logits, train_features, taps, rows)))
    with torch.no_grad():
        predictions = method.probe_logits(test_outputs).argmax(-1)
    row("feature-probe's target, pseudo_labels=True (confidence-trust's confident half)", "feature-probe", False,
        [{"seed": 0, **scores(predictions, test_labels, space.class_names), "seconds": time.perf_counter() - started}])

    setup = Setup(transfer_logits=list(train_logits),
                  transfer_rows=lambda rows: pooled_outputs(train_logits, train_features, taps, rows))
    for clusters, prior in [([k], None) for k in CLUSTER_COUNTS] + [(None, None), (None, "uniform")]:
        started = time.perf_counter()
        options = {"teacher_taps": taps, "class_prior": prior} | ({"clusters": clusters} if clusters else {})
        method = create_method("cluster-trust", space, teachers, options)
        method.setup(setup)
        target = place_probabilities(test_probs, indices, method.weights_of(test_outputs), space.num_classes)
        predictions = (shift_probabilities(target, method.plain_prior_shift) if prior else target).argmax(-1)
        label = (f"probe: zero-label trust per cluster (k-means, k={clusters[0]}) of teachers' features + outputs"
                 if clusters else f"cluster-trust's target (k = {', '.join(map(str, method.counts))}, averaged)"
                 + (f", class_prior={prior!r}" if prior else ""))
        row(label, "(bench probe)" if clusters else "cluster-trust", False,
            [{"seed": 0, **scores(predictions, test_labels, space.class_names), "seconds": time.perf_counter() - started}])

    started = time.perf_counter()
    torch.manual_seed(0)
    method = create_method("feature-probe", space, teachers,
                           {"teacher_taps": taps, "pseudo_labels": True, "pseudo_from": "cluster-trust"})
    method.setup(setup)
    with torch.no_grad():
        predictions = method.probe_logits(test_outputs).argmax(-1)
    row("feature-probe's target, pseudo_labels=True, pseudo_from='cluster-trust' (its confident half)",
        "feature-probe", False,
        [{"seed": 0, **scores(predictions, test_labels, space.class_names), "seconds": time.perf_counter() - started}])

    started = time.perf_counter()
    fits = [mahalanobis_fit(f, z.softmax(-1)) for f, z in zip(train_features, train_logits)]
    train_scores = torch.stack([mahalanobis_score(f, fit) for f, fit in zip(train_features, fits)], dim=-1)
    test_scores = torch.stack([mahalanobis_score(f, fit) for f, fit in zip(test_features, fits)], dim=-1)
    weights = ((test_scores - train_scores.mean(0)) / train_scores.std(0).clamp(min=1e-6)).softmax(dim=-1)
    predictions = place_probabilities(test_probs, indices, weights, space.num_classes).argmax(-1)
    row("probe: confidence-trust with a Mahalanobis score (class means of the teacher's surest 20%)",
        "(bench probe)", False,
        [{"seed": 0, **scores(predictions, test_labels, space.class_names), "seconds": time.perf_counter() - started}])
    return rows


@torch.no_grad()
def mahalanobis_fit(features: torch.Tensor, probs: torch.Tensor, share: float = 0.2,
                    shrink: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means over the ``share`` of each predicted class the teacher is surest of, and the precision of
    their tied covariance (shrunk towards its mean variance): Lee et al.'s detector (NeurIPS 2018), no labels."""
    f, (confidence, hard) = features.double(), probs.max(dim=-1)
    means, residuals = [], []
    for c in range(probs.shape[1]):
        rows = (hard == c).nonzero().squeeze(1)
        rows = rows[confidence[rows].argsort(descending=True)[: max(1, int(share * len(rows)))]]
        means.append(f[rows].mean(0) if len(rows) else f.mean(0))
        residuals.append(f[rows] - means[-1])
    r = torch.cat(residuals)
    covariance = r.T @ r / len(r)
    covariance += shrink * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=covariance.dtype)
    return torch.stack(means), torch.linalg.inv(covariance)


@torch.no_grad()
def mahalanobis_score(features: torch.Tensor, fit: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Minus the squared Mahalanobis distance to the nearest class mean (higher: more like the teacher's own)."""
    means, precision = fit
    diff = features.double()[:, None, :] - means[None]
    return -torch.einsum("ncd,de,nce->nc", diff, precision, diff).amin(dim=-1).float()


def hardest_classes(runs: Sequence[dict], count: int = 3) -> str:
    """The ``count`` classes the rows' targets get most wrong, with their mean accuracy over the runs."""
    if not all("per_class" in run for run in runs):
        return "—"
    names = runs[0]["per_class"]
    mean = {name: statistics.fmean(run["per_class"][name] for run in runs) for name in names}
    return ", ".join(f"{name} {value:.2f}" for name, value in sorted(mean.items(), key=lambda kv: kv[1])[:count])


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
        ("| variant | method | labels | accuracy of the combined target (mean ± std) | its 3 worst classes "
         "| seconds to fit |"),
        "|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        values = [r["accuracy"] for r in row["runs"]]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        seconds = statistics.median(r["seconds"] for r in row["runs"])
        labels = row.get("labels") or (f"{results['labeled_fraction']:.0%}" if row["uses_labels"] else "none")
        lines.append(f"| {row['label']} | `{row['method']}` | {labels} | {statistics.fmean(values):.4f} ± {std:.4f} "
                     f"| {hardest_classes(row['runs'])} | {seconds:.1f} |")
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
