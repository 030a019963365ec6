"""Building a model from a folder, by the layout its ``config.json`` declares.

Two layouts are read:

- **timm**: ``architecture`` (+ ``pretrained_cfg``, ``label_names``), loaded with
  ``timm.create_model("local-dir:...")``.
- **transformers image classification**: ``model_type`` / ``architectures``, loaded with
  ``AutoModelForImageClassification`` (``trust_remote_code`` only when the caller asks for it by name).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from amalgam.errors import TeacherError
from amalgam.teachers.preprocess import ImageSpec

_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


@dataclass
class LoadedModel:
    """A model built from a folder, with what its files say about it."""

    model: nn.Module
    library: str  # "timm" | "transformers" | "module"
    architecture: str
    input_spec: ImageSpec
    class_names: list[str] | None
    suggested_taps: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # what it was built from: its identity in the knowledge cache


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise TeacherError(
            f"{folder} has no config.json, so amalgam cannot tell how to build the model. A teacher folder is "
            "either timm's layout (config.json with 'architecture' + model.safetensors) or a transformers "
            "image classifier (save_pretrained). For a model you have in Python, pass the nn.Module to "
            "load_teacher(module, class_names=..., input_spec=...)."
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TeacherError(f"{path} is not valid JSON: {err}") from None


def _safetensors_files(folder: Path, library: str) -> list[Path]:
    """The safetensors files the model is loaded from (and only those: a pickled ``.bin`` beside them is never
    read), each checked to be a readable safetensors file. timm: ``model.safetensors``, else the folder's only
    ``.safetensors`` file; transformers: ``model.safetensors`` or the shards its index names."""
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise TeacherError(
            f"{folder} has no .safetensors weights. amalgam does not load pickled weights (.bin/.pth) from "
            "folders or the Hub; convert them with safetensors.torch.save_file first."
        )
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif library == "transformers" and index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as err:
            raise TeacherError(f"{index} is not a safetensors index (a 'weight_map' of tensor -> file): {err}") from None
        files = [folder / shard for shard in shards]
    elif library == "timm" and len(found) == 1:
        files = found
    else:
        raise TeacherError(
            f"{folder} has no model.safetensors, and amalgam will not guess which of {[f.name for f in found]} "
            f"holds the {library} model's weights: name the weights file model.safetensors."
        )
    for file in files:
        check_safetensors(file)
    return files


def check_safetensors(path: Path) -> None:
    """Raise a :class:`TeacherError` naming ``path`` unless it is a complete safetensors file (its header parses
    and every tensor it declares lies inside the file): an empty, truncated or corrupted download."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise TeacherError(f"weights file {path} is missing (named by the model's safetensors index)")
    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except (SafetensorError, OSError, ValueError) as err:
        size = path.stat().st_size
        raise TeacherError(
            f"weights file {path} ({size} bytes) is not a complete safetensors file ({err}): the download or copy "
            "was cut short or the file is damaged. Download it again (for a Hub teacher: delete it from the HF "
            "cache, or `hf download` the repo with --force-download)."
        ) from None


def load_model_folder(folder: Path, trust_remote_code: bool = False) -> LoadedModel:
    """Build the model stored in ``folder`` (timm or transformers layout)."""
    config = read_config(folder)
    if "architecture" in config:
        return _load_timm(folder, config)
    if "model_type" in config or "architectures" in config:
        return _load_transformers(folder, config, trust_remote_code)
    raise TeacherError(
        f"{folder}/config.json is neither timm's layout (no 'architecture' key) nor a transformers config (no "
        "'model_type'); amalgam cannot tell which library the model belongs to."
    )


def _load_timm(folder: Path, config: dict) -> LoadedModel:
    import timm

    (weights,) = _safetensors_files(folder, "timm")
    try:  # the checked file, not timm's own choice (which prefers pytorch_model.bin to other .safetensors names)
        model = timm.create_model(f"local-dir:{folder}", pretrained=True,
                                  pretrained_cfg_overlay={"source": "file", "file": str(weights)})
    except RuntimeError as err:
        raise TeacherError(f"timm could not load {folder} with the weights of {weights.name}: {err}") from None
    cfg = model.pretrained_cfg
    labels = cfg.get("label_names") or config.get("label_names")
    if isinstance(labels, dict):  # timm allows {index: name} when indices have gaps
        labels = [labels[k] for k in sorted(labels, key=int)]
    return LoadedModel(
        model=model,
        library="timm",
        architecture=config["architecture"],
        input_spec=ImageSpec.from_timm_config(cfg),
        class_names=list(labels) if labels else None,
        suggested_taps=[info["module"] for info in getattr(model, "feature_info", []) if info.get("module")],
        files=[folder / "config.json", weights],
    )


def _load_transformers(folder: Path, config: dict, trust_remote_code: bool) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForImageClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    if "auto_map" in config and not trust_remote_code:
        raise TeacherError(
            f"{folder} needs its own Python code to load (config.json has 'auto_map'). amalgam runs no remote "
            "code unless you pass trust_remote_code=True, together with a pinned revision you have reviewed."
        )
    model_type = config.get("model_type")
    if not trust_remote_code and model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        raise TeacherError(
            f"{folder} holds a {model_type!r} model ({', '.join(config.get('architectures') or ['?'])}), which "
            "is not an image classifier: amalgam's image task needs teachers that map images to class logits "
            "(transformers' AutoModelForImageClassification, or a timm model)."
        )
    weights = _safetensors_files(folder, "transformers")
    hf_config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForImageClassification.from_pretrained(
            folder, config=hf_config, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (RuntimeError, OSError, ValueError) as err:
        hint = ""
        if "id2label" not in config and "num_labels" not in config:
            hint = (" Its config.json has no id2label, so transformers builds a 2-class classifier that the "
                    "weights may not fit: add id2label (one name per output) to config.json.")
        raise TeacherError(f"transformers could not load {folder} from {[w.name for w in weights]}: "
                           f"{str(err).strip().splitlines()[0]}.{hint}") from None
    processor_path = folder / "preprocessor_config.json"
    processor = json.loads(processor_path.read_text()) if processor_path.is_file() else {}
    if not processor:
        processor = {"size": getattr(hf_config, "image_size", 224)}
    id2label = getattr(hf_config, "id2label", None) or {}
    labels = [id2label[i] for i in sorted(id2label, key=int)]
    if not labels or all(_DEFAULT_LABEL.match(str(name)) for name in labels):
        labels = None  # transformers fills LABEL_0.. when a model was saved without names
    num_layers = getattr(hf_config, "num_hidden_layers", None) or len(getattr(hf_config, "depths", []) or [])
    return LoadedModel(
        model=model,
        library="transformers",
        architecture=(config.get("architectures") or [model_type])[0],
        input_spec=ImageSpec.from_transformers_processor(processor, getattr(hf_config, "num_channels", 3)),
        class_names=labels,
        suggested_taps=[f"hidden_states.{i}" for i in range(num_layers + 1)] if num_layers else [],
        files=[folder / "config.json", *([processor_path] if processor_path.is_file() else []), *weights,
               *sorted(folder.glob("*.py"))],
    )
