"""Small teachers trained on real data: the demo zoo that ``amalgam run`` uses, the built-in demos
(``amalgam run --demo fashion-mnist``) and the benchmark's zoos."""

from amalgam.zoo.demo import (
    DEMO_TEACHERS, DEMOS, FASHION_TEACHERS, ZOO_VERSION, Demo, TeacherSpec, amalgam_home, build_demo_zoo,
    build_teachers,
)

__all__ = ["DEMOS", "DEMO_TEACHERS", "Demo", "FASHION_TEACHERS", "ZOO_VERSION", "TeacherSpec", "amalgam_home",
           "build_demo_zoo", "build_teachers"]
