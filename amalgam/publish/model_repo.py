"""The model repo's folder: weights and config in amalgam's format or in timm's, and the model card."""

from __future__ import annotations

import shutil
from pathlib import Path

from amalgam.errors import PublishError
from amalgam.publish.card import DEFAULT_LICENSE, render_model_card
from amalgam.publish.run import RunRecord

STUDENT_FILES = ("config.json", "model.safetensors")


def fresh_folder(folder: Path) -> Path:
    """``folder``, emptied: an upload folder holds exactly what this publish wrote, nothing from an earlier one."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def write_model_folder(
    record: RunRecord,
    folder: Path,
    repo_id: str,
    *,
    timm_layout: bool = False,
    space_id: str | None = None,
    license: str = DEFAULT_LICENSE,
) -> Path:
    """Write the complete upload of model repo ``repo_id`` into ``folder`` (emptied first); returns ``folder``.

    Amalgam's format is the student folder as saved (``config.json`` of constructor arguments +
    ``model.safetensors``); timm's is :func:`write_timm_layout`. Either way the card replaces the mixin's
    default README.md.
    """
    fresh_folder(folder)
    if timm_layout:
        write_timm_layout(record, folder)
    else:
        if "pretrained_cfg" in record.student_config:  # transformers would take the repo for a timm model
            raise PublishError(f"{record.student_dir / 'config.json'} has a top-level 'pretrained_cfg' key; a "
                               "Student's config.json holds only its constructor arguments")
        for name in STUDENT_FILES:
            shutil.copyfile(record.student_dir / name, folder / name)
    card = render_model_card(record, repo_id, timm_layout=timm_layout, space_id=space_id, license=license)
    (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


def write_timm_layout(record: RunRecord, folder: Path) -> None:
    """The student's timm model as ``timm.models.save_for_hf`` writes it, safetensors only.

    ``config.json`` carries ``label_names`` and a ``pretrained_cfg`` with the student's input (channels, size,
    mean, std; the whole image resized, as amalgam does: ``crop_pct`` 1), so that
    ``timm.create_model("hf-hub:org/name", pretrained=True)`` loads it without amalgam.
    """
    from timm.models import save_for_hf

    from amalgam.students import Student

    student = Student.from_pretrained(record.student_dir)
    extra = sorted(set(student.state_dict()) - {f"model.{key}" for key in student.model.state_dict()})
    if extra:
        raise PublishError(f"the student has weights outside its timm model ({', '.join(extra[:3])}, ...), which "
                           "timm's format cannot hold; publish it in amalgam's format (without timm_export)")
    spec = student.input_spec
    data_config = {
        "input_size": (spec.channels, *spec.size),
        "mean": spec.mean * (spec.channels // len(spec.mean)),  # one value per channel, as timm expects
        "std": spec.std * (spec.channels // len(spec.std)),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }
    # The tag would otherwise be that of the architecture's ImageNet weights, which this student never had.
    model_config = {"label_names": student.class_names, "pretrained_cfg": {"tag": "amalgam"}}
    save_for_hf(student.model, folder, model_config=model_config, data_config=data_config, safe_serialization=True)
