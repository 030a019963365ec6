"""The union label space of several teachers, with an index map per teacher.

Nothing here concatenates logits by position: a class is the same class in two teachers when its name is the
same after normalisation (case, spaces, ``_`` and ``-`` do not count), or when an explicit mapping says so.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from amalgam.errors import LabelSpaceError

Mapping_ = Mapping[str, str]


def normalize_class_name(name: str) -> str:
    """The key under which two class names count as the same class: case, spaces, ``_``, ``-`` and ``/`` do not
    count (a folder cannot be named ``T-shirt/top``, so ``T-shirt_top/`` holds that class).

    >>> normalize_class_name("  Ankle_boot ") == normalize_class_name("ankle-Boot")
    True
    >>> normalize_class_name("T-shirt/top") == normalize_class_name("T-shirt_top")
    True
    """
    return re.sub(r"[\s_\-/\\]+", " ", str(name)).strip().casefold()


def distinct_class_names(names: Sequence[str]) -> list[str]:
    """A teacher's class names with repeats kept apart: the second class whose name normalises like an earlier
    one becomes ``"name (2)"``, the third ``"name (3)"`` (ImageNet has two classes called "crane": a bird and a
    machine). A label mapping can also address a class by its index, ``"#517"``.

    >>> distinct_class_names(["crane", "cat", "Crane", "crane"])
    ['crane', 'cat', 'Crane (2)', 'crane (3)']
    """
    seen: dict[str, int] = {}
    taken = {normalize_class_name(n) for n in names}
    result = []
    for name in names:
        key = normalize_class_name(name)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 1:
            result.append(str(name))
            continue
        count = seen[key]
        while normalize_class_name(f"{name} ({count})") in taken:  # a real class may already be called that
            count += 1
        taken.add(normalize_class_name(f"{name} ({count})"))
        result.append(f"{name} ({count})")
    return result


def _is_index_key(key: str) -> bool:
    """Whether a mapping key addresses a class by index (``"#517"``)."""
    return key.startswith("#") and key[1:].isdigit()


def _normalized_mapping(mapping: Mapping_ | None, where: str) -> dict[str, str]:
    """Mapping keys normalised (``"#index"`` keys kept as they are); two keys that normalise alike but map to
    different targets conflict."""
    result: dict[str, str] = {}
    for source, target in (mapping or {}).items():
        key = str(source).strip() if _is_index_key(str(source).strip()) else normalize_class_name(source)
        if key in result and normalize_class_name(result[key]) != normalize_class_name(target):
            raise LabelSpaceError(
                f"label mapping{where} maps {source!r} to {target!r} but an equivalent name to {result[key]!r}; "
                "give each class one target."
            )
        result[key] = str(target)
    return result


def _warn_split_classes(teacher_classes: Sequence[Sequence[str]], indices: Sequence[Sequence[int]],
                        names: Sequence[str]) -> None:
    """Warn when a class that several teachers share by name became different union classes (a per-teacher
    mapping renamed it for some of them only): the student then learns two classes for one."""
    targets: dict[str, set[int]] = {}
    for classes, row in zip(teacher_classes, indices):
        for raw, j in zip(classes, row):
            targets.setdefault(normalize_class_name(raw), set()).add(j)
    for key, union in targets.items():
        if len(union) > 1:
            warnings.warn(f"class {key!r}, which several teachers share, became the separate union classes "
                          f"{[names[j] for j in sorted(union)]} through the label mapping: if they are one class, "
                          "map it alike for every teacher", stacklevel=3)


@dataclass(frozen=True)
class LabelSpace:
    """Union of the teachers' classes.

    ``class_names[j]`` is the display name of union class ``j``; ``teacher_indices[k][c]`` is the union index of
    teacher ``k``'s class ``c`` (``idx_k`` in shared/METHODS.md §0.1).

    Example:
        >>> space = LabelSpace.union([["cat", "dog"], ["Dog", "bird"]])
        >>> space.class_names, space.teacher_indices
        (('cat', 'dog', 'bird'), ((0, 1), (1, 2)))
        >>> LabelSpace.union([["tee"], ["T-shirt"]], mapping={"tee": "T-shirt"}).class_names
        ('T-shirt',)
    """

    class_names: tuple[str, ...]
    teacher_indices: tuple[tuple[int, ...], ...]

    @classmethod
    def union(
        cls,
        teacher_classes: Sequence[Sequence[str]],
        mapping: Mapping_ | Sequence[Mapping_ | None] | None = None,
    ) -> "LabelSpace":
        """Build the union of ``teacher_classes`` (one list of class names per teacher).

        ``mapping`` renames or merges classes before the union: one dict ``{class name: union name}`` for every
        teacher, or a list with one dict (or ``None``) per teacher, whose keys may also address a class by its
        index in that teacher's outputs (``{"#517": "crane (machine)"}``). Raises :class:`LabelSpaceError` when a
        mapping names a class no teacher has, maps equivalent names to different targets, or would merge two
        classes of the same teacher.
        """
        if not teacher_classes:
            raise LabelSpaceError("a label space needs at least one teacher's class names")
        if mapping is None or isinstance(mapping, Mapping):
            shared = _normalized_mapping(mapping, "")
            if any(_is_index_key(key) for key in shared):
                raise LabelSpaceError(
                    f"label mapping keys {sorted(k for k in shared if _is_index_key(k))} address a class by index, "
                    "which differs between teachers: give a list with one mapping per teacher (None for the others)"
                )
            per_teacher = [shared] * len(teacher_classes)
            unused = set(shared)
        else:
            if len(mapping) != len(teacher_classes):
                raise LabelSpaceError(
                    f"a per-teacher label mapping needs one entry per teacher ({len(teacher_classes)}), "
                    f"got {len(mapping)}"
                )
            per_teacher = [_normalized_mapping(m, f" of teacher {k}") for k, m in enumerate(mapping)]
            unused = set()

        names: list[str] = []
        index_of: dict[str, int] = {}
        indices: list[tuple[int, ...]] = []
        for k, classes in enumerate(teacher_classes):
            teacher_map = per_teacher[k]
            taken: dict[int, str] = {}
            row = []
            for c, raw in enumerate(classes):
                key = normalize_class_name(raw)
                by_index = f"#{c}" if f"#{c}" in teacher_map else None
                target = teacher_map.get(by_index or key, str(raw))
                unused.discard(key)
                target_key = normalize_class_name(target)
                if target_key not in index_of:
                    index_of[target_key] = len(names)
                    names.append(target)
                j = index_of[target_key]
                if j in taken:
                    raise LabelSpaceError(
                        f"teacher {k}'s classes {taken[j]!r} and {raw!r} would both become union class "
                        f"{names[j]!r}; a teacher's outputs must stay distinct (check the label mapping, or the "
                        "teacher's class names)."
                    )
                taken[j] = str(raw)
                row.append(j)
            if mapping is not None and not isinstance(mapping, Mapping):
                missing = set(teacher_map) - {normalize_class_name(c) for c in classes} - {
                    f"#{c}" for c in range(len(classes))}
                if missing:
                    raise LabelSpaceError(
                        f"label mapping of teacher {k} names classes it does not have: {sorted(missing)}; "
                        f"its classes are {list(classes)}"
                    )
            indices.append(tuple(row))
        _warn_split_classes(teacher_classes, indices, names)
        if unused:
            raise LabelSpaceError(
                f"label mapping names classes no teacher has: {sorted(unused)}; check the spelling against the "
                "teachers' class names."
            )
        return cls(tuple(names), tuple(indices))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def index_of(self, name: str) -> int | None:
        """Union index of a class name (normalised), or ``None`` if no teacher has it."""
        key = normalize_class_name(name)
        for j, candidate in enumerate(self.class_names):
            if normalize_class_name(candidate) == key:
                return j
        return None

    def map_classes(self, names: Sequence[str]) -> list[int]:
        """Union index of each of a data set's class ``names``, -1 for a class no teacher knows.

        >>> LabelSpace.union([["cat", "dog"]]).map_classes(["dog", "bird"])
        [1, -1]
        """
        return [-1 if (j := self.index_of(name)) is None else j for name in names]

    def index_tensor(self, teacher: int, device: torch.device | str | None = None) -> torch.Tensor:
        """``idx_k`` as a LongTensor."""
        return torch.tensor(self.teacher_indices[teacher], dtype=torch.long, device=device)

    def teachers_of(self, j: int) -> list[int]:
        """The teachers that know union class ``j``."""
        return [k for k, row in enumerate(self.teacher_indices) if j in row]

    def overlaps(self) -> dict[str, list[int]]:
        """Union classes known to more than one teacher, with those teachers."""
        shared = {}
        for j, name in enumerate(self.class_names):
            owners = self.teachers_of(j)
            if len(owners) > 1:
                shared[name] = owners
        return shared

    def membership(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``K x C`` 0/1 matrix: does teacher ``k`` know union class ``j``."""
        matrix = torch.zeros(len(self.teacher_indices), self.num_classes, device=device)
        for k, row in enumerate(self.teacher_indices):
            matrix[k, list(row)] = 1.0
        return matrix
