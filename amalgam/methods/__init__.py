"""Amalgamation methods, found by name in a registry. Importing this package registers the built-in ones.

They come in three families, one sub-package each: ``targets`` (the teachers' outputs combined into the
student's target, with fixed, chosen or learned weights), ``features`` (intermediate features amalgamated as
well), and ``heads`` (a student with a head per teacher or task).
"""

from amalgam.methods import features, heads, targets  # noqa: F401  (importing registers the methods)
from amalgam.methods.base import Batch, LabeledSet, Method, Needs, Options, Setup, StepInputs, StudentForward
from amalgam.methods.registry import (
    available_methods, create_method, get_method, method_choices, method_family, method_options, register_method,
)

__all__ = [
    "Batch", "LabeledSet", "Method", "Needs", "Options", "Setup", "StepInputs", "StudentForward",
    "available_methods", "create_method", "get_method", "method_choices", "method_family", "method_options",
    "register_method",
]
