"""Students: a timm backbone (random, or pretrained weights) with its classifier over the union label space, or
with named heads, as a Hub model."""

from amalgam.students.heads import Head
from amalgam.students.pretrained import build_student, check_student_source, pretrained_body
from amalgam.students.student import Student, default_input_size

__all__ = ["Head", "Student", "build_student", "check_student_source", "default_input_size", "pretrained_body"]
