"""The quality benchmark's harness, wired right: on digits at tiny size, more labels must give a better student."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import join_tables, merge_rows, per_class_table, rows_for, run_setting, write_report  # noqa: E402
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
    assert "Accuracy per class" in text and "| soft-targets | " in text.split("Accuracy per class")[1]
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


def test_tables_run_in_separate_folders_join_into_one(tmp_path):
    def table(folder: str, rows: dict[str, list[int]]) -> Path:
        path = tmp_path / folder / "quality-s.json"
        path.parent.mkdir()
        runs = [{"label": label, "runs": [{"seed": seed} for seed in seeds]} for label, seeds in rows.items()]
        path.write_text(json.dumps({"setting": "s", "budget": {"epochs": 3}, "rows": runs,
                                    "teacher_metrics": {"oracle": {"accuracy": 0.9}}}))
        return path.parent

    into, a, b = table("into", {"x": [0]}), table("a", {"x": [1], "y": [0]}), table("b", {"y": [1, 2]})
    joined = join_tables("quality-s.json", [a, b], into)
    seeds = {row["label"]: [run["seed"] for run in row["runs"]] for row in joined["rows"]}
    assert seeds == {"x": [0, 1], "y": [0, 1, 2]}
    assert [row["label"] for row in join_tables("quality-s.json", [b], tmp_path / "new")["rows"]] == ["y"]
    with pytest.raises(SystemExit, match="no quality-s.json in .*empty"):
        (tmp_path / "empty").mkdir()
        join_tables("quality-s.json", [a, tmp_path / "empty"], into)


def test_trust_probe_scores_name_the_worst_classes_and_a_perfect_probe_routes_like_the_oracle():
    import torch

    from bench.trust_choices import fit_probe, hardest_classes, scores

    result = scores(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2]), ["a", "b", "c", "d"])
    assert result == {"accuracy": 0.75, "per_class": {"a": 0.5, "b": 1.0, "c": 1.0}}  # "d" does not occur
    runs = [{"per_class": {"a": 0.5, "b": 1.0, "c": 0.9}}, {"per_class": {"a": 0.7, "b": 0.8, "c": 0.9}}]
    assert hardest_classes(runs, count=2) == "a 0.60, b 0.90"

    # two teachers, the first on classes whose inputs have x > 0: the probe learns to route by the sign of x
    inputs = torch.linspace(-1, 1, 200)[:, None]
    membership = torch.cat([(inputs > 0).float(), (inputs <= 0).float()], dim=1)
    probe = fit_probe(inputs, membership, seed=0, steps=300)
    with torch.no_grad():
        chosen = probe(torch.tensor([[-0.8], [0.8]])).argmax(dim=1)
    assert chosen.tolist() == [1, 0]


def test_the_per_class_table_averages_each_rows_seeds_and_puts_the_hardest_class_first():
    def row(label, *runs):
        return {"label": label, "runs": [{"per_class": dict(zip("abc", accs))} for accs in runs]}

    results = {"class_names": ["a", "b", "c"],
               "rows": [row("one", (1.0, 0.2, 0.6), (0.8, 0.4, 0.6)), row("two", (0.6, 0.0, 1.0))]}
    lines = per_class_table(results).splitlines()
    assert lines[0] == "| row | b | a | c |"  # mean over rows: b 0.2, a 0.75, c 0.8
    assert lines[2] == "| one | 0.300 | 0.900 | 0.600 |" and lines[3] == "| two | 0.000 | 0.600 | 1.000 |"


def test_only_cached_methods_over_the_step_goal_are_timed_again_and_reported_beside_their_first_ratio():
    from bench.speed import larger_student_report, over_goal

    def row(name, signals, ratio):
        return {"variant": name, "signals": signals, "median_ms": 10 * ratio, "ratio": ratio}

    steps = [row("plain supervised step", "reference", 1.0), row("slow", "cached signals", 1.3),
             row("fine", "cached signals", 1.15), row("live", "runs the teachers in its step (by design)", 3.0)]
    assert over_goal(steps) == ["slow"]
    larger = [{**row("plain supervised step", "reference", 1.0), "parameters": 4e6},
              row("slow", "cached signals", 1.02)]
    lines = larger_student_report({"steps": steps, "inference": {"student_parameters": 1e5},
                                   "larger_student_steps": {"student": "big", "rows": larger}})
    assert "(4.0 M parameters against 0.10 M)" in lines[0]
    assert "| slow | 10.2 | 1.020 | 1.300 |" in lines
    assert larger_student_report({"steps": steps}) == []


def test_mahalanobis_scores_favour_the_teachers_own_classes():
    from bench.trust_choices import mahalanobis_fit, mahalanobis_score

    # 1-D features: the teacher's two classes sit at -1 and +1; a far-away point scores lower than either mean
    features = torch.tensor([[-1.1], [-0.9], [0.9], [1.1]])
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    fit = mahalanobis_fit(features, probs, share=1.0, shrink=0.0)
    assert fit[0].flatten().tolist() == pytest.approx([-1.0, 1.0])
    scores = mahalanobis_score(torch.tensor([[-1.0], [1.0], [5.0]]), fit)
    assert scores[:2].tolist() == pytest.approx([0.0, 0.0]) and scores[2] == pytest.approx(-16.0 / 0.01, rel=1e-4)


def test_probe_inputs_grid_pool_averages_each_quarter_of_a_map_and_of_a_token_grid():
    import torch

    from bench.probe_inputs import grid_pool

    assert grid_pool(torch.arange(16.0).reshape(1, 1, 4, 4), 2).tolist() == [[2.5, 4.5, 10.5, 12.5]]
    tokens = torch.cat([torch.full((1, 1, 1), 99.0), torch.arange(16.0).reshape(1, 16, 1)], dim=1)  # class token
    assert grid_pool(tokens, 2).tolist() == [[2.5, 4.5, 10.5, 12.5]]


def test_imbalanced_rows_keep_every_class_at_its_rate_between_one_and_the_ratio():
    from bench.class_prior import imbalanced_rows

    labels = torch.arange(5).repeat_interleave(4000)
    assert len(imbalanced_rows(labels, 1.0, seed=0)) == len(labels)
    kept = torch.bincount(labels[imbalanced_rows(labels, 0.01, seed=0)], minlength=5).float() / 4000
    # rates 1, 0.01^(1/4), 0.01^(2/4), 0.01^(3/4), 0.01 = 1, 0.316, 0.1, 0.0316, 0.01, in a seeded order
    assert torch.allclose(kept.sort(descending=True).values, torch.tensor([1.0, 0.316, 0.1, 0.0316, 0.01]), atol=0.02)
    assert torch.equal(imbalanced_rows(labels, 0.01, seed=0), imbalanced_rows(labels, 0.01, seed=0))
    assert not torch.equal(kept, torch.bincount(labels[imbalanced_rows(labels, 0.01, seed=1)], minlength=5) / 4000)
