"""amalgam: train one small student from several pretrained teachers with different label spaces.

Example:
    >>> import amalgam
    >>> teachers = [amalgam.load_teacher(path) for path in amalgam.build_demo_zoo()]  # doctest: +SKIP
    >>> result = amalgam.amalgamate(teachers, student="test_efficientnet", data="digits")  # doctest: +SKIP
    >>> print(result.table())  # doctest: +SKIP
"""

from amalgam.api import AmalgamationResult, amalgamate, format_results
from amalgam.data import ImageData, load_data
from amalgam.errors import (
    AmalgamError, DataError, LabelSpaceError, MethodError, PublishError, RecipeError, RunCancelled, TeacherError,
)
from amalgam.methods import available_methods, register_method
from amalgam.students import Student
from amalgam.teachers import ImageSpec, LabelSpace, Teacher, load_teacher
from amalgam.zoo import build_demo_zoo

__version__ = "0.1.0"

__all__ = [
    "AmalgamError", "AmalgamationResult", "DataError", "ImageData", "ImageSpec", "LabelSpace", "LabelSpaceError",
    "MethodError", "PublishError", "RecipeError", "RunCancelled", "Student", "Teacher", "TeacherError", "amalgamate", "available_methods",
    "build_demo_zoo", "format_results", "load_data", "load_teacher", "register_method",
]
