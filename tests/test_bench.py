"""The quality benchmark's harness, wired right: on digits at tiny size, more labels must give a better student."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import merge_rows, rows_for, run_setting, write_report  # noqa: E402
from bench.settings import SETTINGS  # noqa: E402


def test_rows_follow_the_registry():
    labels = [row.label for row in rows_for()]
    assert labels[:2] == ["supervised, all labels", "supervised, 2% labels"]
    assert {"soft-targets", "concat-logits"} <= set(labels) and labels.count("supervised") == 0


def test_digits_smoke_supervised_ceiling_beats_the_two_percent_floor(tmp_path):
    results = run_setting(SETTINGS["digits-split"], seeds=[0], epochs=3, methods=["soft-targets"], progress=False)
    accuracy = {row["label"]: row["runs"][0]["accuracy"] for row in results["rows"]}
    assert accuracy["supervised, all labels"] > accuracy["supervised, 2% labels"] + 0.1
    assert results["teacher_metrics"]["oracle"]["accuracy"] > 0.9
    report = write_report(results, tmp_path)
    text = report.read_text()
    assert "| soft-targets | method | 2% |" in text and "teacher oracle" in text
    assert report.name == "quality-digits-split-3ep.md"  # another budget than the setting's: a table of its own
    assert report.with_suffix(".png").stat().st_size > 1000
    assert (tmp_path / "quality-digits-split-3ep-confusion.png").stat().st_size > 1000


def test_merging_other_seeds_keeps_a_rows_earlier_runs_and_replaces_rerun_seeds():
    def oracle(accuracy: float) -> dict:
        return {"oracle": {"accuracy": accuracy}}

    def results(rows: dict[str, list[tuple[int, float]]]) -> dict:
        return {"setting": "s", "budget": {"epochs": 3}, "teacher_metrics": oracle(0.9), "rows": [
            {"label": label, "runs": [{"seed": seed, "accuracy": acc} for seed, acc in runs]}
            for label, runs in rows.items()]}

    before = results({"a": [(0, 0.5)], "b": [(0, 0.6), (1, 0.7)]})
    after = merge_rows(before, results({"b": [(1, 0.8), (2, 0.9)], "c": [(0, 0.1)]}))
    runs = {row["label"]: [(run["seed"], run["accuracy"]) for run in row["runs"]] for row in after["rows"]}
    assert runs == {"a": [(0, 0.5)], "b": [(0, 0.6), (1, 0.8), (2, 0.9)], "c": [(0, 0.1)]}
    with pytest.raises(SystemExit, match="oracle 0.9000 there, 0.8000 now"):  # rows of other teachers
        merge_rows(before, results({"c": [(0, 0.1)]}) | {"teacher_metrics": oracle(0.8)})
    # the same teachers, measured by code that adds their per-class accuracy: the rows still compare
    def teacher(accuracy: float, **per_class: float) -> dict:
        numbers = {"accuracy_on_own_classes": accuracy} | ({"per_class": per_class} if per_class else {})
        return results({"a": [(0, 0.5)]}) | {"teacher_metrics": oracle(0.9) | {"teachers": {"t": numbers}}}

    assert merge_rows(teacher(0.9), teacher(0.9, x=0.9))["rows"][0]["label"] == "a"
    with pytest.raises(SystemExit):
        merge_rows(teacher(0.9), teacher(0.8))
