"""Where amalgam keeps what it builds and caches (demo and benchmark teachers, knowledge caches)."""

from __future__ import annotations

import os
from pathlib import Path


def amalgam_home() -> Path:
    """``$AMALGAM_HOME``, by default ``~/.cache/amalgam``.

    >>> import os; os.environ["AMALGAM_HOME"] = "/tmp/a"; str(amalgam_home())
    '/tmp/a'
    """
    return Path(os.environ.get("AMALGAM_HOME", Path.home() / ".cache" / "amalgam")).expanduser()
