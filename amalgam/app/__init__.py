"""The Gradio app's logic: teachers, data choices, the run queue, run listing, views and trying a student.

``python app.py`` (at the repository's top) starts it; :func:`build_app` builds the page for tests or embedding.

Example:
    >>> from amalgam.app import build_app
    >>> build_app("runs").launch(css=APP_CSS)  # doctest: +SKIP
"""

from amalgam.app.paths import PathPolicy
from amalgam.app.predict import ModelAnswer, Tryout, image_to_batch, sample_image
from amalgam.app.runs import RunManager, RunRequest, RunState, RunSummary, list_runs, read_run, run_folder
from amalgam.app.teachers import TeacherCatalog, union_markdown
from amalgam.app.ui import APP_CSS, build_app

__all__ = [
    "APP_CSS", "ModelAnswer", "PathPolicy", "RunManager", "RunRequest", "RunState", "RunSummary", "TeacherCatalog",
    "Tryout", "build_app",
    "image_to_batch", "list_runs", "read_run", "run_folder", "sample_image", "union_markdown",
]
