"""Teacher knowledge for training: live teachers, or their outputs computed once (in memory or on disk)."""

from amalgam.knowledge.cache import DEFAULT_MAX_CACHE_GB, KnowledgeCache, knowledge_root, verify_knowledge_cache
from amalgam.knowledge.signals import CachedSignals, LiveSignals, TeacherSignals
from amalgam.knowledge.writer import KnowledgeCacheError

__all__ = [
    "DEFAULT_MAX_CACHE_GB", "CachedSignals", "KnowledgeCache", "KnowledgeCacheError", "LiveSignals",
    "TeacherSignals", "knowledge_root", "verify_knowledge_cache",
]
