"""Publishing a run's student: model card, model repo in amalgam's and timm's format, Gradio Space, failures.

Pushing and loading run in subprocesses against tests/hubserver.py (huggingface_hub reads HF_ENDPOINT when it is
imported), every one with a recognisable token and DEBUG logging, whose output is checked for that token.
"""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard

import amalgam
from amalgam.errors import AmalgamError, PublishError
from amalgam.publish import load_run, render_model_card, split_card
from amalgam.students import Student

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hubserver import LocalHub, last_json, run_client  # noqa: E402

TOKEN = "hf_publishTestToken0123456789abcdef"
MODEL = "org/digits-student"
PRELUDE = "import logging; logging.basicConfig(level=logging.DEBUG)\n"  # so that any log of the token shows
RAW = "torch.linspace(0, 1, 2 * 32 * 32).reshape(2, 1, 32, 32)"  # a raw [0, 1] batch at the student's size
GREY_IMAGE = "Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, 'L')"  # for the Space's app.py


@pytest.fixture(scope="module")
def run_dir(demo_zoo, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("publish") / "run"
    amalgam.amalgamate(demo_zoo, student="test_efficientnet", data="digits", epochs=1, run_dir=folder,
                       progress=False)
    return folder


@pytest.fixture(scope="module")
def student(run_dir) -> Student:
    return Student.from_pretrained(run_dir / "student").eval()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with LocalHub(tmp_path_factory.mktemp("hub-storage")) as server:
        yield server


def client(script: str, hub: LocalHub, hf_home: Path, *, amalgam: bool = True, **kwargs):
    """Run ``script`` against ``hub``; its output must not contain the token. Returns (last JSON line, process).

    With ``amalgam=False`` the script cannot import amalgam: what it runs must work without it.
    """
    prelude = PRELUDE if amalgam else PRELUDE + "import sys; sys.modules['amalgam'] = None\n"
    proc = run_client(prelude + textwrap.dedent(script), hub.endpoint, hf_home, extra_env={"HF_TOKEN": TOKEN},
                      **kwargs)
    assert TOKEN not in proc.stdout + proc.stderr
    return last_json(proc), proc


@pytest.fixture(scope="module")
def pushed(hub, run_dir, tmp_path_factory) -> dict:
    """The run pushed with a Space, then pushed again with another license (an update in place), then again
    with the same files (nothing to commit)."""
    out, proc = client(f"""
        import json
        from amalgam.publish import push_run
        first = push_run({str(run_dir)!r}, {MODEL!r}, demo=True)
        second = push_run({str(run_dir)!r}, {MODEL!r}, demo=True, license="mit")
        third = push_run({str(run_dir)!r}, {MODEL!r}, demo=True, license="mit")  # the same files again
        print(json.dumps({{"first": first.commit, "second": second.commit, "model_url": second.model_url,
                          "space_url": second.space_url, "third": third.commit,
                          "changed": [first.changed, second.changed, third.changed],
                          "space_changed": [first.space_changed, second.space_changed, third.space_changed],
                          "news": third.model_news}}))
    """, hub, tmp_path_factory.mktemp("hf-push"))
    return {**out, "log": proc.stderr}


def tree_digest(folder: Path, skip: str = "publish") -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] != skip}


# ---- the card, in-process -----------------------------------------------------------------------------------
def test_card_metadata_and_content(run_dir):
    record = load_run(run_dir)
    card = render_model_card(record, MODEL, space_id=f"{MODEL}-demo")
    header = yaml.safe_load(card.split("---\n")[1])
    assert header == ModelCard(card).data.to_dict()
    assert header["library_name"] == "amalgam" and header["pipeline_tag"] == "image-classification"
    assert {"knowledge-amalgamation", "distillation"} <= set(header["tags"]) and header["license"] == "apache-2.0"
    assert "base_model" not in header  # several teachers as base_model would read as a merge on the Hub

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for teacher in json.loads((run_dir / "run.json").read_text())["teachers"]:
        assert f"| `{teacher['name']}` | local folder `{teacher['name']}` | {teacher['library']} |" in card
        assert f"{metrics['teachers'][teacher['name']]['accuracy_on_own_classes']:.4f}" in card
        assert teacher["source"] not in card  # no local path on a public card
    for row in ("**student** `test_efficientnet`", "teachers together", "teacher oracle"):
        assert row in card
    assert f"| {metrics['oracle']['accuracy']:.4f} |" in card
    assert "Learning from Multiple Teacher Networks" in card  # the method's paper
    assert "1,437 images, of which\n0 (labeled fraction 0.0)" in card
    assert "0: 0, 1: 1, 2: 2" in card and "9: 9" in card  # the union label space
    assert f'Student.from_pretrained("{MODEL}")' in card and "## Intended use and limitations" in card

    timm_card = render_model_card(record, "org/digits-timm", timm_layout=True, license="mit")
    header = split_card(timm_card)[0]
    assert header["library_name"] == "timm" and header["license"] == "mit" and "timm" in header["tags"]
    assert 'timm.create_model("hf-hub:org/digits-timm", pretrained=True)' in timm_card


def test_card_with_broken_yaml_is_refused():
    with pytest.raises(PublishError, match="YAML header is invalid"):
        split_card("---\ntags: [unclosed\n---\n# card\n")
    with pytest.raises(PublishError, match="must start with a YAML block"):
        split_card("# no header\n")


# ---- push and load back --------------------------------------------------------------------------------------
def test_push_then_load_by_repo_id_in_a_fresh_cache(pushed, hub, run_dir, student, tmp_path):
    assert pushed["model_url"] == f"{hub.endpoint}/{MODEL}"
    out, _ = client(f"""
        import json, torch
        from huggingface_hub import HfApi, hf_hub_download
        from amalgam import Student
        student = Student.from_pretrained({MODEL!r})
        print(json.dumps({{"out": student({RAW}).tolist(),
                          "files": sorted(HfApi().list_repo_files({MODEL!r})),
                          "card": open(hf_hub_download({MODEL!r}, "README.md")).read(),
                          "config": json.load(open(hf_hub_download({MODEL!r}, "config.json")))}}))
    """, hub, tmp_path / "hf-load")
    with torch.no_grad():
        expected = student(torch.linspace(0, 1, 2 * 32 * 32).reshape(2, 1, 32, 32))
    assert torch.equal(torch.tensor(out["out"]), expected)
    assert out["files"] == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    assert out["card"] == (run_dir / "publish" / "model" / "README.md").read_text()
    assert "PytorchModelHubMixin" not in out["card"]  # amalgam's card replaced the mixin's default
    assert "pretrained_cfg" not in out["config"] and out["config"]["class_names"] == student.class_names


def test_pushing_again_updates_in_place(pushed, hub):
    meta = json.loads((hub.root / "repos/models" / MODEL / "meta.json").read_text())
    assert pushed["second"] != pushed["first"] and meta["refs"]["main"] == pushed["second"]
    assert sorted(meta["commits"][pushed["second"]]["files"]) == sorted(meta["commits"][pushed["first"]]["files"])
    weights = [p for m, p in hub.requests if m == "PUT" and p.startswith(f"/lfs-upload/models/{MODEL}/")]
    assert len(weights) == 1  # the unchanged weights were not uploaded twice


def test_pushing_the_same_files_again_makes_no_commit_and_says_so(pushed, hub):
    meta = json.loads((hub.root / "repos/models" / MODEL / "meta.json").read_text())
    assert pushed["third"] == pushed["second"] == meta["refs"]["main"] and len(meta["commits"]) == 2 + 1  # + init
    assert pushed["changed"] == [True, True, False] and pushed["space_changed"][0] and not pushed["space_changed"][2]
    assert pushed["news"] == f"nothing changed: the Hub already had these files (commit {pushed['second'][:7]})"


def test_space_files_and_app(pushed, hub, student, tmp_path):
    space = f"{MODEL}-demo"
    assert pushed["space_url"] == f"{hub.endpoint}/spaces/{space}"
    out, _ = client(f"""
        import json, sys
        import numpy as np
        from PIL import Image
        from huggingface_hub import HfApi, snapshot_download
        folder = snapshot_download({space!r}, repo_type="space", local_dir={str(tmp_path / "space")!r})
        sys.path.insert(0, folder)
        import app  # builds the interface without launching it
        print(json.dumps({{"top": app.classify({GREY_IMAGE}), "sdk": HfApi().space_info({space!r}).sdk,
                          "interface": type(app.demo).__name__}}))
    """, hub, tmp_path / "hf-space", amalgam=False)
    assert out["sdk"] == "gradio" and out["interface"] == "Interface"
    import gradio  # only this test needs it, and it is slow to import

    files = tmp_path / "space"
    assert sorted(p.name for p in files.iterdir() if not p.name.startswith(".")) == [
        "README.md", "app.py", "requirements.txt"]
    header = yaml.safe_load((files / "README.md").read_text().split("---\n")[1])
    assert header["sdk"] == "gradio" and header["sdk_version"] == gradio.__version__
    assert header["app_file"] == "app.py" and header["models"] == [MODEL]
    requirements = (files / "requirements.txt").read_text().splitlines()
    assert f"timm=={version('timm')}" in requirements and all("==" in line for line in requirements)
    assert 'if __name__ == "__main__":\n    demo.launch()' in (files / "app.py").read_text()

    raw = torch.from_numpy(np.arange(64, dtype=np.float32).reshape(8, 8) * 4 / 255)[None, None]  # GREY_IMAGE
    expected = student.predict(raw)[0]
    assert list(out["top"]) == [name for name, _ in expected]
    assert np.allclose(list(out["top"].values()), [p for _, p in expected], atol=1e-6)


def test_timm_export_with_cli_loads_with_timm_alone(hub, run_dir, student, tmp_path):
    out, _ = client(f"""
        import json
        from amalgam.cli import main
        print(json.dumps({{"code": main(["push", {str(run_dir)!r}, "org/digits-timm", "--timm", "--demo"])}}))
    """, hub, tmp_path / "hf-push")
    assert out["code"] == 0
    files = hub.root / "repos/models/org/digits-timm"
    assert not list(files.rglob("*.bin")) and not list(files.rglob("*.pth"))  # safetensors only, no pickle

    loaded, _ = client(f"""
        import json, sys, timm, torch
        import numpy as np
        from PIL import Image
        from huggingface_hub import snapshot_download
        model = timm.create_model("hf-hub:org/digits-timm", pretrained=True).eval()
        cfg = model.pretrained_cfg
        x = ({RAW} - torch.tensor(cfg["mean"]).view(1, -1, 1, 1)) / torch.tensor(cfg["std"]).view(1, -1, 1, 1)
        sys.path.insert(0, snapshot_download("org/digits-timm-demo", repo_type="space"))
        import app
        with torch.no_grad():
            print(json.dumps({{"out": model(x).tolist(), "labels": cfg["label_names"], "input": cfg["input_size"],
                              "crop_pct": cfg["crop_pct"], "top": app.classify({GREY_IMAGE})}}))
    """, hub, tmp_path / "hf-load", amalgam=False, cwd=tmp_path)
    raw = torch.linspace(0, 1, 2 * 32 * 32).reshape(2, 1, 32, 32)
    with torch.no_grad():
        expected = student(raw)
    assert torch.equal(torch.tensor(loaded["out"]), expected)
    assert loaded["labels"] == student.class_names and loaded["input"] == [1, 32, 32] and loaded["crop_pct"] == 1.0
    assert len(loaded["top"]) == 5


def test_student_push_to_hub_is_refused_for_push_student(hub, run_dir, tmp_path):
    out, _ = client(f"""
        import json, torch
        from amalgam import Student
        from amalgam.errors import PublishError
        from amalgam.publish import push_student
        student = Student.from_pretrained({str(run_dir / "student")!r}).eval()
        try:
            student.push_to_hub("org/by-method")
            refused = None
        except PublishError as err:
            refused = str(err)
        result = push_student(student, "org/by-method", run_dir={str(run_dir)!r})
        again = Student.from_pretrained("org/by-method")
        from huggingface_hub import hf_hub_download
        print(json.dumps({{"same": torch.equal(again({RAW}), student({RAW})), "refused": refused,
                          "card": open(hf_hub_download("org/by-method", "README.md")).read(),
                          "space": result.space_url}}))
    """, hub, tmp_path / "hf")
    assert out["same"] and out["space"] is None
    assert "without amalgam's model card" in out["refused"] and "push_student" in out["refused"]
    assert "cnn-digits-0to4" in out["card"] and split_card(out["card"])[0]["library_name"] == "amalgam"


# ---- failures ------------------------------------------------------------------------------------------------
def test_failed_upload_is_clear_keeps_the_run_and_a_retry_succeeds(hub, run_dir, tmp_path):
    before = tree_digest(run_dir)
    hub.fail_next(r"^/api/models/org/flaky/commit/", status=500)  # after the weights went up, before the commit
    out, _ = client(f"""
        import json
        from amalgam.errors import AmalgamError
        from amalgam.publish import push_run
        try:
            push_run({str(run_dir)!r}, "org/flaky")
            error = None
        except AmalgamError as err:
            error = [type(err).__name__, str(err)]
        print(json.dumps({{"error": error, "retry": push_run({str(run_dir)!r}, "org/flaky").commit}}))
    """, hub, tmp_path / "hf")
    name, message = out["error"]
    assert name == "PublishError" and issubclass(PublishError, AmalgamError)
    assert "pushing the model org/flaky failed" in message and "500" in message and "push again" in message
    assert tree_digest(run_dir) == before
    assert sorted(p.name for p in (run_dir / "publish" / "model").iterdir()) == [
        "README.md", "config.json", "model.safetensors"]
    commits = [p for m, p in hub.requests if m == "POST" and p == "/api/models/org/flaky/commit/main"]
    uploads = [p for m, p in hub.requests if m == "PUT" and p.startswith("/lfs-upload/models/org/flaky/")]
    assert len(commits) == 2 and len(uploads) == 1  # the retry did not send the weights again
    meta = json.loads((hub.root / "repos/models/org/flaky/meta.json").read_text())
    assert meta["refs"]["main"] == out["retry"] and "model.safetensors" in meta["commits"][out["retry"]]["files"]


def test_bad_repo_id_missing_token_or_run_fail_before_any_request(hub, run_dir, tmp_path):
    requests = len(hub.requests)
    out, proc = client(f"""
        import json, os
        from amalgam.cli import main
        from amalgam.errors import PublishError
        from amalgam.publish import push_run
        errors = {{}}
        for case, run, repo, space in [("repo id", {str(run_dir)!r}, "org/bad name", None),
                                       ("space id", {str(run_dir)!r}, "org/fine", "org/x/y"),
                                       ("run", {str(tmp_path / "nothing")!r}, "org/fine", None)]:
            try:
                push_run(run, repo, space_id=space)
            except PublishError as err:
                errors[case] = str(err)
        del os.environ["HF_TOKEN"]
        try:
            push_run({str(run_dir)!r}, "org/fine", demo=True)
        except PublishError as err:
            errors["token"] = str(err)
        print(json.dumps({{"errors": errors, "cli": main(["push", {str(run_dir)!r}, "org/fine"])}}))
    """, hub, tmp_path / "hf")
    errors = out["errors"]
    assert "malformed Hub repo id 'org/bad name' for the published student" in errors["repo id"]
    assert "malformed Hub repo id 'org/x/y' for the student's Space" in errors["space id"]
    assert "not a finished amalgam run folder" in errors["run"]
    assert "`hf auth login`" in errors["token"] and "HF_TOKEN" in errors["token"]
    assert out["cli"] == 2 and "amalgam: error: pushing to the Hugging Face Hub needs a token" in proc.stderr
    assert len(hub.requests) == requests  # not one request reached the Hub


def test_a_student_with_heads_gets_no_demo_space_and_nothing_is_sent(hub, run_dir, tmp_path):
    """The demo Space serves one classifier: a run whose student has named heads is refused before any request."""
    import shutil

    heads_run = tmp_path / "heads-run"
    shutil.copytree(run_dir, heads_run)
    shutil.rmtree(heads_run / "student")
    plain = Student.from_pretrained(run_dir / "student")
    Student(plain.architecture, plain.class_names, channels=plain.input_spec.channels,
            input_size=plain.input_spec.size, heads=[{"name": "m0", "outputs": plain.class_names},
                                                     {"name": "m1", "outputs": plain.class_names}]
            ).save_pretrained(heads_run / "student")
    requests = len(hub.requests)
    out, _ = client(f"""
        import json
        from amalgam.errors import PublishError
        from amalgam.publish import push_run
        try:
            push_run({str(heads_run)!r}, "org/heads", demo=True)
            print(json.dumps({{"error": None}}))
        except PublishError as err:
            print(json.dumps({{"error": str(err)}}))
    """, hub, tmp_path / "hf")
    assert "named heads (['m0', 'm1']): publish it without demo" in out["error"]
    assert len(hub.requests) == requests


def test_token_is_in_no_file(pushed, hub, run_dir):
    assert "amalgam.publish.push:pushed" in pushed["log"]  # the logs were captured, and hold no token
    for root in (run_dir, hub.root):
        for path in root.rglob("*"):
            assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path
