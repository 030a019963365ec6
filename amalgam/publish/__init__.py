"""Publishing: a student as a Hub model with a model card, and a Gradio Space that shows it.

Example:
    >>> from amalgam.publish import push_run
    >>> push_run("runs/mine", "my-org/digits-student", demo=True)  # doctest: +SKIP
    PublishResult(model_url='https://huggingface.co/my-org/digits-student', ...)
"""

from amalgam.errors import PublishError
from amalgam.publish.card import render_model_card, split_card
from amalgam.publish.model_repo import write_model_folder, write_timm_layout
from amalgam.publish.push import PublishResult, push_run, push_student, require_token
from amalgam.publish.run import RunRecord, load_run
from amalgam.publish.space import pinned_requirements, write_space_folder

__all__ = [
    "PublishError", "PublishResult", "RunRecord", "load_run", "pinned_requirements", "push_run", "push_student",
    "render_model_card", "require_token", "split_card", "write_model_folder", "write_space_folder",
    "write_timm_layout",
]
