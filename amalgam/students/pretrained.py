"""Where a student's first weights come from: a timm name (random weights, or timm's pretrained ones), a timm
Hub repo, a timm folder, or a timm model in Python.

:func:`build_student` turns what a user passes as ``student=`` into a :class:`~amalgam.students.Student` over the
union classes. A pretrained body keeps its weights, its normalisation and its input size (``input_size``
overrides the size) and its channels; its classifier is replaced by one over the union classes (or by the
method's heads). The student records where its body came from in ``origin``:

- ``None``: trained from scratch (``timm.create_model(name, pretrained=False)``);
- ``"hf-hub:org/name@<commit>"``: a Hub repo, also the form ``student_pretrained=True`` resolves a timm name to
  (timm's own Hub repo of the architecture's default weights);
- ``"local-dir:/path/to/folder"``: a local timm folder;
- ``"module:<class name>"``: a timm model passed as an ``nn.Module``.

``hf-hub:`` and ``local-dir:`` origins are themselves valid ``student=`` values, so a run's record says how to
start the same student again. A saved student never fetches them: ``Student.from_pretrained(folder)`` builds the
plain architecture and loads its own trained weights. Weights are read only from safetensors files (through the
teachers' checked folder loading), never from a pickle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from amalgam.errors import StudentError, TeacherError
from amalgam.hub import HUB_PREFIX, download_snapshot, split_hub_id
from amalgam.students.heads import Head
from amalgam.students.student import Student, check_architecture, default_input_size
from amalgam.teachers.formats import load_model_folder
from amalgam.teachers.preprocess import ImageSpec
from amalgam.teachers.sources import LOCAL_PREFIX

STUDENT_FILES = ["*.json", "*.safetensors"]  # a timm repo's config and weights; pickles are never fetched
SCRATCH = "trained from scratch"
FORMS = ("a timm architecture name (timm.list_models()), 'hf-hub:org/name[@revision]' (a timm Hub repo), a local "
         "timm folder (config.json with 'architecture' + model.safetensors, as timm.models.save_for_hf writes), "
         "or a timm model (timm.create_model(...))")


@dataclass(frozen=True)
class PretrainedBody:
    """A timm model with pretrained weights, and where they came from (a student's ``origin``)."""

    model: nn.Module
    origin: str

    @property
    def architecture(self) -> str:
        return self.model.pretrained_cfg["architecture"]

    @property
    def input_spec(self) -> ImageSpec:
        """The input the weights were trained on: timm's ``pretrained_cfg`` (channels, size, mean, std)."""
        return ImageSpec.from_timm_config(self.model.pretrained_cfg)


def check_student_source(student: str | os.PathLike, pretrained: bool = False) -> str:
    """Check a ``student=`` string without downloading or loading anything (``amalgam run`` does this before
    any data or teacher loads): a Hub id's form, a folder's ``config.json``, a timm name, and for
    ``pretrained`` that timm has Hub weights of it. Returns the text.

    >>> check_student_source("test_efficientnet")
    'test_efficientnet'
    >>> check_student_source("hf-hub:timm/mobilenetv3_small_100.lamb_in1k")
    'hf-hub:timm/mobilenetv3_small_100.lamb_in1k'
    >>> check_student_source("./no/such/student")
    Traceback (most recent call last):
    ...
    amalgam.errors.StudentError: student='./no/such/student' is no folder; expected a timm architecture name ...
    """
    text = os.fspath(student)
    if text.startswith(HUB_PREFIX):
        split_hub_id(text, "student", StudentError)
    elif _is_path(text):
        _folder(text)
    elif "/" in text:
        raise StudentError(f"student={text!r} is neither a timm name nor an existing folder; a Hub repo is written "
                           f"'hf-hub:{text}'")
    elif pretrained:
        _timm_weights_repo(text)
    else:
        check_architecture(text)
    return text


def pretrained_body(student: str | os.PathLike | nn.Module, pretrained: bool = False) -> PretrainedBody | None:
    """The pretrained timm model ``student`` names, or ``None`` for a timm name trained from scratch.

    Args:
        student: a timm name, ``hf-hub:org/name[@revision]``, a timm folder (``local-dir:`` optional), or a timm
            ``nn.Module``.
        pretrained: for a timm name, start from timm's pretrained weights of it (pulled from its Hub repo, such
            as ``timm/tf_efficientnet_lite0.in1k``); the other forms are pretrained already.

    Example:
        >>> pretrained_body("test_efficientnet") is None
        True
        >>> import timm
        >>> pretrained_body(timm.create_model("test_efficientnet")).origin
        'module:EfficientNet'
        >>> pretrained_body("hf-hub:timm/tf_efficientnet_lite0.in1k").origin  # doctest: +SKIP
        'hf-hub:timm/tf_efficientnet_lite0.in1k@...'
    """
    if isinstance(student, nn.Module):
        return PretrainedBody(_timm_module(student), f"module:{type(student).__name__}")
    if not isinstance(student, (str, os.PathLike)):
        raise StudentError(f"student of type {type(student).__name__} is none of the forms a student takes: {FORMS}")
    text = check_student_source(student, pretrained)
    if text.startswith(HUB_PREFIX):
        return _from_hub(text)
    if _is_path(text):
        folder = _folder(text)
        return PretrainedBody(_timm_folder(folder, text), f"{LOCAL_PREFIX}{folder}")
    if pretrained:
        return _from_hub(f"{HUB_PREFIX}{_timm_weights_repo(text)}", f"student_pretrained=True for {text!r}: ")
    return None


def build_student(
    student: str | os.PathLike | nn.Module,
    class_names: Sequence[str],
    *,
    pretrained: bool = False,
    input_size: int | Sequence[int] | None = None,
    data_size: Sequence[int] = (32, 32),
    channels: int = 3,
    heads: Sequence[Head | Mapping[str, Any]] | None = None,
    serve: str | None = None,
) -> Student:
    """The :class:`Student` ``student`` names, over ``class_names`` (with ``heads``/``serve`` if given).

    From scratch (a timm name, ``pretrained`` off) it takes the data's ``channels`` and an input of
    ``input_size`` (default: :func:`default_input_size` of ``data_size``). From a pretrained body (see
    :func:`pretrained_body`) it takes the body's weights, channels, mean and std, and its pretrained input size
    unless ``input_size`` is given; only the classifier (or the heads) start afresh.

    Example:
        >>> import timm, torch
        >>> body = timm.create_model("test_efficientnet")
        >>> student = build_student(body, ["cat", "dog"], input_size=64)
        >>> student.origin, student.input_spec.size, student.input_spec.channels
        ('module:EfficientNet', (64, 64), 3)
        >>> bool(torch.equal(student.model.conv_stem.weight, body.conv_stem.weight))
        True
        >>> build_student("test_efficientnet", ["cat", "dog"], channels=1, data_size=(8, 8)).origin is None
        True
    """
    body = pretrained_body(student, pretrained)
    if body is None:
        return Student(os.fspath(student), class_names,
                       input_size=input_size or default_input_size(data_size), channels=channels, heads=heads,
                       serve=serve)
    spec = body.input_spec
    built = Student(body.architecture, class_names, input_size=input_size or spec.size, channels=spec.channels,
                    mean=spec.mean, std=spec.std, heads=heads, serve=serve, origin=body.origin)
    load_body(built.model, body.model, body.origin)
    return built


def load_body(target: nn.Module, source: nn.Module, origin: str) -> None:
    """Copy every weight of the timm model ``source`` but its classifier into ``target`` (the same architecture
    with another classifier, or none); any other difference is an error naming ``origin``."""
    weights = {k: v for k, v in source.state_dict().items() if k not in classifier_keys(source)}
    try:
        missing, unexpected = target.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a shape mismatch: built with other model arguments than the student's
        raise StudentError(f"the pretrained weights of {origin} do not fit the student's "
                           f"{source.pretrained_cfg['architecture']} (timm's defaults, in_chans "
                           f"{source.pretrained_cfg['input_size'][0]}): {err}") from None
    missing = sorted(set(missing) - classifier_keys(target))
    if missing or unexpected:
        raise StudentError(f"the pretrained weights of {origin} do not match the student's "
                           f"{source.pretrained_cfg['architecture']}: missing {missing[:5]}, unexpected "
                           f"{sorted(unexpected)[:5]}")


def classifier_keys(model: nn.Module) -> set[str]:
    """The ``state_dict`` keys of a timm model's classifier (``get_classifier()``; two for distilled models).

    >>> import timm
    >>> sorted(classifier_keys(timm.create_model("test_efficientnet")))
    ['classifier.bias', 'classifier.weight']
    """
    head = model.get_classifier()
    heads = head if isinstance(head, tuple) else (head,)
    return {f"{name}.{key}" for name, module in model.named_modules() if any(module is h for h in heads)
            for key in module.state_dict()}


def origin_text(origin: str | None) -> str:
    """How a student's ``origin`` reads to people; a local folder by its name only (no local path in a card).

    >>> origin_text(None)
    'trained from scratch'
    >>> origin_text("hf-hub:timm/tf_efficientnet_lite0.in1k@0123456789abcdef0123456789abcdef01234567")
    'initialised from the pretrained weights of Hub `timm/tf_efficientnet_lite0.in1k` at revision `0123456789ab`'
    >>> origin_text("local-dir:/home/me/lite0")
    'initialised from the pretrained weights of local folder `lite0`'
    """
    if origin is None:
        return SCRATCH
    if origin.startswith(HUB_PREFIX):
        repo_id, _, revision = origin.removeprefix(HUB_PREFIX).partition("@")
        where = f"Hub `{repo_id}`" + (f" at revision `{revision[:12]}`" if revision else "")
    elif origin.startswith(LOCAL_PREFIX):
        where = f"local folder `{Path(origin.removeprefix(LOCAL_PREFIX)).name}`"
    else:
        where = f"a timm model passed in Python (`{origin.removeprefix('module:')}`)"
    return f"initialised from the pretrained weights of {where}"


def _is_path(text: str) -> bool:
    return text.startswith((LOCAL_PREFIX, ".", "/", "~")) or Path(text).expanduser().is_dir()


def _folder(text: str) -> Path:
    folder = Path(text.removeprefix(LOCAL_PREFIX)).expanduser().resolve()
    if not folder.is_dir():
        raise StudentError(f"student={text!r} is no folder; expected {FORMS}")
    if not (folder / "config.json").is_file():
        raise StudentError(f"student={text!r}: the folder has no config.json; a student folder is timm's layout "
                           "(config.json with 'architecture' + model.safetensors, as timm.models.save_for_hf "
                           "writes with safe_serialization=True)")
    return folder


def _timm_weights_repo(name: str) -> str:
    """The Hub repo of timm's pretrained weights for ``name`` (``arch`` or ``arch.tag``)."""
    from timm.models import get_pretrained_cfg

    check_architecture(name)
    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise StudentError(f"student_pretrained=True: timm has no Hub weights for {name!r} (amalgam reads "
                           "pretrained weights only from safetensors in Hub repos or folders); pass student="
                           "'hf-hub:org/name' or a timm folder with the weights, or train it from scratch "
                           "(student_pretrained=False)")
    return cfg.hf_hub_id


def _from_hub(text: str, why: str | None = None) -> PretrainedBody:
    repo_id, revision = split_hub_id(text, "student", StudentError)
    try:
        folder, commit = download_snapshot(repo_id, revision, STUDENT_FILES, "student", StudentError)
    except StudentError as err:
        raise StudentError(f"{why or f'student={text!r}: '}{err} Or start from a timm folder (student='./folder'), or from scratch (a "
                           "timm name without student_pretrained).") from None
    return PretrainedBody(_timm_folder(folder, text), f"{HUB_PREFIX}{repo_id}@{commit}" if commit else text)


def _timm_folder(folder: Path, text: str) -> nn.Module:
    try:
        loaded = load_model_folder(folder)
    except TeacherError as err:  # the folder checks are the teachers' own: one message, reworded for the student
        raise StudentError(f"student={text!r}: {err}") from None
    if loaded.library != "timm":
        raise StudentError(f"student={text!r} holds a {loaded.library} model ({loaded.architecture}); a student is a "
                           f"timm model: pass {FORMS}")
    return _timm_module(loaded.model)


def _timm_module(module: nn.Module) -> nn.Module:
    import timm

    cfg = getattr(module, "pretrained_cfg", None)
    architecture = cfg.get("architecture") if isinstance(cfg, Mapping) else None
    if not hasattr(module, "reset_classifier") or not architecture or not timm.is_model(architecture):
        raise StudentError(f"student={type(module).__name__} module is not a timm model (one with reset_classifier "
                           "and a pretrained_cfg naming its architecture), so amalgam cannot rebuild it as a saved "
                           f"student; pass {FORMS}")
    return module
