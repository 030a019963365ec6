"""The demo zoo: two small teachers of different libraries, trained on disjoint halves of digits.

``cnn-digits-0to4`` is a timm CNN (grey 32x32 input) for digits 0-4, saved in timm's Hub layout;
``vit-digits-5to9`` is a transformers ViT (RGB 16x16 input) for digits 5-9, saved with ``save_pretrained``.
They differ in library, architecture, input size, channels and label space on purpose: that is the problem
amalgam solves. They are trained on the digits *train* split only, so the test split stays unseen.

Built on first use into ``$AMALGAM_HOME/zoo/<version>`` (default ``~/.cache/amalgam``), each teacher in a
temporary folder renamed into place when complete, so an interrupted build never leaves half a teacher.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from amalgam.data import load_digits
from amalgam.zoo.teachers import train_teacher

ZOO_VERSION = "v1"
DIGITS_LOW = [str(d) for d in range(5)]
DIGITS_HIGH = [str(d) for d in range(5, 10)]


def amalgam_home() -> Path:
    return Path(os.environ.get("AMALGAM_HOME", Path.home() / ".cache" / "amalgam")).expanduser()


# name: (teacher kind, classes, input side, training epochs)
DEMO_TEACHERS = {
    "cnn-digits-0to4": ("timm-cnn", DIGITS_LOW, 32, 10),
    "vit-digits-5to9": ("vit", DIGITS_HIGH, 16, 40),
}


def build_demo_zoo(root: str | os.PathLike | None = None, force: bool = False, progress: bool = True) -> list[Path]:
    """Train (once) and return the folders of the demo teachers.

    Example:
        >>> folders = build_demo_zoo()  # doctest: +SKIP
        >>> [f.name for f in folders]  # doctest: +SKIP
        ['cnn-digits-0to4', 'vit-digits-5to9']
    """
    root = Path(root) if root is not None else amalgam_home() / "zoo" / ZOO_VERSION
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    for name in DEMO_TEACHERS:
        folder = root / name
        if force and folder.exists():
            shutil.rmtree(folder)
        if not (folder / "config.json").is_file():
            with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as scratch:
                staged = Path(scratch) / name
                if progress:
                    print(f"Training demo teacher {name} (once; saved to {folder})")
                kind, classes, size, epochs = DEMO_TEACHERS[name]
                test_accuracy = train_teacher(kind, classes, load_digits(), staged, size=size, epochs=epochs,
                                              batch_size=32)
                if progress:
                    print(f"  {name}: test accuracy on its classes {test_accuracy:.4f}")
                staged.rename(folder)
        folders.append(folder)
    return folders
