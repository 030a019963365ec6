"""Small teachers trained on real data: the demo zoo that ``amalgam run`` uses, and the benchmark's zoos."""

from amalgam.zoo.demo import DEMO_TEACHERS, ZOO_VERSION, TeacherSpec, amalgam_home, build_demo_zoo, build_teachers

__all__ = ["DEMO_TEACHERS", "ZOO_VERSION", "TeacherSpec", "amalgam_home", "build_demo_zoo", "build_teachers"]
