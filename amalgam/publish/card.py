"""The student's model card: what it was distilled from, how, on what, how well, and how to load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from amalgam.engine.label_free import LABEL_FREE, label_free_rows
from amalgam.errors import PublishError
from amalgam.publish.render import render_template
from amalgam.publish.run import RunRecord
from amalgam.students.pretrained import origin_text

DEFAULT_LICENSE = "apache-2.0"
CARD_TAGS = ("knowledge-amalgamation", "distillation", "image-classification", "amalgam")


def card_metadata(*, timm_layout: bool = False, license: str = DEFAULT_LICENSE) -> dict[str, Any]:
    """The card's YAML header.

    The teachers are named in the body and in no ``base_model``: the Hub knows no "distillation" relation,
    and several base models would read as a merge (shared/HUB.md).

    >>> card_metadata()["tags"]
    ['knowledge-amalgamation', 'distillation', 'image-classification', 'amalgam']
    """
    return {
        "library_name": "timm" if timm_layout else "amalgam",
        "pipeline_tag": "image-classification",
        "license": license,
        "tags": [*CARD_TAGS, *(["timm"] if timm_layout else [])],
    }


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """``(metadata, body)`` of a card whose YAML header is checked by PyYAML and by huggingface_hub.

    >>> split_card("---\\nlicense: mit\\n---\\n# hello\\n")
    ({'license': 'mit'}, '# hello\\n')
    """
    from huggingface_hub import ModelCard

    if not text.startswith("---\n") or "\n---\n" not in text[3:]:
        raise PublishError("the model card must start with a YAML block between two '---' lines")
    header, body = text[4:].split("\n---\n", 1)
    try:
        metadata = yaml.safe_load(header)
        card_data = ModelCard(text, ignore_metadata_errors=False).data.to_dict()
    except Exception as err:  # noqa: BLE001 - PyYAML and huggingface_hub raise several types for a bad header
        raise PublishError(f"the model card's YAML header is invalid: {err}") from None
    if not isinstance(metadata, dict) or card_data != metadata:
        raise PublishError(f"the model card's YAML header does not read back as written: {metadata!r}")
    return metadata, body


def render_model_card(
    record: RunRecord,
    repo_id: str,
    *,
    timm_layout: bool = False,
    space_id: str | None = None,
    license: str = DEFAULT_LICENSE,
) -> str:
    """The README.md of the model repo ``repo_id``, checked before it is returned.

    Example:
        >>> record = RunRecord.for_student(Path("student"), {"architecture": "test_efficientnet",
        ...     "class_names": ["cat", "dog"], "input_size": 32, "channels": 3, "mean": [0.5], "std": [0.5]})
        >>> card = render_model_card(record, "org/cats-and-dogs")
        >>> split_card(card)[0]["pipeline_tag"]
        'image-classification'
        >>> 'Student.from_pretrained("org/cats-and-dogs")' in card
        True
        >>> "Student: `test_efficientnet`, trained from scratch." in card
        True
    """
    metadata = card_metadata(timm_layout=timm_layout, license=license)
    card = render_template(
        "model_card.md.j2",
        metadata=yaml.safe_dump(metadata, sort_keys=False).strip(),
        **card_context(record, repo_id, timm_layout=timm_layout, space_id=space_id),
    )
    split_card(card)
    return card


def card_context(record: RunRecord, repo_id: str, *, timm_layout: bool, space_id: str | None) -> dict[str, Any]:
    """Plain values for the template, so that it only lays them out."""
    run = record.description
    student = run["student"]
    teachers = run.get("teachers", [])
    names = [t["name"] for t in teachers]
    return {
        "repo_id": repo_id,
        "name": repo_id.split("/")[-1],
        "timm_layout": timm_layout,
        "space_id": space_id,
        "student": {"architecture": student["architecture"], "parameters": student.get("parameters"),
                    "input": describe_input(student["input"]), "origin": origin_text(student.get("origin"))},
        "channels": student["input"]["channels"],
        "classes": record.class_names,
        "teachers": [
            {"name": t["name"], "origin": teacher_origin(t), "library": t["library"],
             "architecture": t["architecture"], "parameters": t["parameters"],
             "input": describe_input(t["input"]), "classes": t["classes"]}
            for t in teachers
        ],
        "overlaps": {name: [names[k] for k in owners]
                     for name, owners in run.get("label_space", {}).get("overlaps", {}).items()},
        "method": method_info(run["method"]) if "method" in run else None,
        "data": {**run["data"], "display": data_origin(run["data"]["name"]),
                 "eval_display": data_origin(run["data"]["eval"]) if run["data"].get("eval") else None}
        if "data" in run else None,
        "train": run.get("train"),
        "results": results_rows(record.metrics) if record.metrics else [],
        "measure": "agreement" if (record.metrics or {}).get("kind") == LABEL_FREE else "accuracy",
        "per_class": (record.metrics or {}).get("student", {}).get("per_class", {}),
        "created": run.get("created"),
    }


def describe_input(spec: Mapping[str, Any]) -> str:
    """``grey 32x32, mean 0.5, std 0.5``-style text for an ``ImageSpec.to_dict()``.

    >>> describe_input({"size": [16, 16], "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    'RGB 16x16, mean 0.5, std 0.5'
    >>> describe_input({"size": [224, 224], "channels": 3, "mean": [0.5], "std": [0.5], "resize": "short-side",
    ...                 "resize_size": [256, 256], "interpolation": "bicubic"})
    'RGB 224x224, mean 0.5, std 0.5 (resized to 256x256 keeping its aspect, then centre-cropped; bicubic)'
    """
    def values(v: list[float]) -> str:
        return f"{v[0]:g}" if len(set(v)) == 1 else "(" + ", ".join(f"{x:g}" for x in v) + ")"

    colour = "grey" if spec["channels"] == 1 else "RGB"
    height, width = spec["size"]
    text = f"{colour} {height}x{width}, mean {values(spec['mean'])}, std {values(spec['std'])}"
    if spec.get("resize") in ("short-side", "cover", "fit"):  # its own eval transform, as its library gives it
        before = "x".join(map(str, spec.get("resize_size") or spec["size"]))
        text += f" (resized to {before} keeping its aspect, then centre-cropped; {spec.get('interpolation', 'bilinear')})"
    return text


def teacher_origin(teacher: Mapping[str, Any]) -> str:
    """Where a teacher came from; a local folder by its name only, so no local path reaches a public card.

    >>> teacher_origin({"repo_id": "org/cnn", "revision": "0123abcd", "source": "org/cnn@0123abcd"})
    'Hub `org/cnn` at revision `0123abcd`'
    >>> teacher_origin({"repo_id": None, "revision": None, "source": "/home/me/zoo/cnn"})
    'local folder `cnn`'
    """
    if teacher.get("repo_id"):
        return f"Hub `{teacher['repo_id']}` at revision `{teacher.get('revision') or 'main'}`"
    if teacher.get("source") == "module":
        return "a Python module"
    return f"local folder `{Path(teacher['source']).name}`"


def data_origin(name: str) -> str:
    """The data set's name for the card: an absolute folder path shows as its last part only."""
    return f"local folder `{Path(name).name}`" if Path(name).is_absolute() else f"`{name}`"


def method_info(method: Mapping[str, Any]) -> dict[str, Any]:
    """The run's method with its summary and paper, as the run recorded them."""
    return {"name": method["name"], "options": method.get("options", {}),
            "summary": method.get("summary"), "paper": method.get("paper")}


def results_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Student, each teacher on its own classes, the teachers together, and the oracle, as in ``amalgam run``;
    for a run without labels, its label-free agreements."""
    if metrics.get("kind") == LABEL_FREE:
        return [{"model": what, "evaluated_on": on, "accuracy": value} for what, on, value in label_free_rows(metrics)]
    union = f"all union classes ({metrics['test_samples']} images)"
    student = metrics["student"]
    rows = [{"model": f"**student** `{student['architecture']}`", "evaluated_on": union,
             "accuracy": student["accuracy"]}]
    rows += [{"model": f"teacher `{name}`", "evaluated_on": f"its own classes ({t['test_samples']} images)",
              "accuracy": t["accuracy_on_own_classes"]} for name, t in metrics["teachers"].items()
             if t["test_samples"]]  # a teacher none of whose classes occur in the test data has no accuracy
    rows.append({"model": "teachers together (mean of their probabilities)", "evaluated_on": union,
                 "accuracy": metrics["ensemble"]["accuracy"]})
    if "concatenated" in metrics:
        rows.append({"model": "teachers' concatenated logits (one classifier)", "evaluated_on": union,
                     "accuracy": metrics["concatenated"]["accuracy"]})
    rows.append({"model": "teacher oracle (reference)", "evaluated_on": union,
                 "accuracy": metrics["oracle"]["accuracy"]})
    return rows
