"""The real huggingface_hub / timm / transformers clients work against tests/hubserver.py's LocalHub.

Each client runs in a subprocess (`run_client`): HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_DISABLE_XET are read when
huggingface_hub is imported, and the rest of the suite runs with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hubserver import LocalHub, last_json, run_client  # noqa: E402

LFS_THRESHOLD = 2000  # bytes: low, so a small text file takes the LFS path too


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with LocalHub(tmp_path_factory.mktemp("hub-storage"), lfs_threshold=LFS_THRESHOLD) as server:
        yield server


def client(script: str, hub: LocalHub, hf_home: Path, **kwargs):
    return last_json(run_client(textwrap.dedent(script), hub.endpoint, hf_home, **kwargs))


def test_upload_download_revisions(hub, tmp_path):
    folder = tmp_path / "upload"
    (folder / "sub").mkdir(parents=True)
    files = {
        "small.txt": b"hello hub\n",
        "big.txt": b"0123456789abcdef\n" * 400,  # above LFS_THRESHOLD
        "sub/weights.bin": bytes(range(256)) * 4,  # binary + *.bin pattern -> LFS whatever its size
        "README.md": b"---\nlicense: mit\ntags:\n- test\n---\n# card\n",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)

    pushed = client(f"""
        import json
        from huggingface_hub import HfApi
        api = HfApi()
        url = api.create_repo("org/roundtrip")
        url2 = api.create_repo("org/roundtrip", exist_ok=True)
        first = api.upload_folder(repo_id="org/roundtrip", folder_path={str(folder)!r})
        tree = {{f.path: f.lfs is not None for f in api.list_repo_tree("org/roundtrip", recursive=True)
                if f.__class__.__name__ == "RepoFile"}}
        print(json.dumps({{"url": url, "url2": url2, "repo_id": url.repo_id, "first": first.oid, "tree": tree}}))
    """, hub, tmp_path / "hf-push")
    assert pushed["url"] == pushed["url2"] == f"{hub.endpoint}/org/roundtrip"
    assert pushed["repo_id"] == "org/roundtrip"
    assert pushed["tree"] == {".gitattributes": False, "README.md": False, "small.txt": False, "big.txt": True,
                              "sub/weights.bin": True}
    big_oid = hashlib.sha256(files["big.txt"]).hexdigest()
    assert ("PUT", f"/lfs-upload/models/org/roundtrip/{big_oid}") in hub.requests

    # A fresh cache gets identical bytes.
    got = client("""
        import json, os
        from huggingface_hub import snapshot_download
        path = snapshot_download("org/roundtrip")
        out = {}
        for root, _, names in os.walk(path):
            for n in names:
                p = os.path.join(root, n)
                out[os.path.relpath(p, path).replace(os.sep, "/")] = open(p, "rb").read().hex()
        print(json.dumps(out))
    """, hub, tmp_path / "hf-get1")
    assert {k: bytes.fromhex(v) for k, v in got.items() if k != ".gitattributes"} == files

    # A second upload is a new commit; the first commit's sha still resolves to the old content.
    (folder / "small.txt").write_bytes(b"hello again\n")
    second = client(f"""
        import json
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi()
        info = api.upload_folder(repo_id="org/roundtrip", folder_path={str(folder)!r}, commit_message="v2")
        old = open(hf_hub_download("org/roundtrip", "small.txt", revision={pushed['first']!r}), "rb").read()
        new = open(hf_hub_download("org/roundtrip", "small.txt"), "rb").read()
        old_big = open(hf_hub_download("org/roundtrip", "big.txt", revision={pushed['first']!r}), "rb").read()
        print(json.dumps({{"oid": info.oid, "main": api.model_info("org/roundtrip").sha,
                          "old": old.decode(), "new": new.decode(), "old_big": len(old_big)}}))
    """, hub, tmp_path / "hf-get2")
    assert len(second["oid"]) == 40 and second["oid"] != pushed["first"]
    assert second["main"] == second["oid"]
    assert (second["old"], second["new"]) == ("hello hub\n", "hello again\n")
    assert second["old_big"] == len(files["big.txt"])


def test_missing_file_and_repo_errors(hub, tmp_path):
    out = client("""
        import json
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
        api = HfApi()
        api.create_repo("org/errors")
        res = {"repo_exists": api.repo_exists("org/errors"), "repo_missing": api.repo_exists("org/nope"),
               "file_exists": api.file_exists("org/errors", ".gitattributes"),
               "file_missing": api.file_exists("org/errors", "nope.txt")}
        for key, kwargs in {"file": dict(repo_id="org/errors", filename="nope.txt"),
                            "repo": dict(repo_id="org/nope", filename="config.json"),
                            "revision": dict(repo_id="org/errors", filename=".gitattributes", revision="v9")}.items():
            try:
                hf_hub_download(**kwargs)
                res[key] = None
            except Exception as e:
                res[key] = [type(e).__name__, isinstance(e, EntryNotFoundError),
                            isinstance(e, RepositoryNotFoundError), isinstance(e, RevisionNotFoundError)]
        print(json.dumps(res))
    """, hub, tmp_path / "hf")
    assert out["repo_exists"] and not out["repo_missing"]
    assert out["file_exists"] and not out["file_missing"]
    assert out["file"][1] is True, out["file"]
    assert out["repo"][2] is True, out["repo"]
    assert out["revision"][3] is True, out["revision"]


def test_timm_push_and_load(hub, tmp_path):
    pushed = client("""
        import json, timm, torch
        from timm.models import push_to_hf_hub
        torch.manual_seed(0)
        model = timm.create_model("test_resnet", num_classes=3).eval()
        push_to_hf_hub(model, "org/timm-tiny", safe_serialization=True)
        x = torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
        from huggingface_hub import list_repo_files
        print(json.dumps({"out": model(x).tolist(), "files": sorted(list_repo_files("org/timm-tiny"))}))
    """, hub, tmp_path / "hf-push")
    assert "model.safetensors" in pushed["files"] and "pytorch_model.bin" not in pushed["files"]
    loaded = client("""
        import json, timm, torch
        model = timm.create_model("hf-hub:org/timm-tiny", pretrained=True).eval()
        x = torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
        print(json.dumps({"out": model(x).tolist(), "num_classes": model.num_classes}))
    """, hub, tmp_path / "hf-load")
    assert loaded["num_classes"] == 3
    assert loaded["out"] == pushed["out"]


def test_transformers_vit_push_and_load(hub, tmp_path):
    script_push = """
        import json, torch
        from transformers import ViTConfig, ViTForImageClassification
        torch.manual_seed(0)
        cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=3)
        model = ViTForImageClassification(cfg).eval()
        model.push_to_hub("org/vit-tiny")
        x = torch.linspace(-1, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
        with torch.no_grad():
            print(json.dumps({"logits": model(pixel_values=x).logits.tolist()}))
    """
    script_load = """
        import json, torch
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained("org/vit-tiny").eval()
        x = torch.linspace(-1, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
        with torch.no_grad():
            print(json.dumps({"logits": model(pixel_values=x).logits.tolist(), "cls": type(model).__name__}))
    """
    pushed = client(script_push, hub, tmp_path / "hf-push")
    loaded = client(script_load, hub, tmp_path / "hf-load")
    assert loaded["cls"] == "ViTForImageClassification"
    assert loaded["logits"] == pushed["logits"]


def test_space_upload_and_list(hub, tmp_path):
    folder = tmp_path / "space"
    folder.mkdir()
    (folder / "app.py").write_text("import gradio as gr\n")
    (folder / "requirements.txt").write_text("gradio\n")
    (folder / "README.md").write_text("---\nsdk: gradio\nsdk_version: 5.0.0\napp_file: app.py\n---\n# demo\n")
    out = client(f"""
        import json
        from huggingface_hub import HfApi
        api = HfApi()
        url = api.create_repo("org/demo", repo_type="space", space_sdk="gradio")
        api.upload_folder(repo_id="org/demo", repo_type="space", folder_path={str(folder)!r})
        info = api.space_info("org/demo")
        print(json.dumps({{"url": url, "type": url.repo_type, "sdk": info.sdk,
                          "files": sorted(api.list_repo_files("org/demo", repo_type="space")),
                          "as_model": api.repo_exists("org/demo")}}))
    """, hub, tmp_path / "hf")
    assert out["url"] == f"{hub.endpoint}/spaces/org/demo" and out["type"] == "space"
    assert out["sdk"] == "gradio"
    assert out["files"] == [".gitattributes", "README.md", "app.py", "requirements.txt"]
    assert out["as_model"] is False
    assert json.loads((hub.root / "repos/spaces/org/demo/meta.json").read_text())["sdk"] == "gradio"
