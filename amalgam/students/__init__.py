"""Students: a timm backbone with its classifier over the union label space, or with named heads, as a Hub
model."""

from amalgam.students.heads import Head
from amalgam.students.student import Student, default_input_size

__all__ = ["Head", "Student", "default_input_size"]
