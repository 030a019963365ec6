"""Sequence benchmark: the SKA paper's own protocol (LSTM teachers, a UCR set, 2% labels) on amalgam's engine.

    python -m bench.sequence --dataset JapaneseVowels --seeds 3   # about 3 minutes on 2 CPU cores
    python -m bench.sequence --dataset OSULeaf --seeds 3

Two LSTM teachers, trained once (cached under ``$AMALGAM_HOME/sequence-teachers/``) on overlapping class
subsets of the UCR train split; a student LSTM on the union, trained on the whole train split as the unlabeled
transfer set with 2% of its labels (at least one per class: UCR train splits are small). Rows as in
``bench.quality``: the supervised ceiling (all labels) and floor (the 2% alone), ``concat-logits``,
``selective-learning``, ``soft-targets`` and ``trust-learner`` (SKA's TTL), every one with the same student and
budget. Needs the UCR files: ``pip install "amalgam[sequences]"`` or ``$AMALGAM_UCR_DIR`` (see
``amalgam.sequences.ucr``). Writes ``bench/results/sequence-<dataset>.md``, ``.json``, ``.png`` and
``-confusion.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

from amalgam.engine import TrainConfig
from amalgam.sequences import SequenceSetting, default_rows, load_ucr, run_protocol
from bench.quality import RESULTS, _bar_plot, _confusion_plot, _mean_std, table

PAPER_CLAIM = "TTL well ahead of all alternatives (about +15% accuracy on average with 2% labels)"


def verdict(results: dict) -> str:
    """Whether trust-learner leads the other 2%-label rows here, as the paper reports, in one sentence."""
    means = {row["label"]: _mean_std([r["accuracy"] for r in row["runs"]]) for row in results["rows"]
             if row["labeled_fraction"] < 1.0}
    if "trust-learner" not in means:
        return "trust-learner was not run."
    ttl, ttl_std = means.pop("trust-learner")
    best_label, (best, best_std) = max(means.items(), key=lambda item: item[1][0])
    gap = ttl - best
    if gap > ttl_std + best_std:
        how = f"yes: trust-learner leads, {gap:+.4f} over the best other row ({best_label}, {best:.4f})"
    elif gap > 0:
        how = (f"not clearly: trust-learner is ahead of the best other row ({best_label}, {best:.4f}) by "
               f"{gap:+.4f}, within the seeds' spread")
    else:
        how = (f"no: trust-learner ({ttl:.4f} ± {ttl_std:.4f}) is behind {best_label} ({best:.4f} ± {best_std:.4f}) "
               f"by {-gap:.4f}")
    return f"The paper reports {PAPER_CLAIM}. Do we see the same? {how}."


def reading(results: dict) -> str:
    """Where the trust-learner's gap comes from: its combined target against the other methods' targets."""
    targets = {row["label"]: statistics.fmean(r["target_accuracy"] for r in row["runs"]) for row in results["rows"]
               if row["runs"] and row["runs"][0].get("target_accuracy") is not None}
    if "trust-learner" not in targets:
        return ""
    others = ", ".join(f"{label} {value:.4f}" for label, value in targets.items() if label != "trust-learner")
    labeled = max(r["labeled_samples"] for row in results["rows"] if row["label"] == "trust-learner"
                  for r in row["runs"])
    per_seed = ", ".join(f"{r['target_accuracy']:.4f}" for row in results["rows"] if row["label"] == "trust-learner"
                         for r in row["runs"])
    return (
        f"Reading: the targets the student learns (teachers combined by each method, argmax on the test split) "
        f"are right for trust-learner {targets['trust-learner']:.4f} of the time (per seed {per_seed}), for the "
        f"others {others}. Trust-learner's trust model is fitted on the labeled series alone ({labeled} for "
        f"{len(results['class_names'])} classes), "
        "on the teachers' outputs (the method's default) or, in the paper's own form, on the series (an LSTM: "
        "`trust_input=\"input\"`); with one label per class either trust model has too little to learn from, "
        "and which series are labeled moves it by many points between seeds.\n"
    )


def write_report(results: dict, command: str, out: Path = RESULTS) -> Path:
    """The table with the setting's description and the verdict (``.md``), the numbers (``.json``), the plots."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / results["setting"]
    budget, data = results["budget"], results["data"]
    teachers = "; ".join(f"{t['name']} ({t['architecture']}, classes {', '.join(t['classes'])})"
                         for t in results["teachers"])
    labels = sorted({r["labeled_samples"] for row in results["rows"] if row["labeled_fraction"] < 1
                     for r in row["runs"]})
    header = (
        f"# Sequences: {results['dataset']} (UCR), the SKA paper's protocol\n\n"
        f"Data: the UCR train split ({data['train']} series, length {data['length']}, {data['channels']} "
        f"channel(s)) is the transfer set, the test split ({data['test']} series) measures every row; "
        f"{len(results['class_names'])} classes, majority-class accuracy {results['chance']:.4f}.\n"
        f"Teachers (trained once on their classes of the train split, {results['teacher_training']['epochs']} "
        f"epochs): {teachers}; shared classes {sorted(results['overlaps'])}.\n"
        f"Labels: {results['labeled_fraction']:.0%} of the train split, stratified, at least one per class "
        f"(max(2%, 1 per class)): {', '.join(map(str, labels))} labeled series per seed.\n"
        f"Student `{results['student']}`, {budget['epochs']} epochs, batch {budget['batch_size']}, lr {budget['lr']} "
        f"({budget['optimizer']}) for every row; every method with its registry defaults "
        f"(trust-learner: trust model on the teachers' outputs).\n"
        f"Total wall time {results['wall_seconds'] / 60:.1f} min on {results['machine']}.\n"
        f"Regenerate: `{command}`.\n\n"
    )
    body = table(results).replace("| wall time per run (s) |", "| wall time per run (s, median) |")
    plots = f"![bars]({stem.name}.png)\n![confusion]({stem.name}-confusion.png)\n"
    note = f"\n\n**{verdict(results)}**\n\n{reading(results)}\n{plots}"
    stem.with_suffix(".md").write_text(header + body + note)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    _bar_plot(results, stem.with_suffix(".png"))
    _confusion_plot(results, stem.parent / f"{stem.name}-confusion.png")
    return stem.with_suffix(".md")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="JapaneseVowels", help="a UCR set whose .ts files are available")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40, help="the student's epochs (every row alike)")
    parser.add_argument("--teacher-epochs", type=int, default=60)
    parser.add_argument("--student", choices=("lstm", "conv"), default="lstm")
    parser.add_argument("--methods", help="comma-separated method names (default: the four of the comparison)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = load_ucr(args.dataset)
    student = {"kind": "lstm", "hidden": 32, "layers": 2} if args.student == "lstm" else {"kind": "conv", "width": 32}
    setting = SequenceSetting.for_dataset(args.dataset, data, teacher_epochs=args.teacher_epochs,
                                          student_model=student,
                                          budget=TrainConfig(epochs=args.epochs, batch_size=16, lr=3e-3))
    rows = default_rows(setting.labeled_fraction, args.methods.split(",") if args.methods else None)

    def report(row, run: dict) -> None:
        print(f"{row.label:<24} seed {run['seed']}  accuracy {run['accuracy']:.4f}  ({run['seconds']:.0f} s)",
              flush=True)

    results = run_protocol(setting, seeds=range(args.seeds), rows=rows, data=data, on_run=report)
    results["wall_seconds"] = time.perf_counter() - started
    results["machine"] = f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    command = "python -m bench.sequence " + " ".join(argv if argv is not None else sys.argv[1:])
    path = write_report(results, command.strip(), args.out)
    print(table(results))
    print(f"\n{verdict(results)}\nwritten: {path}")


if __name__ == "__main__":
    main()
