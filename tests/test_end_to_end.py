"""From teachers to a saved, reloadable student: the API, the run folder, the CLI and recipes."""

import json

import pytest
import torch

import amalgam
from amalgam.cli import main
from amalgam.errors import DataError, RecipeError
from amalgam.recipe import load_recipe
from amalgam.students import Student

CHANCE = 0.1


@pytest.fixture(scope="module")
def result(demo_zoo, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    return amalgam.amalgamate(demo_zoo, student="test_efficientnet", data="digits", method="soft-targets",
                              epochs=4, run_dir=run_dir, progress=False)


def test_student_learns_the_union_of_both_teachers(result):
    metrics = result.metrics
    assert result.label_space.class_names == tuple(str(d) for d in range(10))
    assert metrics["student"]["accuracy"] > 6 * CHANCE
    # the student must learn classes of *both* teachers, not one teacher's half
    per_class = metrics["student"]["per_class"]
    assert min(per_class[str(d)] for d in range(5)) > 0.3 and min(per_class[str(d)] for d in range(5, 10)) > 0.3
    assert metrics["teachers"]["cnn-digits-0to4"]["accuracy_on_own_classes"] > 0.9
    assert metrics["oracle"]["accuracy"] >= metrics["ensemble"]["accuracy"] - 1e-9
    assert metrics["test_samples"] == 360 and metrics["excluded_test_samples"] == 0
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]
    assert metrics["history"][-1]["soft"] < metrics["history"][0]["soft"]


def test_run_folder_and_reload(result):
    run_dir = result.run_dir
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["student"]["accuracy"] == result.metrics["student"]["accuracy"]
    run = json.loads((run_dir / "run.json").read_text())
    assert [t["library"] for t in run["teachers"]] == ["timm", "transformers"]
    assert run["method"]["name"] == "soft-targets" and run["label_space"]["overlaps"] == {}
    assert sorted(p.name for p in (run_dir / "student").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    reloaded = Student.from_pretrained(run_dir / "student")
    images = torch.rand(3, 1, 8, 8)
    result.student.eval()
    assert torch.equal(reloaded(images), result.student(images))
    assert reloaded.predict(images, top_k=2)[0][0][0] in result.label_space.class_names


def test_reload_is_strict_about_missing_weights(result, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    result.student.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    weights.pop("model.conv_stem.weight")
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(RuntimeError, match="Missing key"):
        Student.from_pretrained(folder)


def test_table_names_every_row(result):
    table = result.table()
    for row in ("teacher cnn-digits-0to4", "teacher vit-digits-5to9", "teachers together", "teacher oracle",
                "student test_efficientnet"):
        assert row in table
    assert f"{result.metrics['student']['accuracy']:.4f}" in table


def test_data_without_any_teacher_class_is_an_error(demo_zoo):
    with pytest.raises(DataError, match="shares no class with the teachers"):
        amalgam.amalgamate(demo_zoo, data=_renamed_digits(), epochs=1, progress=False)


def _renamed_digits():
    data = amalgam.load_data("digits")
    data.class_names = [f"digit {d}" for d in data.class_names]
    return data


def test_label_mapping_aligns_data_and_teacher_names(demo_zoo):
    mapping = {str(d): f"digit {d}" for d in range(10)}
    result = amalgam.amalgamate(demo_zoo, data=_renamed_digits(), label_mapping=mapping, epochs=1,
                                method="soft-targets", progress=False)
    assert result.label_space.class_names[0] == "digit 0" and result.metrics["test_samples"] == 360


def test_cli_runs_a_recipe(demo_zoo, tmp_path, capsys):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        "".join(f'[[teachers]]\nsource = "{folder}"\n' for folder in demo_zoo)
        + '[data]\nname = "digits"\nlabeled_fraction = 0.05\n[train]\nepochs = 2\nbatch_size = 128\n'
        + '[method]\nname = "soft-targets"\noptions = { temperature = 2.0 }\n'
        + f'[output]\ndir = "{tmp_path / "runs"}"\n'
    )
    assert main(["run", str(recipe), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "student test_efficientnet" in out and "teacher oracle" in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    run = json.loads((run_dir / "run.json").read_text())
    assert run["data"]["labeled_samples"] == 70  # round(5% of ~144) = 7 in each of the 10 classes
    assert run["method"]["options"] == {"temperature": 2.0}


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  epoch: 3\n")
    assert main(["run", str(recipe)]) == 2
    assert "unknown key 'epoch' in [train]" in capsys.readouterr().err
    assert main(["teacher", "hf-hub:bad id"]) == 2
    assert "malformed Hub repo id" in capsys.readouterr().err


def test_cli_lists_methods(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "soft-targets" in out and "temperature=4.0" in out and "KDD 2017" in out
    assert "[targets]" in out and "[features]" in out and "[heads]" in out  # by family
    assert "target='soft' (one of 'soft', 'hard')" in out  # the allowed values of a Literal option


def test_the_recipe_train_table_is_the_train_config():
    from amalgam.config import TrainConfig
    from amalgam.recipe import parse_recipe

    train = parse_recipe({"train": {"epochs": 2, "weight_decay": 0.0}}).train
    assert train == TrainConfig(epochs=2, weight_decay=0.0)


@pytest.mark.parametrize(("text", "message"), [
    ('surprise = 1\n', "unknown top-level key 'surprise'"),
    ('[[teachers]]\nrevision = "main"\n', "\\[\\[teachers\\]\\] #1 needs the key 'source'"),
    ('[[teachers]]\nsource = "a/b"\ncolor = "red"\n', "unknown key 'color' in \\[\\[teachers\\]\\] #1"),
    ('[data\n', "is not valid"),
    ('[train]\nepochs = -1\n', "\\[train\\] epochs must be a positive integer, got -1"),
])
def test_recipe_errors(tmp_path, text, message):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_cached_teacher_outputs_train_the_same_student_as_live_teachers(demo_zoo):
    runs = [
        amalgam.amalgamate(demo_zoo, data="digits", epochs=1, cache_teachers=cache, progress=False)
        for cache in (True, False)
    ]
    images = torch.rand(8, 1, 8, 8)
    cached, live = (run.student.eval()(images) for run in runs)
    # Same batches, same seed; only the teachers' batch size differs, so float rounding is all that may differ.
    assert torch.allclose(cached, live, atol=1e-3)
    assert runs[0].metrics["history"][0]["soft"] == pytest.approx(runs[1].metrics["history"][0]["soft"], rel=1e-4)


def test_runs_that_would_lose_accuracy_silently_warn():
    from amalgam.pipeline import Pipeline
    from tests.tiny import tiny_teachers

    digits = [str(d) for d in range(10)]
    with pytest.warns(UserWarning, match="teacher 'pets' knows none of the data's classes"):
        Pipeline.plan(tiny_teachers(digits, ["cat", "dog"], names=["digits", "pets"]), data="digits")
    with pytest.warns(UserWarning, match=r"data classes \['9'\] are known to no teacher: their 36 test images"):
        run = Pipeline.plan(tiny_teachers(digits[:9]), data="digits")
    assert run.excluded_test_samples == 36


def test_cli_flags_make_a_recipe_optional(demo_zoo, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["run", "--teacher", str(demo_zoo[0]), "--teacher", str(demo_zoo[1]), "--data", "digits", "--method",
            "concat-logits", "--method-options", '{"temperature": 2.0}', "--labeled-fraction", "0.05", "--student",
            "test_resnet", "--epochs", "1", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert "Loading weights" not in capsys.readouterr().err  # --quiet quiets transformers' bars too
    (run_dir,) = out.iterdir()
    run = json.loads((run_dir / "run.json").read_text())
    assert [t["source"] for t in run["teachers"]] == [str(f) for f in demo_zoo]
    assert (run["method"]["name"], run["data"]["labeled_fraction"], run["student"]["architecture"],
            run["train"]["epochs"]) == ("concat-logits", 0.05, "test_resnet", 1)
    assert run["method"]["options"] == {"temperature": 2.0}
    assert main(["run", "--method-options", '{"bogus": 1}', "--quiet"]) == 2
    assert "has no option(s) ['bogus']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--method-options", "[1]"])
    assert exit_.value.code == 2 and "--method-options: must be a JSON object" in capsys.readouterr().err
    assert main(["run", "--labeled-fraction", "2", "--quiet"]) == 2
    assert "command line: labeled_fraction must be within [0, 1], got 2.0" in capsys.readouterr().err
    assert main(["run", "--demo", "cifar", "--quiet"]) == 2
    assert "the built-in demos are ['fashion-mnist']" in capsys.readouterr().err


def test_recipe_paths_are_read_from_the_recipe_folder(demo_zoo, tmp_path, monkeypatch):
    import shutil

    recipes = tmp_path / "project"
    shutil.copytree(demo_zoo[0], recipes / "teachers" / "cnn")
    (recipes / "recipe.toml").write_text('[[teachers]]\nsource = "./teachers/cnn"\n[[teachers]]\n'
                                          'source = "teachers/cnn"\n[[teachers]]\nsource = "org/name"\n'
                                          '[output]\ndir = "runs"\n')
    monkeypatch.chdir(tmp_path)  # started from elsewhere
    recipe = load_recipe("project/recipe.toml")
    cnn = str((recipes / "teachers" / "cnn").resolve())
    assert [t.source for t in recipe.teachers] == [cnn, cnn, "org/name"]  # a Hub id stays one
    assert recipe.output.dir == str(recipes.resolve() / "runs") and recipe.data.name == "digits"
