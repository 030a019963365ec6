"""Recipe files (TOML or YAML) for ``amalgam run``: every key checked, unknown keys named.

A recipe, with every section optional (the default amalgamates the demo zoo on digits)::

    [[teachers]]                    # omit to use the demo zoo
    source = "hf-hub:org/cnn-digits-0to4"
    revision = "main"               # optional: branch, tag or commit
    class_names = ["0", "1"]        # optional: when the files carry none
    [data]
    name = "digits"                 # digits | fashion-mnist | a datasets id | an image folder (labeled or not)
    eval = "./eval-images"          # optional: labeled data to measure on (default: the test split of name)
    labeled_fraction = 0.0
    skip_unreadable = false         # true: leave unreadable image files out (counted) instead of stopping
    [student]
    architecture = "test_efficientnet"  # a timm name, "hf-hub:timm/<name>" or a timm folder (pretrained weights)
    pretrained = false              # for a timm name: start from timm's pretrained weights of it
    [method]
    name = "soft-targets"
    options = { temperature = 4.0 }
    [train]
    epochs = 10
    parts_lr = 0.03                 # optional: the method's adapters/blocks' own learning rate (default: lr)
    mixed_precision = "no"          # no | bf16 | fp16 (fp16 on GPUs only)
    grad_accumulation = 1           # batches per optimizer step
    checkpoint_every = 0            # optimizer steps between checkpoints (0: at the end of each epoch only)
    augment = "crop,flip"           # optional: consistent augmentation (crop, flip, mixup, cutmix); augment_views = 4
    # also: batch_size, lr, seed, weight_decay, cpu, num_workers (the fields of amalgam.config.TrainConfig)
    [output]
    dir = "runs"
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from amalgam.config import TrainConfig
from amalgam.errors import RecipeError
from amalgam.fields import check_types

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class TeacherEntry:
    source: str
    revision: str | None = None
    class_names: list[str] | None = None
    name: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_types(self)


@dataclass
class DataSection:
    name: str = "digits"
    labeled_fraction: float = 0.0
    image_size: int | None = None
    eval: str | None = None  # labeled data that measures the student (default: the test split of name)
    skip_unreadable: bool = False  # leave unreadable image files out (counted in metrics) instead of stopping

    def __post_init__(self) -> None:
        check_types(self)
        if not 0.0 <= self.labeled_fraction <= 1.0:
            raise ValueError(f"labeled_fraction must be within [0, 1], got {self.labeled_fraction}")
        _positive_or_none("image_size", self.image_size)


@dataclass
class StudentSection:
    architecture: str = "test_efficientnet"  # or a pretrained body: hf-hub:org/name, a timm folder
    input_size: int | None = None
    pretrained: bool = False  # a timm name from timm's pretrained weights

    def __post_init__(self) -> None:
        check_types(self)
        _positive_or_none("input_size", self.input_size)


@dataclass
class MethodSection:
    name: str = "soft-targets"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_types(self)


@dataclass
class OutputSection:
    dir: str = "runs"

    def __post_init__(self) -> None:
        check_types(self)


def _positive_or_none(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be a positive number of pixels (or left out), got {value}")


@dataclass
class Recipe:
    """A whole run. ``teachers`` empty means the demo zoo."""

    teachers: list[TeacherEntry] = field(default_factory=list)
    data: DataSection = field(default_factory=DataSection)
    student: StudentSection = field(default_factory=StudentSection)
    method: MethodSection = field(default_factory=MethodSection)
    train: TrainConfig = field(default_factory=TrainConfig)  # [train] is the training budget itself
    output: OutputSection = field(default_factory=OutputSection)
    label_mapping: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, Mapping):
        raise RecipeError(f"recipe: {where} must be a table of keys, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise RecipeError(
            f"recipe: unknown key {unknown[0]!r} in {where}; the keys of {where} are {sorted(known)}"
        )
    missing = [
        name for name, f in known.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in values
    ]
    if missing:
        raise RecipeError(f"recipe: {where} needs the key {missing[0]!r}")
    try:
        return cls(**values)
    except ValueError as err:  # a value out of range (TrainConfig checks its own)
        raise RecipeError(f"recipe: {where} {err}") from None


_SECTIONS = {
    "data": DataSection, "student": StudentSection, "method": MethodSection, "train": TrainConfig,
    "output": OutputSection,
}


def parse_recipe(values: Mapping[str, Any]) -> Recipe:
    """Build a :class:`Recipe` from parsed TOML/YAML, rejecting unknown keys with the section they were in.

    >>> parse_recipe({"train": {"epochs": 2}}).train.epochs
    2
    >>> parse_recipe({"train": {"epoch": 2}})  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    amalgam.errors.RecipeError: recipe: unknown key 'epoch' in [train]; ...
    """
    allowed = {"teachers", "label_mapping", *_SECTIONS}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise RecipeError(f"recipe: unknown top-level key {unknown[0]!r}; the recipe's keys are {sorted(allowed)}")
    teachers = values.get("teachers", [])
    if not isinstance(teachers, list):
        raise RecipeError("recipe: 'teachers' must be a list of tables ([[teachers]] in TOML)")
    mapping = values.get("label_mapping", {})
    if not isinstance(mapping, Mapping) or not all(isinstance(v, str) for v in mapping.values()):
        raise RecipeError("recipe: [label_mapping] must map class names to union class names")
    return Recipe(
        teachers=[_build(TeacherEntry, t, f"[[teachers]] #{i + 1}") for i, t in enumerate(teachers)],
        label_mapping={str(k): v for k, v in mapping.items()},
        **{name: _build(cls, values.get(name, {}), f"[{name}]") for name, cls in _SECTIONS.items()},
    )


def _against(folder: Path, text: str) -> str:
    """``text`` resolved against the recipe's ``folder`` when it is a relative path (``./zoo/cnn``, or a name
    that exists there); Hub ids, built-in names and absolute paths stay as they are."""
    path = Path(text).expanduser()
    if text.startswith("hf-hub:") or path.is_absolute():
        return text
    if text.startswith(".") or (folder / path).exists():
        return str((folder / path).resolve())
    return text


def load_recipe(path: str | Path) -> Recipe:
    """Read a ``.toml`` or ``.yaml``/``.yml`` recipe file. Relative paths in it (teacher folders, the data
    folder, a student folder, the output folder) are read from the recipe's folder, wherever ``amalgam run`` is
    started."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} not found")
    import yaml

    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise RecipeError(f"recipe file {str(path)!r} must end in .toml, .yaml or .yml")
    text = path.read_text()
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else (yaml.safe_load(text) or {})
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise RecipeError(f"recipe file {str(path)!r} is not valid: {err}") from None
    recipe = parse_recipe(values)
    folder = path.resolve().parent
    for teacher in recipe.teachers:
        teacher.source = _against(folder, teacher.source)
    recipe.data.name = _against(folder, recipe.data.name)
    recipe.student.architecture = _against(folder, recipe.student.architecture)
    if recipe.data.eval is not None:
        recipe.data.eval = _against(folder, recipe.data.eval)
    if "dir" in (values.get("output") or {}) and not Path(recipe.output.dir).expanduser().is_absolute():
        recipe.output.dir = str(folder / recipe.output.dir)
    return recipe
