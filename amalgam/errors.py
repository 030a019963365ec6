"""Errors amalgam raises for bad input.

Each says which argument was wrong, what was expected, and what to do. They subclass ``ValueError`` so
callers that already catch bad-argument errors keep working.
"""


class AmalgamError(ValueError):
    """Base class of every error amalgam raises on purpose."""


class TeacherError(AmalgamError):
    """A teacher could not be found, loaded, or used for the task."""


class LabelSpaceError(AmalgamError):
    """Teachers' class names or a label mapping cannot form a consistent union label space."""


class DataError(AmalgamError):
    """A data set could not be found, or does not fit the teachers."""


class MethodError(AmalgamError):
    """An unknown method name, or options a method does not accept."""


class StudentError(AmalgamError):
    """A student (its heads, its classes) cannot be built or does not fit the run."""


class RecipeError(AmalgamError):
    """A recipe file is malformed or has unknown keys."""


class PublishError(AmalgamError):
    """A run or student could not be prepared for, or pushed to, the Hugging Face Hub."""


class RunCancelled(AmalgamError):
    """A run was stopped on request (its ``should_stop`` returned True) before it finished."""
