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
from amalgam.hub import check_repo_id

HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
# Files a teacher needs; pickled weights are deliberately absent, and a repo's Python code is fetched only for a
# teacher loaded with trust_remote_code=True (transformers then imports it).
TEACHER_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]
REMOTE_CODE_FILES = ["*.py"]
_REPO_ID_SHAPE = re.compile(r"^[^/\s]+/[^/\s]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


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
        repo_id, _, pinned = text[len(HUB_PREFIX):].partition("@")
        return _download(check_repo_id(repo_id, "teacher", TeacherError), revision or pinned or None, remote_code)
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
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        patterns = TEACHER_FILES + (REMOTE_CODE_FILES if remote_code else [])
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except RevisionNotFoundError:
        raise TeacherError(f"Hub repo {repo_id!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise TeacherError(
            f"Hub repo {repo_id!r} was not found (or is private: log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except LocalEntryNotFoundError:
        raise TeacherError(
            f"Hub repo {repo_id!r} (revision {revision or 'main'}) is not in the local cache and the Hub cannot "
            "be reached (HF_HUB_OFFLINE is set or the network is down); download it once while online."
        ) from None
    # Snapshot folders are named by commit sha: record it so a run says exactly which weights it used.
    commit = folder.name if _COMMIT.match(folder.name) else revision
    return ResolvedSource(folder=folder, repo_id=repo_id, revision=commit)
