"""Quality benchmark: every registered method beside the references, same teachers, student, data and budget.

    python -m bench.quality --setting digits-split            # about a minute
    python -m bench.quality --setting fmnist-split --seeds 3  # the main table
    python -m bench.quality --setting fmnist-split --join run-a run-b  # rows run in several --out folders

Rows: the student trained with all labels (the ceiling for this student and budget) and with only the 2%
labels; every method in the registry (so a new method appears here by registering); and, from the teachers
alone, the oracle (each test image sent to a teacher that knows its class), the teachers' concatenated logits
as one classifier, and their mean probabilities. "Its target's accuracy" is how often the teachers combined
by the method (the target the student learns) get the test image right: the ceiling the method aims at. Writes ``bench/results/quality-<setting>.md`` (the table),
``.json`` (all numbers, per-class accuracy and confusion matrices), ``.png`` (bar plot) and
``-confusion.png`` (the student's confusion matrix for each trained row, seed 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from amalgam import amalgamate, load_teacher
from amalgam.methods import available_methods, create_method
from amalgam.teachers import LabelSpace
from amalgam.zoo import build_demo_zoo
from bench.settings import LABELED_FRACTION, SETTINGS, STUDENT, Setting

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Row:
    label: str
    method: str
    labeled_fraction: float
    reference: bool
    options: tuple[tuple[str, Any], ...] = ()  # method options other than the defaults
    augment: str = ""  # consistent augmentation (amalgam.data.augment), "" for none


def rows_for(methods: Sequence[str] | None = None, references: bool = True,
             options: dict[str, Any] | None = None, teachers: Sequence | None = None, augment: str = "") -> list[Row]:
    """The references, then every registered amalgamation method (or those named), at the 2% labeled fraction;
    with ``options``, the named methods with those options, labelled ``method (key=value, ...)``. A method made
    for runs without labels (``needs().label_free``, asked of it built on ``teachers``, default the digits demo
    zoo) gets none."""
    pct = f"{LABELED_FRACTION:.0%}"
    rows = [
        Row("supervised, all labels", "supervised", 1.0, True),
        Row(f"supervised, {pct} labels", "supervised", LABELED_FRACTION, True),
    ] if references else []
    registry = available_methods()
    names = [n for n in registry if n != "supervised"] if methods is None else list(methods)
    # a method made for runs without labels gets none, so its row shows what a user with no labels gets
    suffix = " (" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")" if options else ""
    teachers = list(teachers) if teachers is not None else [load_teacher(f) for f in build_demo_zoo(progress=False)]
    space = LabelSpace.union([t.class_names for t in teachers])

    def label_free(name: str) -> bool:
        return create_method(name, space, teachers, dict(options or {})).needs().label_free

    rows += [Row(name + suffix, name, 0.0 if label_free(name) else LABELED_FRACTION,
                 name == "concat-logits", tuple((options or {}).items())) for name in names]
    if not augment:
        return rows
    return [dataclasses.replace(row, label=f"{row.label} + augment {augment}", augment=augment) for row in rows]


def run_setting(setting: Setting, seeds: Sequence[int], epochs: int | None = None,
                methods: Sequence[str] | None = None, progress: bool = True, references: bool = True,
                options: dict[str, Any] | None = None, augment: str = "",
                on_run: Callable[[dict], None] | None = None) -> dict:
    """Train every row for every seed; return all numbers. ``on_run`` gets the numbers so far (the rows with at
    least one finished run) after each run, so an interrupted benchmark keeps what it measured."""
    teachers = [load_teacher(folder) for folder in setting.teacher_folders(progress=progress)]
    data = setting.data()
    budget = setting.budget
    epochs = epochs or budget.epochs
    rows = rows_for(methods, references, options, teachers, augment)
    runs: dict[str, list[dict]] = {row.label: [] for row in rows}
    teacher_metrics = None
    jobs = [(row, seed) for row in rows for seed in seeds]
    for row, seed in tqdm(jobs, desc=setting.name, disable=not progress, unit="run"):
        started = time.perf_counter()
        result = amalgamate(teachers, student=STUDENT, data=data, method=row.method, method_options=dict(row.options),
                            labeled_fraction=row.labeled_fraction, epochs=epochs, batch_size=budget.batch_size,
                            lr=budget.lr, seed=seed, augment=row.augment, progress=False)
        metrics = result.metrics
        teacher_metrics = teacher_metrics or {k: metrics[k] for k in ("teachers", "ensemble", "oracle", "concatenated")}
        runs[row.label].append({
            "seed": seed, "accuracy": metrics["student"]["accuracy"], "seconds": time.perf_counter() - started,
            "per_class": metrics["student"]["per_class"], "confusion": metrics["student"]["confusion"],
            "target_accuracy": metrics.get("method_target", {}).get("accuracy"),
        })
        if progress:
            tqdm.write(f"{row.label:<28} seed {seed}  accuracy {metrics['student']['accuracy']:.4f}")
        if on_run is not None:
            on_run(_numbers(setting, epochs, teachers, result, teacher_metrics, rows, runs))
    return _numbers(setting, epochs, teachers, result, teacher_metrics, rows, runs)


def _numbers(setting: Setting, epochs: int, teachers: Sequence, result: Any, teacher_metrics: dict,
             rows: Sequence[Row], runs: dict[str, list[dict]]) -> dict:
    budget = setting.budget
    return {
        "setting": setting.name,
        "student": STUDENT,
        "budget": {"epochs": epochs, "batch_size": budget.batch_size, "lr": budget.lr, "optimizer": "AdamW, cosine"},
        "labeled_fraction": LABELED_FRACTION,
        "class_names": list(result.label_space.class_names),
        "teachers": [t.describe() | {"parameters": t.num_parameters} for t in teachers],
        "teacher_metrics": teacher_metrics,
        "rows": [{"label": r.label, "method": r.method, "options": dict(r.options), "augment": r.augment,
                  "labeled_fraction": r.labeled_fraction, "reference": r.reference, "runs": runs[r.label]}
                 for r in rows if runs[r.label]],
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict) -> str:
    """The markdown table of a :func:`run_setting` result."""
    seeds = max(len(row["runs"]) for row in results["rows"])  # a row run with fewer seeds says so
    lines = [
        f"| row | kind | labels the student saw | accuracy (mean ± std, {seeds} seeds) | its target's accuracy "
        "| wall time per run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        mean, std = _mean_std([r["accuracy"] for r in row["runs"]])
        seconds = statistics.median(r["seconds"] for r in row["runs"])
        kind = "reference" if row["reference"] else "method"
        labels = {1.0: "all", 0.0: "none"}.get(row["labeled_fraction"], f"{row['labeled_fraction']:.0%}")
        targets = [r["target_accuracy"] for r in row["runs"] if r.get("target_accuracy") is not None]
        target = f"{statistics.fmean(targets):.4f}" if targets else "—"
        count = "" if len(row["runs"]) == seeds else f" ({len(row['runs'])} seed{'s' if len(row['runs']) > 1 else ''})"
        lines.append(f"| {row['label']} | {kind} | {labels} | {mean:.4f} ± {std:.4f}{count} | {target} "
                     f"| {seconds:.0f} |")
    tm = results["teacher_metrics"]
    for label, value in (("teacher oracle", tm["oracle"]["accuracy"]),
                         ("teachers' concatenated logits (one classifier)", tm["concatenated"]["accuracy"]),
                         ("teachers' mean probabilities", tm["ensemble"]["accuracy"])):
        lines.append(f"| {label} | teachers | — | {value:.4f} | — | — |")
    for name, own in tm["teachers"].items():
        lines.append(f"| teacher {name}, on its own classes only | teachers | — | "
                     f"{own['accuracy_on_own_classes']:.4f} | — | — |")
    return "\n".join(lines)


def per_class_table(results: dict) -> str:
    """Each trained row's accuracy on each class (mean over its seeds), the hardest classes (by the rows' mean)
    first, so the table shows where the rows differ.

    >>> runs = lambda *accs: [{"per_class": {"a": x, "b": y}} for x, y in accs]  # noqa: E731
    >>> print(per_class_table({"class_names": ["a", "b"], "rows": [{"label": "r", "runs": runs((0.9, 0.5), (0.7, 0.3))}]}))
    | row | b | a |
    |---|---|---|
    | r | 0.400 | 0.800 |
    """
    rows = [row for row in results["rows"] if row["runs"] and "per_class" in row["runs"][0]]
    means = {row["label"]: {name: statistics.fmean(run["per_class"][name] for run in row["runs"])
                            for name in results["class_names"]} for row in rows}
    order = sorted(results["class_names"], key=lambda name: statistics.fmean(m[name] for m in means.values()))
    lines = ["| row | " + " | ".join(order) + " |", "|---" * (len(order) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(f"{m[name]:.3f}" for name in order) + " |" for label, m in means.items()]
    return "\n".join(lines)


def _bar_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, means, stds, colors = [], [], [], []
    for row in results["rows"]:
        mean, std = _mean_std([r["accuracy"] for r in row["runs"]])
        labels.append(row["label"]), means.append(mean), stds.append(std)
        colors.append("#9e9e9e" if row["reference"] else "#1f77b4")
    tm = results["teacher_metrics"]
    for label, key in (("teacher oracle", "oracle"), ("teachers concatenated", "concatenated")):
        labels.append(label), means.append(tm[key]["accuracy"]), stds.append(0.0), colors.append("#ffb74d")
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    ax.barh(labels[::-1], means[::-1], xerr=stds[::-1], color=colors[::-1])
    ax.set_xlim(0, 1)
    ax.set_xlabel("test accuracy over the union of the teachers' classes")
    ax.set_title(f"{results['setting']}: student {results['student']}, {results['budget']['epochs']} epochs")
    for y, m in enumerate(means[::-1]):
        ax.text(0.01, y, f"{m:.3f}", va="center", fontsize=8, color="white")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _confusion_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = results["rows"]
    names = results["class_names"]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.6), squeeze=False)
    for ax, row in zip(axes[0], rows):
        matrix = np.asarray(row["runs"][0]["confusion"], dtype=float)
        matrix /= matrix.sum(axis=1, keepdims=True).clip(min=1)
        ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
        ax.set_title(row["label"], fontsize=8)
        ax.set_xticks(range(len(names)), [n[:6] for n in names], rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), [n[:6] for n in names], fontsize=6)
        ax.set_xlabel("predicted", fontsize=7)
    axes[0][0].set_ylabel("true", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict, out: Path = RESULTS) -> Path:
    """Write the table, the numbers and the plots; return the markdown file."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / report_name(results["setting"], results["budget"]["epochs"])
    budget = results["budget"]
    teachers = ", ".join(f"{t['name']} ({t['library']} {t['architecture']}, {len(t['classes'])} classes)"
                         for t in results["teachers"])
    header = (
        f"# Quality: {results['setting']}\n\n"
        f"Student `{results['student']}`, {budget['epochs']} epochs, batch {budget['batch_size']}, lr {budget['lr']} "
        f"({budget['optimizer']}) for every row. Teachers: {teachers}. Accuracy on the whole test split.\n"
        f"Regenerate: `python -m bench.quality --setting {results['setting']}"
        f"{'' if stem.name == 'quality-' + results['setting'] else ' --epochs ' + str(budget['epochs'])}` "
        "(rows with `+ augment NAMES`: add `--augment NAMES --merge`).\n\n"
    )
    per_class = "\n\nAccuracy per class (mean over the seeds), hardest first:\n\n" + per_class_table(results)
    stem.with_suffix(".md").write_text(header + table(results) + per_class + f"\n\n![bars]({stem.name}.png)\n"
                                       f"![confusion]({stem.name}-confusion.png)\n")
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    _bar_plot(results, stem.with_suffix(".png"))
    _confusion_plot(results, stem.parent / f"{stem.name}-confusion.png")
    return stem.with_suffix(".md")


def report_name(setting: str, epochs: int) -> str:
    """``quality-<setting>`` at the setting's budget; ``quality-<setting>-<epochs>ep`` at another one."""
    return f"quality-{setting}" if epochs == SETTINGS[setting].budget.epochs else f"quality-{setting}-{epochs}ep"


def _scores(teacher_metrics: dict) -> dict:
    """The teachers' accuracies, without their per-class breakdown (which tables written before it lack)."""
    return {**teacher_metrics, "teachers": {name: {k: v for k, v in numbers.items() if k != "per_class"}
                                            for name, numbers in teacher_metrics.get("teachers", {}).items()}}


def merge_rows(previous: dict, new: dict) -> dict:
    """``previous`` with ``new``'s rows added; a row of the same label (same setting and budget) gets the new runs,
    which replace its runs of the same seeds and join those of other seeds."""
    if (previous["setting"], previous["budget"]) != (new["setting"], new["budget"]):
        raise SystemExit(f"--merge: {previous['setting']} {previous['budget']} was run with another setting or budget")
    if _scores(previous["teacher_metrics"]) != _scores(new["teacher_metrics"]):  # retrained: rows would not compare
        raise SystemExit("--merge: the teachers score otherwise than in the table merged into (teacher oracle "
                         f"{previous['teacher_metrics']['oracle']['accuracy']:.4f} there, "
                         f"{new['teacher_metrics']['oracle']['accuracy']:.4f} now): rerun the table's rows "
                         "or write to another --out")
    fresh = {row["label"]: row for row in new["rows"]}

    def merged(row: dict) -> dict:  # runs of other seeds are kept, so seeds can be run in separate sittings
        if row["label"] not in fresh:
            return row
        update = fresh.pop(row["label"])
        seeds = {run["seed"] for run in update["runs"]}
        kept = [run for run in row["runs"] if run["seed"] not in seeds]
        return {**update, "runs": sorted(kept + update["runs"], key=lambda run: run["seed"])}

    rows = [merged(row) for row in previous["rows"]] + list(fresh.values())
    return {**previous, "rows": rows}


def join_tables(name: str, folders: Sequence[Path], into: Path) -> dict:
    """The table ``name`` (``quality-<setting>[-<epochs>ep].json``) of ``into`` (when it exists) with those of
    ``folders`` merged in, in order: rows run by several processes or machines, each with its own ``--out``
    (two processes writing one table with ``--merge`` would overwrite each other's rows)."""
    missing = [str(folder) for folder in folders if not (folder / name).exists()]
    if missing:
        raise SystemExit(f"--join: no {name} in {', '.join(missing)} (the same --setting and --epochs as their runs?)")
    paths = ([into / name] if (into / name).exists() else []) + [folder / name for folder in folders]
    return functools.reduce(merge_rows, [json.loads(path.read_text()) for path in paths])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="digits-split")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="run seeds first-seed ... first-seed+seeds-1 (with --merge, to add seeds to rows)")
    parser.add_argument("--epochs", type=int, help="override the setting's budget (every row alike)")
    parser.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    parser.add_argument("--options", type=json.loads, help="JSON method options for the named methods' rows, e.g. "
                        "'{\"student_feedback\": 0.5}' (rows are labelled with them)")
    parser.add_argument("--merge", action="store_true",
                        help="add these rows to (or replace them in) the setting's existing results instead of "
                             "starting a new table (with --methods)")
    parser.add_argument("--augment", default="", metavar="NAMES",
                        help="consistent augmentation for every row (crop, flip, mixup, cutmix); the references "
                             "are run with it too, and rows are labelled '+ augment NAMES'")
    parser.add_argument("--references", action=argparse.BooleanOptionalAction,
                        help="run the supervised reference rows (default: yes, except with --merge without "
                             "--augment)")
    parser.add_argument("--join", nargs="+", type=Path, metavar="FOLDER",
                        help="train nothing: merge this setting's table (same --epochs) from each FOLDER, written "
                             "by its own process with its own --out, into --out's table")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    methods = args.methods.split(",") if args.methods else None
    if args.options and not methods:
        parser.error("--options needs --methods")
    epochs = args.epochs or SETTINGS[args.setting].budget.epochs
    previous = args.out / (report_name(args.setting, epochs) + ".json")
    before = json.loads(previous.read_text()) if args.merge and previous.exists() else None
    if args.join:
        path = write_report(join_tables(previous.name, args.join, args.out), args.out)
        print(f"joined {len(args.join)} tables into {path}")
        return

    def report(results: dict) -> Path:  # after every run: an interrupted benchmark keeps its finished rows
        return write_report(merge_rows(before, results) if before is not None else results, args.out)

    results = run_setting(SETTINGS[args.setting], seeds=range(args.first_seed, args.first_seed + args.seeds),
                          epochs=args.epochs, methods=methods,
                          references=args.references if args.references is not None else not args.merge or bool(args.augment),
                          options=args.options, augment=args.augment, on_run=report)
    if before is not None:
        print(f"merged rows {sorted(row['label'] for row in results['rows'])} into {previous}")
        results = merge_rows(before, results)
    path = write_report(results, args.out)
    print(table(results))
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
