"""Bad inputs and faults (issue 18): each test is named after its case and failed before the case was mended.

Cases 1-3 are runs and resume, 4 the knowledge cache, 5-7 teachers, 8-9 data, 10-12 the app.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import amalgam
from amalgam.cli import main
from amalgam.engine.checkpoint import CheckpointError
from amalgam.recipe import Recipe
from tests.tiny import tiny_teachers

DIGIT_HALVES = ([str(d) for d in range(5)], [str(d) for d in range(5, 10)])


# ---- 1. two runs started in the same second -----------------------------------------------------------------------

def test_case1_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    from amalgam.cli import create_run_dir

    recipe = Recipe()
    recipe.output.dir = str(tmp_path)
    folders = [create_run_dir(recipe) for _ in range(3)]  # well within one second
    assert len(set(folders)) == 3 and all(f.is_dir() and not any(f.iterdir()) for f in folders)
    assert folders[1].name == folders[0].name + "-2" and folders[2].name == folders[0].name + "-3"


# ---- 2. resume with another recipe ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[list, Path]:
    teachers = tiny_teachers(*DIGIT_HALVES)
    run_dir = tmp_path_factory.mktemp("run") / "run"
    amalgam.amalgamate(teachers, data="digits", epochs=1, batch_size=256, run_dir=run_dir, progress=False,
                       knowledge_cache=False)
    return teachers, run_dir


@pytest.mark.parametrize(("change", "where"), [
    ({"method": "concat-logits"}, "method.name was 'soft-targets' when it started, and is 'concat-logits' now"),
    ({"method_options": {"temperature": 2.0}}, "method.options.temperature was None"),
    ({"labeled_fraction": 0.1}, "data.labeled_samples was 0 when it started, and is 142 now"),
    ({"lr": 1e-2}, "train.lr was 0.003"),
    ({"student": "test_resnet"}, "student.architecture was 'test_efficientnet'"),
])
def test_case2_resume_refuses_a_different_run_and_names_the_difference(finished_run, change, where):
    teachers, run_dir = finished_run
    arguments = {"data": "digits", "epochs": 1, "batch_size": 256, "run_dir": run_dir, "progress": False,
                 "knowledge_cache": False, "resume": True, **change}
    with pytest.raises(CheckpointError, match=re.escape(where)):
        amalgam.amalgamate(teachers, **arguments)


def test_case2_resume_with_other_teachers_is_refused(finished_run):
    _, run_dir = finished_run
    others = tiny_teachers(DIGIT_HALVES[0], [*DIGIT_HALVES[1], "extra"])
    with pytest.raises(CheckpointError, match=r"teachers\[1\]\.parameters was 100481"):
        amalgam.amalgamate(others, data="digits", epochs=1, batch_size=256, run_dir=run_dir, progress=False,
                           knowledge_cache=False, resume=True)


def test_case2_resume_of_the_same_run_is_accepted(finished_run):
    teachers, run_dir = finished_run
    before = json.loads((run_dir / "metrics.json").read_text())["student"]["accuracy"]
    result = amalgam.amalgamate(teachers, data="digits", epochs=1, batch_size=256, run_dir=run_dir, progress=False,
                                knowledge_cache=False, resume=True)
    assert result.metrics["student"]["accuracy"] == pytest.approx(before)


# ---- 3. bad recipe values -----------------------------------------------------------------------------------------

MISSING_TEACHER = '[[teachers]]\nsource = "/nowhere/teacher"\n'  # loading it would be an error of its own


@pytest.mark.parametrize(("text", "message"), [
    ('[train]\nepochs = "three"\n', "[train] epochs must be an integer, got 'three'"),
    ("[train]\nepochs = -1\n", "[train] epochs must be a positive integer, got -1"),
    ("[train]\nepochs = true\n", "[train] epochs must be an integer, got True"),
    ('[train]\nlr = "fast"\n', "[train] lr must be a number, got 'fast'"),
    ('[train]\nseed = "x"\n', "[train] seed must be an integer, got 'x'"),
    ("[data]\nlabeled_fraction = 1.5\n", "[data] labeled_fraction must be within [0, 1], got 1.5"),
    ("[data]\nimage_size = 0\n", "[data] image_size must be a positive number of pixels"),
    ('[student]\narchitecture = "resnet_18"\n', "unknown student architecture 'resnet_18'"),
    ('[method]\nname = "soft-targets"\noptions = { temperature = "hot" }\n',
     "soft-targets: temperature must be a number, got 'hot'"),
])
def test_case3_bad_recipe_values_fail_first_and_create_nothing(tmp_path, capsys, text, message):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(MISSING_TEACHER + text)
    assert main(["run", str(recipe), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("amalgam: error: ") and message in err and "Traceback" not in err
    assert "/nowhere/teacher" not in err  # refused before the teachers are loaded
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_case3_a_run_refused_while_planning_leaves_no_folder(demo_zoo, tmp_path, capsys):
    recipe = tmp_path / "recipe.toml"  # trust-learner fits its trust model on labels: with none it is refused
    recipe.write_text("".join(f'[[teachers]]\nsource = "{folder}"\n' for folder in demo_zoo)
                      + '[method]\nname = "trust-learner"\n')
    assert main(["run", str(recipe), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    assert "labeled_fraction > 0" in capsys.readouterr().err
    assert list((tmp_path / "runs").iterdir()) == []


def test_case3_the_api_refuses_bad_budget_types():
    teachers = tiny_teachers(*DIGIT_HALVES)
    with pytest.raises(ValueError, match=re.escape("epochs must be an integer, got True")):
        amalgam.amalgamate(teachers, epochs=True, progress=False)
    with pytest.raises(ValueError, match="seed must be 0 or a positive integer"):
        amalgam.amalgamate(teachers, seed=-1, progress=False)


# ---- 4. a damaged knowledge cache ---------------------------------------------------------------------------------

def _cache_build(teacher, data, root):
    from amalgam.knowledge import KnowledgeCache

    return KnowledgeCache.build([teacher], data, data_name="digits-part", root=root, progress=False)


@pytest.fixture()
def cached(tmp_path):
    from amalgam.data import TensorImages, load_digits

    digits = load_digits()
    data = TensorImages(digits.train.images[:200], digits.train.labels[:200])
    teacher = tiny_teachers(DIGIT_HALVES[0])[0]
    cache = _cache_build(teacher, data, tmp_path)
    (folder,) = cache.folders
    return teacher, data, tmp_path, folder, cache.logits[0].clone()


def _flip_bytes(path: Path, at: int, count: int = 64) -> None:
    raw = bytearray(path.read_bytes())
    raw[at:at + count] = bytes(255 - b for b in raw[at:at + count])
    path.write_bytes(bytes(raw))


def test_case4_changed_bytes_are_found_and_computed_again(cached, caplog):
    teacher, data, root, folder, logits = cached
    arrow = folder / "knowledge.arrow"
    _flip_bytes(arrow, arrow.stat().st_size // 2)  # inside the logits: read back silently before
    with caplog.at_level("WARNING", logger="amalgam.knowledge.cache"):
        again = _cache_build(teacher, data, root)
    assert "does not match its checksum" in caplog.text and "computing it again" in caplog.text
    assert torch.equal(again.logits[0], logits)


def test_case4_a_truncated_cache_is_computed_again_not_a_crash(cached, caplog):
    teacher, data, root, folder, logits = cached
    arrow = folder / "knowledge.arrow"
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 3])
    with caplog.at_level("WARNING", logger="amalgam.knowledge.cache"):
        again = _cache_build(teacher, data, root)
    assert "truncated or changed" in caplog.text
    assert torch.equal(again.logits[0], logits)


def test_case4_the_full_check_finds_damage_an_open_samples_past(cached, monkeypatch, capsys):
    from amalgam.knowledge import integrity

    teacher, data, root, folder, _ = cached
    monkeypatch.setattr(integrity, "BLOCK_BYTES", 256)  # many small blocks, so an open checks only a sample
    shutil.rmtree(folder)
    (folder,) = _cache_build(teacher, data, root).folders
    blocks = json.loads((folder / "key.json").read_text())["arrow"]["blocks"]
    checked = integrity.blocks_to_check(len(blocks), full=False)
    unchecked = next(i for i in range(len(blocks)) if i not in checked)
    _flip_bytes(folder / "knowledge.arrow", unchecked * 256, 8)
    assert integrity.check_file(folder / "knowledge.arrow", json.loads((folder / "key.json").read_text())["arrow"]) \
        is None  # the cheap check on open samples past it
    assert main(["cache", "verify", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"block {unchecked + 1} of {len(blocks)}" in out and not folder.exists()
