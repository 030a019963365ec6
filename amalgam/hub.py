"""Hub helpers shared by teachers, data and publishing."""

from __future__ import annotations

from amalgam.errors import AmalgamError


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
