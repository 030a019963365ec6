"""Type checks of dataclass fields against their annotations, for values that come from people (recipes, the
CLI, the app, keyword arguments): ``epochs = "three"`` or ``epochs = true`` must be refused with a sentence, not
fail later inside training (or, worse, run one epoch because ``True == 1``).

Supported annotations: ``bool``, ``int`` (a bool is not one), ``float`` (an int is one), ``str``, ``None``,
``X | Y`` / ``Optional``, ``Literal[...]``, ``list[X]`` / ``Sequence[X]`` / ``tuple[X, ...]`` (a string is not
one) and ``dict[K, V]`` / ``Mapping``; anything else (``Any``, callables, classes) is not checked here.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from typing import Any, Literal

_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "none"}


def describe(hint: Any) -> str:
    """How a type is said in an error message.

    >>> describe(int | None), describe(typing.Sequence[str])
    ('an integer or none', 'a list of a string')
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _NAMES:
        return _NAMES[hint]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return f"one of {args}"
    if origin in (list, tuple, collections.abc.Sequence):
        return f"a list of {describe(args[0])}" if args else "a list"
    if origin in (dict, collections.abc.Mapping):
        return "a table of keys"
    return getattr(hint, "__name__", str(hint))


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type ``hint`` (annotations this module does not know always fit).

    >>> fits(True, int), fits(3, float), fits(["a"], typing.Sequence[str]), fits("ab", typing.Sequence[str])
    (False, True, True, False)
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin in (list, tuple, collections.abc.Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args else Any
        return all(fits(v, item) for v in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, collections.abc.Mapping)
    return True


def check_types(instance: Any, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the first field of the dataclass ``instance`` whose value does not fit its
    annotation: ``"epochs must be an integer, got 'three'"``.

    >>> @dataclasses.dataclass
    ... class Budget:
    ...     epochs: int = 1
    >>> check_types(Budget(epochs=True))
    Traceback (most recent call last):
    ...
    ValueError: epochs must be an integer, got True
    """
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if f.name in hints and not fits(value, hints[f.name]):
            raise error(f"{f.name} must be {describe(hints[f.name])}, got {value!r}")
