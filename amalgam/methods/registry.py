"""Methods by name, so recipes, the CLI and the app all name them the same way."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

from amalgam.errors import MethodError
from amalgam.methods.base import Method, build_options, option_choices, option_defaults
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher

_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a :class:`Method` subclass available under ``cls.name``.

    Registering a name again replaces the method, with a warning (as timm's ``register_model`` does), so a
    notebook cell that redefines a method can be run twice.
    """
    if not cls.name:
        raise ValueError(f"method class {cls.__name__} needs a name (its registry key)")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        warnings.warn(f"method {cls.name!r} was registered already ({_METHODS[cls.name].__qualname__}); "
                      f"{cls.__qualname__} replaces it", stacklevel=2)
    _METHODS[cls.name] = cls
    return cls


def available_methods(family: str | None = None) -> dict[str, type[Method]]:
    """Registered methods by name (those of one ``family`` when given: ``"targets"``, ``"features"``,
    ``"heads"``, or ``"custom"`` for methods registered outside amalgam)."""
    return {name: cls for name, cls in sorted(_METHODS.items()) if family is None or method_family(cls) == family}


def method_family(cls: type[Method]) -> str:
    """The family a method belongs to: its ``family``, else its sub-package of ``amalgam.methods``.

    >>> method_family(get_method("feed")), method_family(get_method("soft-targets"))
    ('features', 'targets')
    """
    if cls.family:
        return cls.family
    parts = cls.__module__.split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["amalgam", "methods"] else "custom"


def method_options(name: str) -> dict[str, Any]:
    """The options a method accepts, with their defaults.

    >>> method_options("soft-targets")["temperature"]
    4.0
    """
    return option_defaults(get_method(name).Options)


def method_choices(name: str) -> dict[str, tuple]:
    """The allowed values of the method's options that take one of a few values.

    >>> method_choices("soft-targets")["target"]
    ('soft', 'hard')
    """
    return option_choices(get_method(name).Options)


def get_method(name: str) -> type[Method]:
    if name not in _METHODS:
        raise MethodError(f"unknown method {name!r}; available methods: {', '.join(available_methods())}")
    return _METHODS[name]


def check_method(name: str, options: dict[str, Any] | None = None) -> None:
    """Refuse an unknown method, or options it does not accept or whose values do not fit, before anything
    is loaded (teachers and data are not needed to check them).

    >>> check_method("soft-targets", {"temperature": "hot"})
    Traceback (most recent call last):
    ...
    amalgam.errors.MethodError: soft-targets: temperature must be a number, got 'hot'
    """
    build_options(get_method(name), None, dict(options or {}))


def create_method(
    name: str, label_space: LabelSpace, teachers: Sequence[Teacher], options: dict[str, Any] | None = None
) -> Method:
    """Build method ``name``; options are checked against its ``Options`` first, so a typo fails at once."""
    cls = get_method(name)
    return cls(label_space, teachers, build_options(cls, None, dict(options or {})))
