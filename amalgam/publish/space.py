"""The Gradio Space's folder: ``app.py`` for one student, pinned ``requirements.txt``, and its README."""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import yaml

from amalgam.publish.card import DEFAULT_LICENSE
from amalgam.publish.model_repo import fresh_folder
from amalgam.publish.render import render_template

# What app.py imports besides gradio, whose version the Space takes from `sdk_version` in README.md.
SPACE_PACKAGES = ("torch", "timm", "huggingface_hub", "safetensors", "pillow", "numpy")


def pinned_requirements(packages: tuple[str, ...] = SPACE_PACKAGES) -> str:
    """``requirements.txt`` pinning ``packages`` to the versions installed here (local labels like ``+cpu`` cut).

    >>> pinned_requirements(("pyyaml",)).startswith("pyyaml==")
    True
    """
    lines = [f"{name}=={version(name).split('+')[0]}" for name in packages]
    return "\n".join(lines) + "\n"


def space_metadata(space_id: str, repo_id: str, license: str = DEFAULT_LICENSE) -> dict:
    """The Space's YAML header: Gradio at the version installed here, and the model it shows."""
    import gradio

    return {
        "title": space_id.split("/")[-1],
        "sdk": "gradio",
        "sdk_version": gradio.__version__,
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "app_file": "app.py",
        "models": [repo_id],
        "license": license,
        "tags": ["knowledge-amalgamation", "image-classification"],
    }


def write_space_folder(
    folder: Path,
    space_id: str,
    repo_id: str,
    *,
    timm_layout: bool = False,
    private: bool = False,
    license: str = DEFAULT_LICENSE,
) -> Path:
    """Write the complete upload of Space ``space_id``, a demo of model repo ``repo_id``; returns ``folder``."""
    fresh_folder(folder)
    metadata = space_metadata(space_id, repo_id, license)
    card = render_template("space_card.md.j2", metadata=yaml.safe_dump(metadata, sort_keys=False).strip(),
                           title=metadata["title"], repo_id=repo_id, private=private)
    (folder / "README.md").write_text(card, encoding="utf-8")
    (folder / "app.py").write_text(render_template("space_app.py.j2", repo_id=repo_id, timm_layout=timm_layout),
                                   encoding="utf-8")
    (folder / "requirements.txt").write_text(pinned_requirements(), encoding="utf-8")
    return folder
