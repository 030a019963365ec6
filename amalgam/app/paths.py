"""Which of the server's folders the page may name as a teacher or data set.

On 127.0.0.1 the person at the page is the person at the server, so any folder will do. Served beyond it,
whoever can open the page could otherwise probe the server's folders (the errors say what exists) and read their
images back through "Sample a test image"; so local paths are then refused, except under the folders the
operator allows (``python app.py --allow-paths DIR``) and the app's own (the demo zoo, the uploads).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from amalgam.errors import AmalgamError
from amalgam.teachers.sources import HUB_PREFIX, LOCAL_PREFIX

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def local_path(text: str) -> Path | None:
    """The server path ``text`` names, or ``None`` when it names a Hub repo or a built-in set.

    >>> local_path("hf-hub:org/name"), local_path("digits"), local_path("/srv/zoo/cnn")
    (None, None, PosixPath('/srv/zoo/cnn'))
    """
    text = text.strip()
    if text.startswith(HUB_PREFIX):
        return None
    if text.startswith(LOCAL_PREFIX):
        return Path(text[len(LOCAL_PREFIX):]).expanduser()
    path = Path(text).expanduser()
    if text.startswith(("/", ".", "~", "\\")) or path.exists():  # what load_teacher / load_data read as a folder
        return path
    return None


@dataclass(frozen=True)
class PathPolicy:
    """The folders (and everything under them) the page may name; ``roots=None`` allows any.

    Example:
        >>> policy = PathPolicy.for_host("0.0.0.0", allowed=["/srv/models"])
        >>> policy.check("/srv/models/cnn", "teacher")
        >>> policy.check("/etc", "teacher")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        amalgam.errors.AmalgamError: teacher '/etc' is a folder on the server, and this app refuses ...
    """

    roots: tuple[Path, ...] | None = None

    @classmethod
    def for_host(cls, host: str, allowed: Iterable[str | os.PathLike] = (),
                 own: Iterable[str | os.PathLike] = ()) -> "PathPolicy":
        """Any folder on a loopback host (unless ``allowed`` narrows it); beyond it, only ``allowed`` and
        ``own`` (the app's own folders)."""
        allowed = [Path(p).expanduser().resolve() for p in allowed]
        if host in LOOPBACK_HOSTS and not allowed:
            return cls(None)
        return cls(tuple(allowed + [Path(p).expanduser().resolve() for p in own]))

    def check(self, text: str, what: str) -> None:
        """Refuse ``text`` (a teacher source or data choice) when it names a server folder outside the roots
        (symlinks followed, so a link cannot point out of them)."""
        path = local_path(text)
        if path is None or self.roots is None:
            return
        real = path.resolve()
        if any(real == root or real.is_relative_to(root) for root in self.roots):
            return
        raise AmalgamError(
            f"{what} {text!r} is a folder on the server, and this app refuses server folders outside the ones its "
            "operator allowed (it serves beyond 127.0.0.1). Use a Hub id, upload a zip, or ask the operator to "
            "start it with --allow-paths DIR."
        )
