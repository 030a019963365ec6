"""Teachers: loading (Hub, folders, modules), preprocessing, feature taps, label spaces."""

from amalgam.teachers.label_space import LabelSpace, normalize_class_name
from amalgam.teachers.preprocess import ImageSpec
from amalgam.teachers.teacher import Teacher, TeacherOutput, load_teacher

__all__ = ["ImageSpec", "LabelSpace", "Teacher", "TeacherOutput", "load_teacher", "normalize_class_name"]
