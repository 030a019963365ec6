"""Amalgamation methods, found by name in a registry. Importing this package registers the built-in ones."""

from amalgam.methods import soft_targets, supervised  # noqa: F401  (register the built-in methods)
from amalgam.methods.base import Method, StepInputs
from amalgam.methods.registry import available_methods, create_method, get_method, method_options, register_method

__all__ = [
    "Method", "StepInputs", "available_methods", "create_method", "get_method", "method_options", "register_method",
]
