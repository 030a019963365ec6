"""Where a teacher comes from: a Hub repo or a local folder, resolved to a folder on disk.

Hub repos go through ``huggingface_hub.snapshot_download``, so the cache, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``
and revision pinning behave exactly as in the rest of the HF ecosystem. Only configuration files and
safetensors weights are fetched: amalgam never downloads (or unpickles) ``.bin``/``.pth`` weights.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from amalgam.errors import TeacherError
from amalgam.hub import HUB_PREFIX, check_repo_id, download_snapshot, split_hub_id

LOCAL_PREFIX = "local-dir:"
# Files a teacher needs; pickled weights are deliberately absent, and a repo's Python code is fetched only for a
# teacher loaded with trust_remote_code=True (transformers then imports it).
TEACHER_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]
REMOTE_CODE_FILES = ["*.py"]
_REPO_ID_SHAPE = re.compile(r"^[^/\s]+/[^/\s]+$")


@dataclass(frozen=True)
class ResolvedSource:
    """A teacher source resolved to a folder: ``repo_id``/``revision`` are set for Hub sources."""

    folder: Path
    repo_id: str | None = None
    revision: str | None = None

    @property
    def label(self) -> str:
        """How the source is shown to people: ``org/name@sha`` or the folder path."""
        if self.repo_id:
            return f"{self.repo_id}@{self.revision[:12]}" if self.revision else self.repo_id
        return str(self.folder)


def resolve_source(source: str | os.PathLike, revision: str | None = None,
                   remote_code: bool = False) -> ResolvedSource:
    """Resolve ``source`` to a local folder; ``remote_code`` also downloads a Hub repo's ``*.py`` files (for a
    teacher the caller allowed to run its own code).

    Accepted forms: ``hf-hub:org/name`` (optionally ``@revision``), ``org/name`` when no such local folder
    exists, ``local-dir:/path``, or a path to an existing folder.

    Example:
        >>> resolve_source("not a source!")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        amalgam.errors.TeacherError: unknown teacher source 'not a source!' ...
    """
    text = os.fspath(source)
    if text.startswith(HUB_PREFIX):
        repo_id, pinned = split_hub_id(text, "teacher", TeacherError)
        return _download(repo_id, revision or pinned, remote_code)
    if text.startswith(LOCAL_PREFIX):
        return _local(Path(text[len(LOCAL_PREFIX):]))
    path = Path(text).expanduser()
    if path.exists():
        return _local(path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise TeacherError(f"teacher folder {text!r} does not exist")
    if _REPO_ID_SHAPE.match(text):
        return _download(check_repo_id(text, "teacher", TeacherError), revision, remote_code)
    raise TeacherError(
        f"unknown teacher source {text!r}: expected 'hf-hub:org/name', 'org/name', a path to a model folder, "
        "or an nn.Module together with class_names=..."
    )


def _local(path: Path) -> ResolvedSource:
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise TeacherError(f"teacher source {str(path)!r} is not a folder (a teacher folder holds config.json)")
    return ResolvedSource(folder=path)


def _download(repo_id: str, revision: str | None, remote_code: bool = False) -> ResolvedSource:
    patterns = TEACHER_FILES + (REMOTE_CODE_FILES if remote_code else [])
    folder, commit = download_snapshot(repo_id, revision, patterns, "teacher", TeacherError)
    return ResolvedSource(folder=folder, repo_id=repo_id, revision=commit)
