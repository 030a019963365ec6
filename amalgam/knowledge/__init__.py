"""Teacher knowledge for training: live teachers, or their outputs computed once."""

from amalgam.knowledge.signals import CachedSignals, IndexedImages, LiveSignals, TeacherSignals

__all__ = ["CachedSignals", "IndexedImages", "LiveSignals", "TeacherSignals"]
