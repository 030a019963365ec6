"""Methods by name, so recipes, the CLI and the app all name them the same way."""

from __future__ import annotations

import inspect
from typing import Any, Sequence

from amalgam.errors import MethodError
from amalgam.methods.base import Method
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher

_METHODS: dict[str, type[Method]] = {}
_BUILT_IN = ("label_space", "teachers")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a :class:`Method` subclass available under ``cls.name``."""
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"method class {cls.__name__} needs a unique name, got {cls.name!r}")
    _METHODS[cls.name] = cls
    return cls


def available_methods() -> dict[str, type[Method]]:
    """Registered methods by name."""
    return dict(sorted(_METHODS.items()))


def method_options(name: str) -> dict[str, Any]:
    """The options a method accepts, with their defaults."""
    signature = inspect.signature(get_method(name).__init__)
    return {
        param.name: param.default
        for param in list(signature.parameters.values())[1:]
        if param.name not in _BUILT_IN and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
    }


def get_method(name: str) -> type[Method]:
    if name not in _METHODS:
        raise MethodError(f"unknown method {name!r}; available methods: {', '.join(available_methods())}")
    return _METHODS[name]


def create_method(
    name: str, label_space: LabelSpace, teachers: Sequence[Teacher], options: dict[str, Any] | None = None
) -> Method:
    """Build method ``name``; options are checked against its signature first, so a typo fails at once."""
    cls = get_method(name)
    options = dict(options or {})
    accepted = method_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise MethodError(
            f"method {name!r} has no option(s) {unknown}; its options are "
            + ", ".join(f"{k}={v!r}" for k, v in accepted.items())
        )
    return cls(label_space, teachers, **options)

