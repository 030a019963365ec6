"""Pushing a student (and its Gradio Space) to the Hub.

Everything that can fail without the network is checked first (repo ids, token, run folder), and each upload
folder is written complete on disk before the first request. A failed upload changes nothing locally, and
pushing again retries (the Hub skips files it already has) or, after a success, updates the repos in place.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amalgam.errors import PublishError
from amalgam.hub import check_repo_id, hub_failure
from amalgam.publish.card import DEFAULT_LICENSE
from amalgam.publish.model_repo import write_model_folder
from amalgam.publish.run import RunRecord, load_run, read_json
from amalgam.publish.space import write_space_folder

if TYPE_CHECKING:
    from huggingface_hub import HfApi

    from amalgam.students import Student

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Publish with amalgam"
LOGIN_HINT = "run `hf auth login`, or set the HF_TOKEN environment variable to a token with write access"


@dataclass(frozen=True)
class PublishResult:
    """Where a publish went: the repos' urls, the model commit, the folders that were uploaded, and whether the
    push changed the model repo and the Space (``False``: the Hub had exactly these files, no commit was made)."""

    model_url: str
    commit: str
    model_folder: Path
    space_url: str | None = None
    space_folder: Path | None = None
    changed: bool = True
    space_changed: bool | None = None

    @property
    def model_news(self) -> str:
        """What the push did to the model repo, for people.

        >>> PublishResult("https://hf.co/o/m", "0123456789ab", Path("m"), changed=False).model_news
        'nothing changed: the Hub already had these files (commit 0123456)'
        """
        if self.changed:
            return f"new commit {self.commit[:7]}"
        return f"nothing changed: the Hub already had these files (commit {self.commit[:7]})"

    @property
    def space_news(self) -> str:
        """What the push did to the Space (empty without one)."""
        if self.space_url is None:
            return ""
        return "updated" if self.space_changed else "nothing changed"


def require_token(token: str | None = None) -> str:
    """``token``, or the one huggingface_hub finds (``HF_TOKEN``, then ``hf auth login``'s file).

    >>> require_token("hf_example")
    'hf_example'
    """
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PublishError(f"pushing to the Hugging Face Hub needs a token: {LOGIN_HINT}")
    return token


def check_target(repo_id: str, demo: bool, space_id: str | None) -> str | None:
    """Validate the model repo id and, with ``demo``, the Space's (default ``<repo_id>-demo``); returns the latter.

    >>> check_target("org/digits", True, None)
    'org/digits-demo'
    """
    check_repo_id(repo_id, "published student", PublishError)
    if not demo and space_id is None:
        return None
    return check_repo_id(space_id or f"{repo_id}-demo", "student's Space", PublishError)


def push_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    demo: bool = False,
    timm_export: bool = False,
    space_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
) -> PublishResult:
    """Publish the student of a finished run as Hub model ``repo_id``, with a model card from the run.

    The upload folders are written first to ``run_dir/publish/model`` (and ``run_dir/publish/space``); nothing
    else in ``run_dir`` is changed.

    Args:
        run_dir: a folder written by ``amalgamate(..., run_dir=...)`` or ``amalgam run``.
        repo_id: ``org/name``; the repo is created if needed (``private`` applies only then).
        token: a Hub token with write access; default: ``HF_TOKEN`` or ``hf auth login``'s.
        demo: also publish a Gradio Space that shows the model (``space_id``, default ``<repo_id>-demo``;
            passing ``space_id`` implies ``demo``).
        timm_export: publish in timm's own format, loadable by ``timm.create_model("hf-hub:" + repo_id,
            pretrained=True)`` with no amalgam installed, instead of amalgam's (``Student.from_pretrained``).
        license: the card's license id.
        commit_message: the message of the commits to the model repo and the Space.

    Example:
        >>> result = push_run("runs/mine", "my-org/digits-student", demo=True)  # doctest: +SKIP
        >>> result.model_url, result.space_url  # doctest: +SKIP
        ('https://huggingface.co/my-org/digits-student', 'https://huggingface.co/spaces/my-org/digits-student-demo')
    """
    space_id = check_target(repo_id, demo, space_id)
    token = require_token(token)
    record = load_run(run_dir)
    return publish(record, Path(run_dir) / "publish", repo_id, token, private=private, timm_export=timm_export,
                   space_id=space_id, license=license, commit_message=commit_message)


def push_student(
    student: Student,
    repo_id: str,
    *,
    run_dir: str | os.PathLike | None = None,
    token: str | None = None,
    private: bool = False,
    demo: bool = False,
    timm_export: bool = False,
    space_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    config: dict[str, Any] | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
) -> PublishResult:
    """Publish an in-memory student; its card describes its run when ``run_dir`` names it (see :func:`push_run`).

    The upload folders are written to a temporary folder, removed afterwards.
    """
    space_id = check_target(repo_id, demo, space_id)
    token = require_token(token)
    with tempfile.TemporaryDirectory(prefix="amalgam-publish-") as scratch:
        student_dir = Path(scratch) / "student"
        student.save_pretrained(student_dir, config=config)
        student_config = read_json(student_dir / "config.json")
        if run_dir is None:
            record = RunRecord.for_student(student_dir, student_config, student.num_parameters)
        else:
            run = load_run(run_dir)
            if run.class_names != student.class_names:
                raise PublishError(f"the student's classes {student.class_names} differ from those of the run in "
                                   f"{run_dir} ({run.class_names}); publish it without run_dir")
            record = RunRecord(student_dir, student_config, run.description, run.metrics)
        return publish(record, Path(scratch) / "publish", repo_id, token, private=private,
                       timm_export=timm_export, space_id=space_id, license=license, commit_message=commit_message)


def publish(
    record: RunRecord,
    staging: Path,
    repo_id: str,
    token: str,
    *,
    private: bool = False,
    timm_export: bool = False,
    space_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
) -> PublishResult:
    """Write the upload folders under ``staging``, then create the repos (if needed) and upload them."""
    from huggingface_hub import HfApi

    from amalgam import __version__

    if space_id is not None and record.student_config.get("heads"):
        raise PublishError("the demo Space serves students with one classifier; this student has named heads "
                           f"({[h['name'] for h in record.student_config['heads']]}): publish it without demo")
    model_folder = write_model_folder(record, staging / "model", repo_id, timm_layout=timm_export,
                                      space_id=space_id, license=license)
    space_folder = None
    if space_id is not None:
        space_folder = write_space_folder(staging / "space", space_id, repo_id, timm_layout=timm_export,
                                          private=private, license=license)
    logger.info("upload folders written under %s", staging)
    api = HfApi(token=token, library_name="amalgam", library_version=__version__)
    model_url, commit, changed = upload(api, model_folder, repo_id, "model", token, private=private,
                                        message=commit_message)
    space_url = space_changed = None
    if space_folder is not None:
        space_url, _, space_changed = upload(api, space_folder, space_id, "space", token, private=private,
                                             message=commit_message)
    return PublishResult(model_url, commit, model_folder, space_url, space_folder, changed, space_changed)


def upload(
    api: HfApi, folder: Path, repo_id: str, repo_type: str, token: str, *, private: bool, message: str
) -> tuple[str, str, bool]:
    """Create repo ``repo_id`` if needed and make its files those of ``folder``; returns (url, commit, whether a
    commit was made: huggingface_hub skips unchanged files and makes none when nothing changed)."""
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True,
                              space_sdk="gradio" if repo_type == "space" else None)
        before = api.repo_info(repo_id, repo_type=repo_type).sha
        # delete_patterns="*": files of an earlier push that this one no longer writes go (.gitattributes stays).
        info = api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=folder, delete_patterns="*",
                                 commit_message=message)
    except Exception as err:  # noqa: BLE001 - HTTP, transport and client errors all end the same way
        status = getattr(getattr(err, "response", None), "status_code", None)
        hint = f" ({LOGIN_HINT})" if status in (401, 403) else ""
        logger.info("push of %s %s failed: %s", repo_type, repo_id, str(err).replace(token, "<token>"))
        raise PublishError(
            f"pushing the {repo_type} {repo_id} failed: {hub_failure(err, token)}{hint}. Nothing local was changed; "
            "push again to retry (files the Hub already has are not sent twice)."
        ) from None
    changed = info.oid != before
    logger.info("pushed %s to %s (commit %s%s)", folder, url, info.oid, "" if changed else ", nothing changed")
    return str(url), info.oid, changed
