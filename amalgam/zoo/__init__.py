"""The demo zoo of small teachers that ``amalgam run`` uses by default."""

from amalgam.zoo.demo import DEMO_TEACHERS, ZOO_VERSION, amalgam_home, build_demo_zoo

__all__ = ["DEMO_TEACHERS", "ZOO_VERSION", "amalgam_home", "build_demo_zoo"]
