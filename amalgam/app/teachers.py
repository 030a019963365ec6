"""Choosing teachers in the app: load each source once, describe it, and show the union label space."""

from __future__ import annotations

import threading
from typing import Sequence

from amalgam.errors import TeacherError
from amalgam.teachers import LabelSpace, Teacher, load_teacher
from amalgam.zoo import build_demo_zoo

TEACHER_COLUMNS = ["teacher", "library", "architecture", "parameters", "input", "classes", "source"]
MAX_CLASSES_SHOWN = 12


class TeacherCatalog:
    """Teachers by source (Hub id or folder), loaded once per process and shared by every session and run.

    Sharing is safe because a :class:`Teacher` is frozen: it never trains and keeps no state between calls.

    Example:
        >>> catalog = TeacherCatalog()
        >>> catalog.load("   ")
        Traceback (most recent call last):
        ...
        amalgam.errors.TeacherError: enter a teacher: a Hub id (org/name or hf-hub:org/name@revision) or a model folder
    """

    def __init__(self) -> None:
        self._teachers: dict[str, Teacher] = {}
        self._lock = threading.Lock()
        self._zoo_lock = threading.Lock()

    def load(self, source: str) -> Teacher:
        """The teacher at ``source``, loaded on first use (raises :class:`TeacherError` with the reason)."""
        source = source.strip()
        if not source:
            raise TeacherError("enter a teacher: a Hub id (org/name or hf-hub:org/name@revision) or a model folder")
        with self._lock:  # one load at a time, so two sessions never fetch the same repo twice
            if source not in self._teachers:
                self._teachers[source] = load_teacher(source)
            return self._teachers[source]

    def demo_sources(self) -> list[str]:
        """The folders of the demo zoo's two teachers, trained on first use (about 20 s on 2 CPU cores)."""
        with self._zoo_lock:  # two sessions must not train the zoo into the same folder at once
            return [str(folder) for folder in build_demo_zoo(progress=False)]


def reload_source(described: dict) -> str:
    """The source that loads a teacher again from its ``describe()`` record in a run's ``run.json``.

    A Hub teacher is pinned to the revision the run used; a folder teacher is loaded from its folder.

    >>> reload_source({"repo_id": "org/cnn", "revision": "a" * 40, "source": "org/cnn@aaaaaaaaaaaa"})[:22]
    'hf-hub:org/cnn@aaaaaaa'
    >>> reload_source({"repo_id": None, "revision": None, "source": "/zoo/vit"})
    '/zoo/vit'
    """
    if described.get("repo_id"):
        revision = described.get("revision")
        return f"hf-hub:{described['repo_id']}" + (f"@{revision}" if revision else "")
    return str(described["source"])


def human_count(n: int) -> str:
    """A parameter count for people.

    >>> human_count(950), human_count(12_345), human_count(4_200_000)
    ('950', '12.3 k', '4.20 M')
    """
    if n >= 1_000_000:
        return f"{n / 1e6:.2f} M"
    if n >= 1_000:
        return f"{n / 1e3:.1f} k"
    return str(n)


def teacher_rows(teachers: Sequence[Teacher]) -> list[list[str]]:
    """One table row per teacher: name, library, architecture, size, input, classes and source."""
    rows = []
    for teacher in teachers:
        info = teacher.describe()
        spec = info["input"]
        classes = info["classes"]
        shown = ", ".join(classes[:MAX_CLASSES_SHOWN]) + (f" ... ({len(classes)})" if len(classes) > MAX_CLASSES_SHOWN
                                                          else "")
        grey_or_rgb = "grey" if spec["channels"] == 1 else "RGB"
        rows.append([info["name"], info["library"], info["architecture"], human_count(info["parameters"]),
                     f"{grey_or_rgb} {spec['size'][0]}x{spec['size'][1]}", shown, info["source"]])
    return rows


def union_markdown(teachers: Sequence[Teacher]) -> str:
    """The union label space as Markdown: every class, and the ones several teachers know marked with them.

    Example:
        >>> import timm, torch
        >>> def teacher(name, classes):
        ...     model = timm.create_model("test_resnet", num_classes=len(classes))
        ...     return load_teacher(model, class_names=classes, name=name)
        >>> print(union_markdown([teacher("a", ["cat", "dog"]), teacher("b", ["Dog", "bird"])]))
        **Union label space: 3 classes** from 2 teachers, 1 shared
        <BLANKLINE>
        cat · **dog** (a, b) · bird
    """
    if not teachers:
        return "*No teachers chosen yet: the union of their classes appears here as you add them.*"
    space = LabelSpace.union([t.class_names for t in teachers])
    overlaps = space.overlaps()
    names = []
    for name in space.class_names:
        owners = overlaps.get(name)
        names.append(f"**{name}** ({', '.join(teachers[k].name for k in owners)})" if owners else name)
    plural = "s" if len(teachers) > 1 else ""
    return (f"**Union label space: {space.num_classes} classes** from {len(teachers)} teacher{plural}, "
            f"{len(overlaps)} shared\n\n" + " · ".join(names))
