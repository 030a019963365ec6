"""Amalgamation methods, found by name in a registry. Importing this package registers the built-in ones."""

from amalgam.methods import (  # noqa: F401  (importing registers the methods)
    adaptive, attention, autoencoder, branches, cfl, confidence, dissimilarity, experts, feed, hydra, knowledge_flow,
    ods, selective, soft_targets, soka, stochastic, supervised, trust, two_teacher, wsl,
)
from amalgam.methods.base import LabeledSet, Method, StepInputs
from amalgam.methods.registry import available_methods, create_method, get_method, method_options, register_method

__all__ = [
    "LabeledSet", "Method", "StepInputs", "available_methods", "create_method", "get_method", "method_options",
    "register_method",
]
