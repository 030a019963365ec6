"""What ``feature-probe``'s class probe reads and how it is fitted, measured without training a student: the
accuracy on the test split of the probe's target under other inputs and fits.

    python -m bench.probe_inputs --setting fmnist-split

Rows, each fitted on the same stratified 2% of the train labels per seed and on every train label (the ceiling of
that probe on these teachers): the method's own inputs (each teacher's deepest suggested tap averaged over
positions, beside its probabilities); the two deepest taps; the deepest tap averaged over a 2 x 2 grid of
positions instead of all of them; the method's inputs plus the image itself (averaged down to 14 x 14); a
one-hidden-layer network (256 units, dropout 0.3) instead of the linear layer; and self-training, the linear
probe refitted three times on the labels plus the more confident half (per class) of its own predictions on the
unlabeled transfer set. Writes ``bench/results/probe-inputs-<setting>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from amalgam import load_teacher
from amalgam.data import RelabeledImages, stratified_indices
from amalgam.methods.features.layers import as_map
from amalgam.methods.features.probe import confident_half, fit_class_probe
from amalgam.pipeline import data_label_map
from amalgam.teachers import LabelSpace, Teacher
from bench.quality import RESULTS
from bench.settings import LABELED_FRACTION, SETTINGS
from bench.trust_choices import union_labels

Probe = Callable[[torch.Tensor], torch.Tensor]


def grid_pool(feature: torch.Tensor, size: int) -> torch.Tensor:
    """``B x (C * size * size)``: a feature map (or ViT tokens, as a grid) averaged over a ``size x size`` grid.

    >>> grid_pool(torch.arange(16.0).reshape(1, 1, 4, 4), 2).tolist()
    [[2.5, 4.5, 10.5, 12.5]]
    """
    return F.adaptive_avg_pool2d(as_map(feature.float()), size).flatten(1)


@torch.no_grad()
def teacher_views(teacher: Teacher, data: RelabeledImages) -> dict[str, torch.Tensor]:
    """What each row can read of one teacher: its probabilities, its two deepest taps averaged over positions,
    and its deepest tap over a 2 x 2 grid."""
    taps = teacher.tap_names()[-2:]
    parts: dict[str, list[torch.Tensor]] = {"probs": [], "deep": [], "second": [], "grid": []}
    for images, _ in DataLoader(data, batch_size=512):
        out = teacher(images, taps=taps)
        parts["probs"].append(out.logits.float().softmax(dim=-1))
        parts["deep"].append(grid_pool(out.features[taps[-1]], 1))
        parts["second"].append(grid_pool(out.features[taps[0]], 1))
        parts["grid"].append(grid_pool(out.features[taps[-1]], 2))
    return {k: torch.cat(v) for k, v in parts.items()}


@torch.no_grad()
def pixels(data: RelabeledImages) -> torch.Tensor:
    return torch.cat([F.adaptive_avg_pool2d(images.float(), 14).flatten(1) for images, _ in DataLoader(data, 512)])


# (label, the parts of each teacher read, the image too)
INPUTS: list[tuple[str, tuple[str, ...], bool]] = [
    ("deepest tap + probabilities (feature-probe's inputs)", ("deep", "probs"), False),
    ("two deepest taps + probabilities", ("second", "deep", "probs"), False),
    ("deepest tap on a 2 x 2 grid + probabilities", ("grid", "probs"), False),
    ("deepest tap + probabilities + the image (14 x 14)", ("deep", "probs"), True),
]


def linear_probe(x: torch.Tensor, y: torch.Tensor, classes: int) -> Probe:
    layer, mean, std = fit_class_probe(x, y, classes, generator=torch.Generator().manual_seed(0))
    return lambda z: layer((z - mean) / std)


def network_probe(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int = 600) -> Probe:
    """One hidden layer of 256 (GELU), dropout 0.3 on its input and hidden units, AdamW lr 3e-3 and weight decay
    0.01, batches of 256 drawn with replacement."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mean, std = x.mean(dim=0), x.std(dim=0) + 1e-6
    net = nn.Sequential(nn.Dropout(0.3), nn.Linear(x.shape[1], 256), nn.GELU(), nn.Dropout(0.3),
                        nn.Linear(256, classes))
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    standard = (x - mean) / std
    for _ in range(steps):
        rows = torch.randint(0, len(x), (256,), generator=generator)
        loss = F.cross_entropy(net(standard[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval().requires_grad_(False)
    return lambda z: net((z - mean) / std)


def self_trained_probe(x: torch.Tensor, y: torch.Tensor, classes: int, unlabeled: torch.Tensor,
                       rounds: int = 3) -> Probe:
    """The linear probe, refitted ``rounds`` times on the labels plus the surer half (per class) of its own
    predictions on ``unlabeled``."""
    probe = linear_probe(x, y, classes)
    for _ in range(rounds):
        with torch.no_grad():
            predicted = probe(unlabeled).softmax(dim=-1)
        keep = confident_half(predicted)
        probe = linear_probe(torch.cat([x, unlabeled[keep]]), torch.cat([y, predicted.argmax(-1)[keep]]), classes)
    return probe


def run(setting_name: str, seeds: Sequence[int], progress: bool = True) -> dict:
    setting = SETTINGS[setting_name]
    teachers = [load_teacher(folder) for folder in setting.teacher_folders(progress=progress)]
    data = setting.data()
    space = LabelSpace.union([t.class_names for t in teachers])
    label_map = data_label_map(data, space)
    transfer, test = RelabeledImages(data.train, label_map), RelabeledImages(data.test, label_map)
    train_views = [teacher_views(t, transfer) for t in tqdm(teachers, desc="teachers", disable=not progress)]
    test_views = [teacher_views(t, test) for t in teachers]
    train_pixels, test_pixels = pixels(transfer), pixels(test)
    train_labels, test_labels = union_labels(data.train_labels, label_map), union_labels(data.test_labels, label_map)
    known = (train_labels >= 0).nonzero().squeeze(1)

    def inputs(views, image, parts, with_image):
        return torch.cat([v[p] for v in views for p in parts] + ([image] if with_image else []), dim=1)

    def accuracy(probe: Probe, x: torch.Tensor) -> float:
        with torch.no_grad():
            return float((probe(x).argmax(-1) == test_labels).float().mean())

    fits = [(label, parts, with_image, fit) for label, parts, with_image in INPUTS for fit in ("linear",)]
    fits += [("deepest tap + probabilities, one hidden layer of 256", ("deep", "probs"), False, "network"),
             ("deepest tap + probabilities, self-trained (3 rounds on its surer half)", ("deep", "probs"), False,
              "self-trained")]
    rows = []
    for label, parts, with_image, fit in tqdm(fits, desc=setting_name, disable=not progress):
        x_train = inputs(train_views, train_pixels, parts, with_image)
        x_test = inputs(test_views, test_pixels, parts, with_image)
        runs = []
        for seed in seeds:
            visible = torch.as_tensor(stratified_indices(data.train_labels, LABELED_FRACTION, seed))
            visible = visible[train_labels[visible] >= 0]
            x, y = x_train[visible], train_labels[visible]
            probe = {"linear": lambda: linear_probe(x, y, space.num_classes),
                     "network": lambda: network_probe(x, y, space.num_classes),
                     "self-trained": lambda: self_trained_probe(x, y, space.num_classes, x_train)}[fit]()
            runs.append(accuracy(probe, x_test))
        every = None
        if fit != "self-trained":  # with every label there is nothing left to self-train on
            every = accuracy({"linear": linear_probe, "network": network_probe}[fit](
                x_train[known], train_labels[known], space.num_classes), x_test)
        rows.append({"label": label, "inputs": x_train.shape[1], "runs": runs, "every_label": every})
        if progress:
            tqdm.write(f"{label:<72} {statistics.fmean(runs):.4f}  every label: {every}")
    return {"setting": setting_name, "labeled_fraction": LABELED_FRACTION, "seeds": list(seeds), "rows": rows,
            "teachers": [t.name for t in teachers]}


def write_report(results: dict, out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"probe-inputs-{results['setting']}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    lines = [f"# feature-probe's target under other inputs and fits: {results['setting']}", "",
             f"Teachers: {', '.join(results['teachers'])}. Accuracy of the probe's argmax on the whole test split; "
             f"{results['labeled_fraction']:.0%} of the train labels ({len(results['seeds'])} seeds, mean ± std) "
             "and every train label.",
             f"Regenerate: `python -m bench.probe_inputs --setting {results['setting']}`.", "",
             "| probe | inputs per image | 2% of the labels | every label |", "|---|---|---|---|"]
    for row in results["rows"]:
        runs = row["runs"]
        spread = statistics.stdev(runs) if len(runs) > 1 else 0.0
        every = f"{row['every_label']:.4f}" if row["every_label"] is not None else "—"
        lines.append(f"| {row['label']} | {row['inputs']} | {statistics.fmean(runs):.4f} ± {spread:.4f} | {every} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".md")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="fmnist-split")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    print(write_report(run(args.setting, range(args.seeds)), args.out))


if __name__ == "__main__":
    main()
