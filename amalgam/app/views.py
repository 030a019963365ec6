"""What the app shows of a run: progress, curves, the results table, per-class accuracy, the confusion matrix."""

from __future__ import annotations

import html
import json
from typing import Any, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from amalgam.api import format_results
from amalgam.errors import MethodError
from amalgam.methods.registry import get_method, method_choices, method_options
from amalgam.teachers.label_space import normalize_class_name

CURVE_COLUMNS = ["epoch", "loss", "test_accuracy"]


def method_markdown(name: str) -> str:
    """A method's one-line summary, its paper, and the allowed values of its options that take one of a few.

    >>> print(method_markdown("supervised"))
    **supervised**: Train the student on the labeled fraction only (a reference, not amalgamation).
    <BLANKLINE>
    *Paper:* Reference: no teachers, labels only
    >>> method_markdown("teacher-switching").splitlines()[-1]
    '*Allowed values:* `target`: soft | hard; `order`: round-robin | random'
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


def curves_frame(history: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The per-epoch loss and test accuracy, one row per epoch (for the live line plots).

    >>> curves_frame([{"epoch": 1, "loss": 0.5, "test_accuracy": 0.9, "soft": 0.4}])
       epoch  loss  test_accuracy
    0      1   0.5            0.9
    """
    frame = pd.DataFrame([{key: record.get(key) for key in CURVE_COLUMNS} for record in history],
                         columns=CURVE_COLUMNS)
    return frame.astype({"epoch": int, "loss": float, "test_accuracy": float})  # numbers, not labels, in plots


def results_markdown(description: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """A finished run in Markdown: teachers, data, method and paper, and the results table."""
    teachers = ", ".join(f"`{t['name']}` ({t['library']} {t['architecture']})" for t in description["teachers"])
    data = description["data"]
    method = description["method"]
    options = ", ".join(f"{k}={v!r}" for k, v in method.get("options", {}).items()) or "defaults"
    return (
        f"**Teachers:** {teachers}  \n"
        f"**Data:** `{data['name']}`, {data['transfer_samples']} transfer images of which {data['labeled_samples']} "
        f"labeled, {data['test_samples']} test images  \n"
        f"**Method:** `{method['name']}` ({options}); {method.get('paper') or 'no paper'}  \n"
        f"**Student:** `{metrics['student']['architecture']}`, {metrics['student']['parameters']:,} parameters, "
        f"{len(metrics.get('history', []))} epochs in {metrics.get('seconds', 0):.0f} s\n\n"
        f"```\n{format_results(metrics)}\n```"
    )


def per_class_frame(description: Mapping[str, Any], metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The student's accuracy on each union class, with the teachers that know the class.

    >>> description = {"teachers": [{"name": "a", "classes": ["0", "1"]}, {"name": "b", "classes": ["1"]}]}
    >>> per_class_frame(description, {"student": {"per_class": {"0": 1.0, "1": 0.5}}})
      class  student accuracy known by
    0     0               1.0        a
    1     1               0.5     a, b
    """
    rows = []
    for name, accuracy in metrics["student"]["per_class"].items():
        key = normalize_class_name(name)
        owners = [t["name"] for t in description["teachers"] if key in map(normalize_class_name, t["classes"])]
        rows.append({"class": name, "student accuracy": round(float(accuracy), 4), "known by": ", ".join(owners)})
    return pd.DataFrame(rows, columns=["class", "student accuracy", "known by"])


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
