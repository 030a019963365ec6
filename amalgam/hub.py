"""Hub helpers shared by teachers, students, data and publishing: repo-id checks and snapshot downloads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from amalgam.errors import AmalgamError

HUB_PREFIX = "hf-hub:"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def check_repo_id(repo_id: str, what: str, error: type[AmalgamError] = AmalgamError) -> str:
    """Validate ``repo_id`` (``org/name``) before any network call; raise ``error`` naming ``what`` it was for.

    >>> check_repo_id("org/name", "teacher")
    'org/name'
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise error(f"malformed Hub repo id {repo_id!r} for the {what}: {err}") from None
    if repo_id.count("/") != 1:
        raise error(f"malformed Hub repo id {repo_id!r} for the {what}: expected 'org/name'")
    return repo_id


def split_hub_id(text: str, what: str, error: type[AmalgamError] = AmalgamError) -> tuple[str, str | None]:
    """``(repo_id, revision)`` of ``hf-hub:org/name[@revision]``, the repo id checked.

    >>> split_hub_id("hf-hub:timm/resnet18.a1_in1k@main", "student")
    ('timm/resnet18.a1_in1k', 'main')
    """
    repo_id, _, revision = text.removeprefix(HUB_PREFIX).partition("@")
    return check_repo_id(repo_id, what, error), revision or None


def download_snapshot(repo_id: str, revision: str | None, patterns: Sequence[str], what: str,
                      error: type[AmalgamError] = AmalgamError) -> tuple[Path, str | None]:
    """The files of ``repo_id`` matching ``patterns`` in the local HF cache (downloaded when missing, through
    ``huggingface_hub.snapshot_download``: its cache, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` apply), and the
    commit they are at (``revision`` when the snapshot folder is not named by one). A missing repo or revision,
    or a repo neither cached nor reachable, raises ``error`` naming ``what`` it was for and what to do.

    >>> download_snapshot("org/name", None, ["*.json"], "student")  # doctest: +SKIP
    (PosixPath('.../snapshots/0123...'), '0123...')
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns)))
    except RevisionNotFoundError:
        raise error(f"Hub repo {repo_id!r} (the {what}) has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise error(
            f"Hub repo {repo_id!r} (the {what}) was not found (or is private: log in with `hf auth login` or set "
            "HF_TOKEN)"
        ) from None
    except LocalEntryNotFoundError:
        raise error(
            f"Hub repo {repo_id!r} (the {what}, revision {revision or 'main'}) is not in the local cache and the Hub "
            "cannot be reached (HF_HUB_OFFLINE is set or the network is down); download it once while online."
        ) from None
    # Snapshot folders are named by commit sha: record it so a run says exactly which weights it used.
    return folder, folder.name if _COMMIT.match(folder.name) else revision


def hub_failure(err: Exception, token: str | None = None) -> str:
    """Why a call to the Hub failed, in words for the person who made it: what happened and what to do, without
    the exception's class or huggingface_hub's hints about its own arguments and variables (and never ``token``).

    >>> from huggingface_hub.errors import OfflineModeIsEnabled
    >>> hub_failure(OfflineModeIsEnabled("Cannot reach https://huggingface.co/api: offline mode is enabled."))
    'this machine is set to work offline (HF_HUB_OFFLINE=1): unset it to reach the Hub'
    """
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(err, OfflineModeIsEnabled):
        return "this machine is set to work offline (HF_HUB_OFFLINE=1): unset it to reach the Hub"
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403):
        reason = f"the Hub refused the token (HTTP {status}): it needs write access to this repo"
    elif status == 404:
        reason = "the Hub has no such repo, or the token cannot see it (HTTP 404)"
    elif status is not None:
        detail = (getattr(err, "server_message", None) or "").strip().splitlines()
        reason = f"the Hub answered HTTP {status}" + (f": {detail[0]}" if detail else "")
    elif isinstance(err, (OSError, ConnectionError)) or type(err).__module__.startswith(("httpx", "requests")):
        reason = "the Hub could not be reached: check the network (or HF_ENDPOINT, for a Hub of your own)"
    else:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return reason.replace(token, "<token>") if token else reason

