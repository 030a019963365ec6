"""What the app shows of a run: progress, curves, the results table, per-class accuracy, the confusion matrix."""

from __future__ import annotations

import html
import json
from typing import Any, Mapping, Sequence

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from amalgam.api import result_rows
from amalgam.app.runs import RunSummary
from amalgam.errors import MethodError
from amalgam.methods.registry import get_method, method_choices, method_options
from amalgam.teachers.label_space import normalize_class_name

PER_CLASS_COLUMNS = ["class", "student accuracy", "best teacher accuracy", "known by"]
RESULT_COLUMNS = ["model", "evaluated on", "score"]
STUDENT_ROW_STYLE = "background-color: #ffedd5; font-weight: bold"
UNSURE_BELOW = 0.5  # a top class under this probability: the image may be unlike the student's training data
NO_LABELS_GAP = "n/a (no labels)"  # a label-free run's gaps: its agreement is not an accuracy
RUN_COLUMNS = ["run", "date", "method", "data", "teachers", "labels used", "student", "vs teachers' mean",
               "vs oracle", "status"]


def method_markdown(name: str) -> str:
    """A method's one-line summary, its paper, and the allowed values of its options that take one of a few.

    >>> print(method_markdown("supervised"))
    **supervised**: Train the student on the labeled fraction only (a reference, not amalgamation).
    <BLANKLINE>
    *Paper:* Reference: no teachers, labels only
    >>> method_markdown("teacher-switching").splitlines()[-1]
    '*Allowed values:* `target`: soft | hard; `consistency_prior`: target | none; `order`: round-robin | random'
    """
    cls = get_method(name)
    text = f"**{name}**: {cls.summary}\n\n*Paper:* {cls.paper or '—'}"
    choices = method_choices(name)
    if choices:
        text += "\n\n*Allowed values:* " + "; ".join(f"`{k}`: {' | '.join(map(str, v))}" for k, v in choices.items())
    return text


def method_options_json(name: str) -> str:
    """A method's options with their defaults, as editable JSON.

    >>> method_options_json("supervised")
    '{}'
    """
    return json.dumps(method_options(name), indent=2)


def parse_method_options(text: str | None) -> dict[str, Any]:
    """The options the user typed (a JSON object; empty means the defaults).

    >>> parse_method_options('{"temperature": 2}')
    {'temperature': 2}
    >>> parse_method_options("[1]")
    Traceback (most recent call last):
    ...
    amalgam.errors.MethodError: the method options must be a JSON object such as {"temperature": 4.0}, got a list
    """
    if not text or not text.strip():
        return {}
    try:
        options = json.loads(text)
    except ValueError as err:
        raise MethodError(f"the method options are not valid JSON: {err}") from None
    if not isinstance(options, dict):
        raise MethodError('the method options must be a JSON object such as {"temperature": 4.0}, got a '
                          f"{type(options).__name__}")
    return options


def answer_markdown(name: str, probability: float) -> str:
    """What the student says of an image, and, when its top class is under :data:`UNSURE_BELOW`, that it is
    unsure: a photo unlike its training data (a cat for a digit student) gets a top class all the same.

    >>> answer_markdown("3", 0.97)
    'The student says **3**.'
    >>> answer_markdown("0", 0.34).split(": ")[0]
    'The student says **0**. It is unsure (34% for its top class)'
    """
    text = f"The student says **{name}**."
    if probability < UNSURE_BELOW:
        text += (f" It is unsure ({probability:.0%} for its top class): the image may be unlike the images it was "
                 "trained on (another kind of picture, or none of its classes).")
    return text


def progress_html(fraction: float, text: str) -> str:
    """A progress bar with a caption, styled inline so that it needs no stylesheet.

    >>> "width: 50%" in progress_html(0.5, "epoch 1/2")
    True
    """
    percent = round(100 * min(max(fraction, 0.0), 1.0))
    return (f'<div role="progressbar" aria-valuenow="{percent}" aria-valuemin="0" aria-valuemax="100" '
            'style="background: #e5e7eb; border-radius: 6px; height: 14px; overflow: hidden;">'
            f'<div style="width: {percent}%; height: 100%; background: #f97316;"></div></div>'
            f'<p style="margin: 4px 0 0 0;">{percent}% · {html.escape(text, quote=False)}</p>')


def _epoch_axes(axes: Axes, ylabel: str) -> Axes:
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers, never 1.2 or 1.4
    axes.grid(alpha=0.3)
    return axes


def loss_figure(history: Sequence[Mapping[str, Any]]) -> Figure:
    """The training loss per epoch: the total (thick) and each term it sums (thin), every epoch a marker, so
    that a one-epoch run shows its point too.

    >>> figure = loss_figure([{"epoch": 1, "loss": 0.9, "soft": 0.5, "hard": 0.4, "loss_terms": ["hard", "soft"]}])
    >>> [line.get_label() for line in figure.axes[0].get_lines()]
    ['total', 'hard', 'soft']
    """
    figure = Figure(figsize=(5.5, 3.2), layout="constrained")
    axes = _epoch_axes(figure.add_subplot(), "training loss (mean per batch)")
    epochs = [record["epoch"] for record in history]
    axes.plot(epochs, [record["loss"] for record in history], marker="o", linewidth=2.2, label="total")
    terms = history[-1].get("loss_terms", []) if history else []
    for term in terms if len(terms) > 1 else []:  # one term is the total itself
        axes.plot(epochs, [record.get(term) for record in history], marker=".", linewidth=1, label=term)
    if history:
        axes.legend(fontsize=8)
    axes.set_title("training loss")
    return figure


def accuracy_figure(history: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any] | None = None) -> Figure:
    """The student's test accuracy per epoch, with the teachers' references of a finished run (``metrics``) as
    dashed lines: the teachers together (their mean) and the teacher oracle.

    >>> figure = accuracy_figure([{"epoch": 1, "test_accuracy": 0.8}], {"ensemble": {"accuracy": 0.85},
    ...                          "oracle": {"accuracy": 0.95}})
    >>> [line.get_label() for line in figure.axes[0].get_lines()]
    ['student', 'teachers together (mean) 0.850', 'teacher oracle 0.950']
    """
    figure = Figure(figsize=(5.5, 3.2), layout="constrained")
    axes = _epoch_axes(figure.add_subplot(), "test accuracy")
    measured = [record for record in history if record.get("test_accuracy") is not None]
    axes.plot([r["epoch"] for r in measured], [r["test_accuracy"] for r in measured], marker="o", linewidth=2.2,
              label="student")
    if measured:
        last = measured[-1]
        axes.annotate(f"{last['test_accuracy']:.3f}", (last["epoch"], last["test_accuracy"]),
                      textcoords="offset points", xytext=(4, -12), fontsize=8)
    references = (("ensemble", "teachers together (mean)", "#6b7280"), ("oracle", "teacher oracle", "#16a34a"))
    for key, name, color in references:
        value = (metrics or {}).get(key, {}).get("accuracy")
        if value is not None:
            axes.axhline(value, linestyle="--", color=color, linewidth=1.2, label=f"{name} {value:.3f}")
    axes.set_ylim(0, 1.02)
    if measured or metrics:
        axes.legend(fontsize=8, loc="lower right")
    axes.set_title("student test accuracy" if measured or not history else "no labeled test data: no accuracy")
    return figure


def results_frame(metrics: Mapping[str, Any]) -> Any:
    """The results table (:func:`~amalgam.api.result_rows`) as a styled frame, the student's row highlighted
    against the teachers' references.

    >>> metrics = {"teachers": {}, "test_samples": 4, "ensemble": {"accuracy": 0.5}, "concatenated":
    ...            {"accuracy": 0.25}, "oracle": {"accuracy": 0.75}, "student": {"architecture": "s", "accuracy": 1.0}}
    >>> results_frame(metrics).data["model"].tolist()[-1]
    'student s'
    """
    header, *rows = result_rows(metrics)
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS).rename(columns={"score": header[2]})

    def highlight(row: pd.Series) -> list[str]:
        return [STUDENT_ROW_STYLE if str(row.iloc[0]).startswith("student") else ""] * len(row)

    return frame.style.apply(highlight, axis=1)


def results_markdown(description: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """A finished run in Markdown: teachers, data (with the labels it used), method and paper, student."""
    teachers = ", ".join(f"`{t['name']}` ({t['library']} {t['architecture']})" for t in description["teachers"])
    data = description["data"]
    method = description["method"]
    options = ", ".join(f"{k}={v!r}" for k, v in method.get("options", {}).items()) or "defaults"
    return (
        f"**Teachers:** {teachers}  \n"
        f"**Data:** `{data['name']}`, {data['transfer_samples']} transfer images of which {data['labeled_samples']} "
        f"labeled ({_labels_used(data)} of the labels used), {data['test_samples']} test images  \n"
        f"**Method:** `{method['name']}` ({options}); {method.get('paper') or 'no paper'}  \n"
        f"**Student:** `{metrics['student']['architecture']}`, {metrics['student']['parameters']:,} parameters, "
        f"{len(metrics.get('history', []))} epochs in {metrics.get('seconds', 0):.0f} s"
    )


def _labels_used(data: Mapping[str, Any]) -> str:
    fraction = float(data.get("labeled_fraction") or 0.0)
    return f"{fraction:.0%}" if fraction else "none"


def per_class_frame(description: Mapping[str, Any], metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The student's accuracy on each union class beside the best accuracy of a teacher that knows the class
    (runs measured before teachers' per-class accuracy was kept show none), and the teachers that know it.

    >>> description = {"teachers": [{"name": "a", "classes": ["0", "1"]}, {"name": "b", "classes": ["1"]}]}
    >>> per_class_frame(description, {"student": {"per_class": {"0": 1.0, "1": 0.5}},
    ...                 "teachers": {"a": {"per_class": {"0": 0.9, "1": 0.6}}, "b": {"per_class": {"1": 0.7}}}})
      class  student accuracy  best teacher accuracy known by
    0     0               1.0                    0.9        a
    1     1               0.5                    0.7     a, b
    """
    rows = []
    teacher_metrics = metrics.get("teachers", {})
    for name, accuracy in metrics["student"]["per_class"].items():
        key = normalize_class_name(name)
        owners = [t["name"] for t in description["teachers"] if key in map(normalize_class_name, t["classes"])]
        known = [teacher_metrics.get(owner, {}).get("per_class", {}).get(name) for owner in owners]
        known = [value for value in known if value is not None]
        rows.append({"class": name, "student accuracy": round(float(accuracy), 4),
                     "best teacher accuracy": round(max(known), 4) if known else None, "known by": ", ".join(owners)})
    return pd.DataFrame(rows, columns=PER_CLASS_COLUMNS)


def confusion_figure(metrics: Mapping[str, Any], class_names: Sequence[str]) -> Figure:
    """The student's confusion matrix on the test set (rows: true class, columns: predicted), counts in cells."""
    matrix = metrics["student"]["confusion"]
    n = len(class_names)
    side = min(8.0, 1.2 + 0.45 * n)
    figure = Figure(figsize=(side, side), layout="constrained")  # no pyplot: safe from several threads
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(n), labels=class_names, rotation=45 if n > 10 else 0)
    axes.set_yticks(range(n), labels=class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    peak = max((max(row) for row in matrix), default=0) or 1
    if n <= 20:  # counts stay readable up to about 20 classes
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if count:
                    axes.text(j, i, str(count), ha="center", va="center", fontsize=8,
                              color="white" if count > peak / 2 else "black")
    axes.set_title("student confusion matrix (test set)")
    return figure


def runs_frame(summaries: Sequence[RunSummary]) -> pd.DataFrame:
    """One row per saved run: what it used, the student's score, and its gap to the teachers' mean and to the
    oracle (positive: the student is better).

    >>> from pathlib import Path
    >>> run = RunSummary("r1", Path("runs/r1"), "2026-12-01T10:00:00+00:00", "soft-targets", "digits", ("a", "b"),
    ...                  0.9, labeled_fraction=0.02, ensemble=0.85, oracle=0.95)
    >>> row = runs_frame([run]).to_dict("records")[0]
    >>> row["date"], row["teachers"], row["labels used"], row["status"]
    ('2026-12-01 10:00', 'a + b', '2%', 'finished')
    >>> [float(row[key]) for key in ("student", "vs teachers' mean", "vs oracle")]
    [0.9, 0.05, -0.05]

    A run measured without labels has no accuracy to set against the teachers', and says so:

    >>> unlabeled = RunSummary("r2", Path("runs/r2"), "2026-12-01T11:00:00+00:00", "confidence-trust", "photos",
    ...                        ("a", "b"), 0.8, measure="agreement with its target (no labels)")
    >>> row = runs_frame([unlabeled]).to_dict("records")[0]
    >>> row["vs oracle"], row["status"]
    ('n/a (no labels)', 'finished, agreement with its target (no labels)')
    """
    def gap(summary: RunSummary, reference: float | None) -> float | str | None:
        if summary.finished and summary.measure != "accuracy":
            return NO_LABELS_GAP
        both = summary.accuracy is not None and reference is not None
        return round(summary.accuracy - reference, 4) if both else None

    rows = [{
        "run": s.run_id, "date": s.created[:16].replace("T", " "), "method": s.method, "data": s.data,
        "teachers": " + ".join(s.teachers),
        "labels used": f"{s.labeled_fraction:.0%}" if s.labeled_fraction else "none",
        "student": round(s.accuracy, 4) if s.accuracy is not None else None,
        "vs teachers' mean": gap(s, s.ensemble), "vs oracle": gap(s, s.oracle),
        "status": ("finished" if s.measure == "accuracy" else f"finished, {s.measure}") if s.finished
        else (s.outcome or "unfinished"),
    } for s in summaries]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def compare_figure(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """The test accuracy and training loss curves of several runs overlaid (run id -> its per-epoch history).

    >>> figure = compare_figure({"a": [{"epoch": 1, "loss": 1.0, "test_accuracy": 0.5}],
    ...                          "b": [{"epoch": 1, "loss": 0.8, "test_accuracy": 0.6}]})
    >>> [line.get_label() for line in figure.axes[0].get_lines()]
    ['a', 'b']
    """
    figure = Figure(figsize=(11, 3.4), layout="constrained")
    accuracy, loss = figure.subplots(1, 2)
    for axes, key, title in ((accuracy, "test_accuracy", "student test accuracy"), (loss, "loss", "training loss")):
        for run_id, history in histories.items():
            points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
            axes.plot([e for e, _ in points], [v for _, v in points], marker="o", label=run_id)
        _epoch_axes(axes, title).set_title(title)
    accuracy.set_ylim(0, 1.02)
    if histories:
        accuracy.legend(fontsize=7, loc="lower right")
    return figure
