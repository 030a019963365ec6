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


def test_case2_a_run_recorded_before_the_newer_run_json_keys_still_resumes(finished_run, tmp_path):
    teachers, run_dir = finished_run
    older = tmp_path / "older-run"
    shutil.copytree(run_dir, older)
    description = json.loads((older / "run.json").read_text())
    for key in ("measured", "skipped_images"):
        description["data"].pop(key)
    description["student"].pop("origin")
    (older / "run.json").write_text(json.dumps(description))
    result = amalgam.amalgamate(teachers, data="digits", epochs=1, batch_size=256, run_dir=older, progress=False,
                                knowledge_cache=False, resume=True)
    assert result.metrics["kind"] == "labeled"


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


# ---- 5-7. teachers ------------------------------------------------------------------------------------------------

def _timm_folder(folder: Path, seed: int = 0) -> Path:
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=2, in_chans=1)
    save_for_hf(model, folder, model_config={"label_names": ["cat", "dog"]}, safe_serialization=True)
    return folder


def test_case5_a_pickled_bin_beside_an_unrelated_safetensors_file_is_never_loaded(tmp_path):
    from safetensors.torch import load_file, save_file

    from amalgam.errors import TeacherError
    from amalgam.teachers import load_teacher

    folder = _timm_folder(tmp_path / "teacher")
    weights = load_file(folder / "model.safetensors")
    torch.save(weights, folder / "pytorch_model.bin")  # loadable: timm would happily take it
    (folder / "model.safetensors").unlink()
    save_file({"step": torch.zeros(1)}, folder / "optimizer-notes.safetensors")
    with pytest.raises(TeacherError, match="optimizer-notes.safetensors"):
        load_teacher(folder)


def test_case5_the_cache_key_follows_the_weights_loaded_not_stray_files(tmp_path):
    from safetensors.torch import save_file

    from amalgam.knowledge.cache import teacher_identity
    from amalgam.teachers import load_teacher

    folder = _timm_folder(tmp_path / "teacher")
    save_file({"notes": torch.zeros(1)}, folder / "notes.safetensors")
    before = teacher_identity(load_teacher(folder))
    save_file({"notes": torch.ones(1)}, folder / "notes.safetensors")
    assert teacher_identity(load_teacher(folder)) == before  # not read, not in the key
    _timm_folder(folder, seed=1)  # other weights in model.safetensors
    assert teacher_identity(load_teacher(folder)) != before


@pytest.mark.parametrize("damage", ["empty", "truncated", "header"])
def test_case6_damaged_safetensors_is_a_teacher_error_naming_the_file(tmp_path, damage):
    from amalgam.errors import TeacherError
    from amalgam.teachers import load_teacher

    folder = _timm_folder(tmp_path / "teacher")
    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes({"empty": b"", "truncated": raw[: len(raw) // 2], "header": b"\xff" * 16 + raw[16:]}[damage])
    with pytest.raises(TeacherError, match=re.escape(f"weights file {weights}") + ".*not a complete safetensors"):
        load_teacher(folder)


def test_case6_a_transformers_config_without_id2label_is_a_teacher_error(tmp_path, demo_zoo):
    from amalgam.errors import TeacherError
    from amalgam.teachers import load_teacher

    folder = tmp_path / "vit"
    shutil.copytree(demo_zoo[1], folder)
    config = json.loads((folder / "config.json").read_text())
    for key in ("id2label", "label2id"):
        config.pop(key, None)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TeacherError, match="has no id2label.*add id2label"):
        load_teacher(folder)


REMOTE_CONFIG = '''
from transformers import PretrainedConfig

class TinyRemoteConfig(PretrainedConfig):
    model_type = "tiny-remote"

    def __init__(self, num_channels=1, image_size=8, **kwargs):
        self.num_channels, self.image_size = num_channels, image_size
        super().__init__(**kwargs)
'''
REMOTE_MODEL = '''
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_tiny_remote import TinyRemoteConfig

class TinyRemoteClassifier(PreTrainedModel):
    config_class = TinyRemoteConfig

    def __init__(self, config):
        super().__init__(config)
        self.fc = torch.nn.Linear(config.num_channels, config.num_labels)
        self.post_init()

    def forward(self, pixel_values, output_hidden_states=False, **kwargs):
        return ImageClassifierOutput(logits=self.fc(pixel_values.mean(dim=(2, 3))))
'''


def test_case7_a_hub_teacher_with_its_own_code_loads_when_allowed_by_name(tmp_path):
    import sys
    import textwrap

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hubserver import LocalHub, last_json, run_client

    code = tmp_path / "code" / "tiny_remote"  # a package: the model file imports its config relatively
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    (code / "configuration_tiny_remote.py").write_text(REMOTE_CONFIG)
    (code / "modeling_tiny_remote.py").write_text(REMOTE_MODEL)
    with LocalHub(tmp_path / "hub") as hub:
        run_client(textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(code.parent)!r})
            from tiny_remote.configuration_tiny_remote import TinyRemoteConfig
            from tiny_remote.modeling_tiny_remote import TinyRemoteClassifier
            from huggingface_hub import HfApi
            TinyRemoteConfig.register_for_auto_class()
            TinyRemoteClassifier.register_for_auto_class("AutoModelForImageClassification")
            config = TinyRemoteConfig(id2label={{0: "cat", 1: "dog", 2: "owl"}})
            TinyRemoteClassifier(config).save_pretrained({str(tmp_path / "repo")!r})
            HfApi().create_repo("org/remote")
            HfApi().upload_folder(repo_id="org/remote", folder_path={str(tmp_path / "repo")!r})
        """), hub.endpoint, tmp_path / "hf-push")
        loaded = last_json(run_client(textwrap.dedent("""
            import json
            from amalgam.errors import TeacherError
            from amalgam.teachers import load_teacher
            try:
                load_teacher("hf-hub:org/remote")
                refused = None
            except TeacherError as err:
                refused = str(err)
            teacher = load_teacher("hf-hub:org/remote", trust_remote_code=True)
            print(json.dumps({"refused": refused, "classes": teacher.class_names,
                              "code": sorted(p.name for p in teacher.source.folder.glob("*.py"))}))
        """), hub.endpoint, tmp_path / "hf-pull"))
    assert "trust_remote_code=True" in loaded["refused"]
    assert loaded["classes"] == ["cat", "dog", "owl"]
    assert loaded["code"] == ["configuration_tiny_remote.py", "modeling_tiny_remote.py"]


# ---- 8-9. data ----------------------------------------------------------------------------------------------------

def _image_folder(root: Path, classes=("a", "b"), per_class: int = 3, fmt: str = "png") -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((12, 12, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{i}.{fmt}")
    return root


@pytest.mark.parametrize("bad", ["not-an-image.png", "cut-short.jpg", "cut-short.png"])
def test_case8_a_broken_image_file_is_named_before_anything_loads(tmp_path, bad):
    from amalgam.data import load_data
    from amalgam.errors import DataError

    folder = _image_folder(tmp_path / "images", fmt=bad.rsplit(".", 1)[1])
    target = folder / "b" / bad
    if bad.startswith("not-an-image"):
        target.write_text("just some notes, saved with the wrong name\n")
    else:
        raw = (folder / "b" / f"0.{bad.rsplit('.', 1)[1]}").read_bytes()
        target.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=re.escape(str(target)) + ".*cannot be read as an image"):
        load_data(str(folder))


def test_case8_skip_unreadable_leaves_bad_files_out_and_lists_them(tmp_path):
    from amalgam.data import load_data

    folder = _image_folder(tmp_path / "images", per_class=5)
    broken = [folder / "a" / "broken.png", folder / "b" / "notes.jpg"]
    broken[0].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    broken[1].write_text("not a picture")
    with pytest.warns(UserWarning, match="2 of 12 image files cannot be read and are left out"):
        data = load_data(str(folder), skip_unreadable=True)
    assert sorted(data.skipped) == sorted(map(str, broken))
    assert len(data.train) + len(data.test) == 10 and data.class_names == ["a", "b"]
    assert all(image.shape == (3, 12, 12) for image, _ in (data.train[i] for i in range(len(data.train))))
    with pytest.warns(UserWarning, match="1 of 3 image files"):  # a list of files, the same way
        listed = load_data([folder / "a" / "0.png", folder / "b" / "1.png", broken[1]], skip_unreadable=True)
    assert len(listed.train) == 2 and listed.skipped == [str(broken[1])]


def test_case8_the_cli_can_skip_unreadable_files_and_count_them(tmp_path, demo_zoo):
    folder = _image_folder(tmp_path / "images", classes=[str(d) for d in range(10)], per_class=4)
    (folder / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    flags = ["run", "--data", str(folder), "--epochs", "1", "--out", str(tmp_path / "runs"), "--quiet",
             *[arg for path in demo_zoo for arg in ("--teacher", str(path))]]
    assert main(flags) == 2  # refused by default, and the message says how to skip
    with pytest.warns(UserWarning, match="1 of 41 image files cannot be read"):
        assert main([*flags, "--skip-unreadable"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["skipped_images"] == 1 and metrics["test_samples"] + metrics["labeled_samples"] <= 40


def test_case8_the_cli_names_the_file_and_leaves_no_run_folder(tmp_path, capsys):
    folder = _image_folder(tmp_path / "images")
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(MISSING_TEACHER + f'[data]\nname = "{folder}"\n')
    assert main(["run", str(recipe), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "/nowhere/teacher" not in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_case9_a_folder_of_a_single_class_says_so(tmp_path):
    from amalgam.data import load_data
    from amalgam.errors import DataError

    folder = _image_folder(tmp_path / "images", classes=("cat",))
    message = r"a single class folder \('cat', 3 images\).*at least two"
    with pytest.raises(DataError, match=message):  # as evaluation data it needs labels
        load_data(str(folder), role="eval")
    with pytest.warns(UserWarning, match=message + ".*read as unlabeled transfer images"):
        assert not load_data(str(folder)).labeled  # as transfer data it is a pile of unlabeled images
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(folder / "cat" / "0.png", flat / "0.png")
    with pytest.raises(DataError, match="images outside class sub-folders"):
        load_data(str(flat), role="eval")


# ---- 10-12. the app -----------------------------------------------------------------------------------------------

def _zip_of_images(path: Path, count: int) -> Path:
    import zipfile

    from PIL import Image

    folder = _image_folder(path.parent / f"{path.stem}-images", per_class=count // 2)
    with zipfile.ZipFile(path, "w") as archive:
        for image in sorted(folder.rglob("*.png")):
            archive.write(image, image.relative_to(folder).as_posix())
    assert Image.open(image).size == (12, 12)
    return path


def test_case10_a_zip_over_the_entry_limit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from amalgam.app import data as app_data
    from amalgam.errors import DataError

    monkeypatch.setattr(app_data, "MAX_ZIP_ENTRIES", 50)
    archive = _zip_of_images(tmp_path / "many.zip", 60)
    with pytest.raises(DataError, match="many.zip has 60 entries, more than the 50 this app unpacks"):
        app_data.extract_image_zip(archive, tmp_path / "uploads")
    assert not (tmp_path / "uploads").exists()


@pytest.fixture(scope="module")
def served(demo_zoo, tmp_path_factory):
    """The app as it serves beyond 127.0.0.1: server folders only under ``allowed`` (and the demo zoo)."""
    from gradio_client import Client

    from amalgam.app import PathPolicy, RunManager, build_app
    from tests.test_app import free_port

    root = tmp_path_factory.mktemp("served")
    allowed = root / "allowed"
    shutil.copytree(demo_zoo[0], allowed / "cnn")
    runs = root / "runs"
    manager = RunManager(runs)
    policy = PathPolicy.for_host("0.0.0.0", allowed=[allowed], own=[demo_zoo[0].parent, runs / ".uploads"])
    app = build_app(runs, manager, policy)
    app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield {"client": Client(app.local_url, verbose=False), "root": root, "allowed": allowed, "runs": runs}
    app.close()
    manager.shutdown()


def test_case10_an_upload_is_unpacked_only_for_a_request_that_can_run(served, tmp_path):
    from gradio_client import handle_file

    from amalgam.app.data import ZIP_UPLOAD

    client = served["client"]
    client.predict(api_name="/add_demo_teachers")
    archive = _zip_of_images(tmp_path / "upload.zip", 6)
    _, message, _, options, *_ = client.predict(ZIP_UPLOAD, "", handle_file(str(archive)), "soft-targets",
                                                '{"temprature": 2}', 0.0, 1, 0.01, "test_efficientnet", "",
                                                api_name="/start_run")
    assert "fix the fields marked below" in message and "has no option(s) ['temprature']" in options  # beside it
    assert not (served["runs"] / ".uploads").exists() or not any((served["runs"] / ".uploads").iterdir())


def test_case11_beyond_loopback_server_folders_are_refused_outside_the_allowed_ones(served, demo_zoo):
    client = served["client"]
    *_, message = client.predict("/etc", api_name="/add_teacher")
    assert "is a folder on the server" in message and "--allow-paths" in message
    outside = served["root"] / "outside"
    shutil.copytree(demo_zoo[0], outside, dirs_exist_ok=True)
    *_, message = client.predict(str(outside), api_name="/add_teacher")
    assert "is a folder on the server" in message
    link = served["allowed"] / "sneaky"  # a link inside the allowed folder to one outside it
    link.symlink_to(outside)
    *_, message = client.predict(str(link), api_name="/add_teacher")
    assert "is a folder on the server" in message
    *_, message = client.predict(str(served["allowed"] / "cnn"), api_name="/add_teacher")
    assert message.startswith("Added teacher")
    _, message, *_ = client.predict("a datasets id or folder", "/usr/share", None, "soft-targets", "{}", 0.0, 1, 0.01,
                                    "test_efficientnet", "", api_name="/start_run")
    assert "data '/usr/share' is a folder on the server" in message
    _, message, *_ = client.predict("digits", "", None, "soft-targets", "{}", 0.0, 1, 0.01, "test_efficientnet",
                                    "/usr/share", api_name="/start_run")
    assert "evaluation data '/usr/share' is a folder on the server" in message


def test_case11_the_policy_by_host():
    from amalgam.app import PathPolicy

    assert PathPolicy.for_host("127.0.0.1").roots is None  # the operator's own machine: any folder
    assert PathPolicy.for_host("0.0.0.0").roots == ()  # the network: none but the app's own
    PathPolicy.for_host("0.0.0.0").check("hf-hub:org/name", "teacher")  # Hub ids are always fine


def test_case12_user_errors_are_messages_not_gradios_generic_exception(served, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = served["client"]
    truncated = served["allowed"] / "truncated"
    shutil.copytree(served["allowed"] / "cnn", truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    *_, message = client.predict(str(truncated), api_name="/add_teacher")
    assert message.startswith("**Error:**") and "not a complete safetensors file" in message
    (tmp_path / "photo.png").write_text("this is text, not a picture")
    with pytest.raises(AppError, match="photo.png is not a picture that can be read.*upload a PNG"):
        client.predict("any-run", handle_file(str(tmp_path / "photo.png")), api_name="/predict")
