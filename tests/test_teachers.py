"""Loading teachers from the Hub cache, folders and modules; taps; freezing; clear errors for bad input."""

import json
import shutil

import pytest
import timm
import torch

from amalgam.errors import TeacherError
from amalgam.teachers import ImageSpec, load_teacher
from hubcache import add_to_cache

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


@pytest.fixture(scope="module")
def cached_zoo(demo_zoo, hf_cache, tmp_path_factory):
    """The demo teachers as Hub repos in the offline cache; the CNN repo has two revisions (main = B)."""
    cnn, vit = demo_zoo
    relabeled = tmp_path_factory.mktemp("relabeled") / "cnn"
    shutil.copytree(cnn, relabeled)
    config = json.loads((relabeled / "config.json").read_text())
    config["label_names"] = ["zero", "one", "two", "three", "four"]
    (relabeled / "config.json").write_text(json.dumps(config))
    add_to_cache(hf_cache, "demo/cnn-digits-0to4", cnn, COMMIT_A, branch=None)
    add_to_cache(hf_cache, "demo/cnn-digits-0to4", relabeled, COMMIT_B)
    add_to_cache(hf_cache, "demo/vit-digits-5to9", vit, COMMIT_A)
    return demo_zoo


def test_timm_teacher_from_the_offline_hub_cache(cached_zoo):
    teacher = load_teacher("hf-hub:demo/cnn-digits-0to4")
    assert teacher.library == "timm" and teacher.architecture == "test_resnet"
    assert teacher.class_names == ["zero", "one", "two", "three", "four"]  # main -> commit B
    assert teacher.source.repo_id == "demo/cnn-digits-0to4" and teacher.source.revision == COMMIT_B
    assert teacher.input_spec == ImageSpec(size=(32, 32), channels=1, mean=(0.5,), std=(0.5,))


def test_revision_pinning(cached_zoo):
    pinned = load_teacher("demo/cnn-digits-0to4", revision=COMMIT_A)
    assert pinned.class_names == ["0", "1", "2", "3", "4"] and pinned.source.revision == COMMIT_A
    assert load_teacher(f"hf-hub:demo/cnn-digits-0to4@{COMMIT_A}").class_names == pinned.class_names


def test_transformers_teacher_from_the_offline_hub_cache(cached_zoo):
    teacher = load_teacher("demo/vit-digits-5to9")
    assert teacher.library == "transformers" and teacher.architecture == "ViTForImageClassification"
    assert teacher.class_names == ["5", "6", "7", "8", "9"]
    assert teacher.input_spec.size == (16, 16) and teacher.input_spec.channels == 3
    assert teacher.tap_names() == [f"hidden_states.{i}" for i in range(4)]


def test_hub_repo_not_in_cache_while_offline(cached_zoo):
    with pytest.raises(TeacherError, match="not in the local cache.*HF_HUB_OFFLINE"):
        load_teacher("demo/never-downloaded")
    with pytest.raises(TeacherError, match="not in the local cache"):
        load_teacher("demo/cnn-digits-0to4", revision="c" * 40)


def test_local_folder_teachers_classify_digits(demo_zoo):
    from amalgam.data import load_digits

    digits = load_digits()
    images = torch.stack([digits.test[i][0] for i in range(len(digits.test))])
    labels = torch.as_tensor(digits.test_labels)
    for folder, offset in zip(demo_zoo, (0, 5)):
        teacher = load_teacher(folder)
        own = (labels >= offset) & (labels < offset + 5)
        predictions = teacher(images[own]).logits.argmax(-1) + offset
        assert (predictions == labels[own]).float().mean() > 0.85


def hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_taps_by_module_path_and_hidden_states_leave_no_hooks(demo_zoo):
    cnn, vit = (load_teacher(folder) for folder in demo_zoo)
    vit(torch.rand(1, 1, 8, 8), taps=["hidden_states.0"])  # transformers installs its own (lasting) hooks once
    hooks_before = hook_count(cnn.model), hook_count(vit.model)
    assert cnn.tap_names() == ["act1", "layer1", "layer2", "layer3", "layer4"]
    out = cnn(torch.rand(2, 1, 8, 8), taps=["layer1", "layer4", "conv1"])
    assert out.features["layer1"].shape[:2] == (2, cnn.model.layer1[-1].conv2.out_channels)
    assert set(out.features) == {"layer1", "layer4", "conv1"}
    assert hook_count(cnn.model) == hooks_before[0]
    out = vit(torch.rand(2, 1, 8, 8), taps=["hidden_states.3", "vit.layers.0"])
    assert out.features["hidden_states.3"].shape == (2, 17, 64)  # 16 patches + CLS, hidden 64
    assert out.features["vit.layers.0"].shape == (2, 17, 64)
    assert hook_count(vit.model) == hooks_before[1]


def test_unknown_tap_lists_the_available_taps(demo_zoo):
    cnn = load_teacher(demo_zoo[0])
    with pytest.raises(TeacherError, match="no tap 'layer9'.*'layer1', 'layer2'"):
        cnn(torch.rand(1, 1, 8, 8), taps=["layer1", "layer9"])
    assert hook_count(cnn.model) == 0


def test_teachers_are_frozen(demo_zoo):
    teacher = load_teacher(demo_zoo[1])
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert teacher(torch.rand(2, 3, 16, 16, requires_grad=True)).logits.grad_fn is None


def test_module_teacher_with_class_names():
    model = timm.create_model("test_vit", num_classes=3)
    teacher = load_teacher(model, class_names=["a", "b", "c"], name="vit")
    assert teacher.input_spec.size == (160, 160) and teacher.library == "timm"  # from its pretrained_cfg
    assert teacher(torch.rand(2, 3, 20, 20)).logits.shape == (2, 3)
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    teacher = load_teacher(plain, class_names=["x", "y"], input_spec=ImageSpec(size=8, channels=1))
    assert teacher.library == "module" and teacher(torch.rand(3, 1, 8, 8)).logits.shape == (3, 2)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("not a source!", "unknown teacher source 'not a source!'"),
        ("hf-hub:org/na me", "malformed Hub repo id 'org/na me'"),
        ("hf-hub:org--x/name", "malformed Hub repo id"),
        ("./no/such/folder", "teacher folder './no/such/folder' does not exist"),
        (42, "unknown teacher source of type int"),
    ],
)
def test_bad_sources(source, message):
    with pytest.raises(TeacherError, match=message):
        load_teacher(source)


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(TeacherError, match="has no config.json"):
        load_teacher(tmp_path)


def test_teacher_without_class_names(tmp_path, demo_zoo):
    folder = tmp_path / "nameless"
    shutil.copytree(demo_zoo[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("label_names", None)
    config["pretrained_cfg"].pop("label_names", None)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TeacherError, match="no class names in its files; pass class_names=\\[...\\] \\(5 names"):
        load_teacher(folder)
    assert load_teacher(folder, class_names=list("abcde")).class_names == list("abcde")
    with pytest.raises(TeacherError, match="has 5 outputs but 2 class names"):
        load_teacher(folder, class_names=["a", "b"])
    module = timm.create_model("test_efficientnet", num_classes=2)
    with pytest.raises(TeacherError, match="pass class_names"):
        load_teacher(module)


def test_text_model_is_not_an_image_teacher(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2, id2label={0: "neg", 1: "pos"})
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    with pytest.raises(TeacherError, match="'bert' model \\(BertForSequenceClassification\\), which is not an image"):
        load_teacher(tmp_path)


def test_module_that_fails_on_its_declared_input():
    with pytest.raises(TeacherError, match="fails on a 1x8x8 image batch.*is input_spec right"):
        load_teacher(torch.nn.Linear(5, 2), class_names=["a", "b"], input_spec=ImageSpec(size=8, channels=1))


def test_pickled_weights_are_refused(tmp_path, demo_zoo):
    folder = tmp_path / "pickled"
    shutil.copytree(demo_zoo[0], folder)
    (folder / "model.safetensors").unlink()
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(TeacherError, match="no .safetensors weights"):
        load_teacher(folder)


def test_remote_code_needs_explicit_consent(tmp_path, demo_zoo):
    folder = tmp_path / "remote"
    shutil.copytree(demo_zoo[1], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling.Custom"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TeacherError, match="trust_remote_code=True"):
        load_teacher(folder)
