"""Students: a timm backbone with its classifier over the union label space, as a Hub model."""

from amalgam.students.student import Student, default_input_size

__all__ = ["Student", "default_input_size"]
