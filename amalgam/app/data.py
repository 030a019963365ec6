"""Choosing data in the app: a built-in set, a ``datasets`` id or folder, or an uploaded zip of an image folder."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from amalgam.data.builtin import BUILTIN
from amalgam.data.folders import IMAGE_SUFFIXES
from amalgam.errors import DataError

BUILTIN_SETS = sorted(BUILTIN)
HUB_OR_FOLDER = "a datasets id or folder"
ZIP_UPLOAD = "a zip of an image folder"
DATA_KINDS = [*BUILTIN_SETS, HUB_OR_FOLDER, ZIP_UPLOAD]
# Checked from the archive's directory before anything is written: zip bombs, and uploads too big to train on here.
MAX_UNZIPPED_BYTES = 2 * 1024**3
MAX_ZIP_ENTRIES = 50_000
_SAFE_NAME = re.compile(r"^[^/\\\x00]+$")


def data_source(kind: str, text: str | None, upload: str | os.PathLike | None, uploads_dir: Path) -> str:
    """What to pass to :func:`amalgam.load_data` for the app's data choice.

    Example:
        >>> data_source("digits", "", None, Path("uploads"))
        'digits'
        >>> data_source(ZIP_UPLOAD, "", None, Path("uploads"))
        Traceback (most recent call last):
        ...
        amalgam.errors.DataError: choose a zip file of an image folder (one sub-folder of images per class) first
    """
    if kind in BUILTIN_SETS:
        return kind
    if kind == HUB_OR_FOLDER:
        if not text or not text.strip():
            raise DataError("enter a `datasets` Hub id (org/name) or the path of an image folder")
        return text.strip()
    if kind == ZIP_UPLOAD:
        if upload is None:
            raise DataError("choose a zip file of an image folder (one sub-folder of images per class) first")
        return str(extract_image_zip(Path(upload), uploads_dir))
    raise DataError(f"unknown data choice {kind!r}; choose one of {DATA_KINDS}")


def extract_image_zip(archive: Path, uploads_dir: Path) -> Path:
    """Unpack the images of a zip of class sub-folders into ``uploads_dir/<content hash>/<class>/<file>``.

    The archive may hold the class folders at its top or inside one folder. Only image files are written, each
    under a path built from its class folder's and its own name (never the archive's path), so an archive
    cannot write outside the target folder. The same archive uploaded again reuses its folder.

    Example:
        >>> extract_image_zip(Path("notes.txt"), Path("uploads"))
        Traceback (most recent call last):
        ...
        amalgam.errors.DataError: notes.txt is not a zip archive: upload a .zip of an image folder
    """
    if not zipfile.is_zipfile(archive):
        raise DataError(f"{archive.name} is not a zip archive: upload a .zip of an image folder")
    with zipfile.ZipFile(archive) as zipped:
        images = check_image_zip(zipped, archive.name)
        target = uploads_dir / hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
        if target.is_dir():
            return target
        uploads_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=uploads_dir, prefix=".unzip-") as scratch:
            staged = Path(scratch) / target.name
            for class_name, info in images:
                destination = staged / class_name / PurePosixPath(info.filename).name
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as source, open(destination, "wb") as out:
                    shutil.copyfileobj(source, out)
            staged.rename(target)  # complete or absent: an interrupted upload never leaves half a data set
    return target


def check_image_zip(zipped: zipfile.ZipFile, name: str) -> list[tuple[str, zipfile.ZipInfo]]:
    """The archive's class images, after checking its size, entry count and layout from its directory alone."""
    entries = zipped.infolist()
    if len(entries) > MAX_ZIP_ENTRIES:
        raise DataError(f"{name} has {len(entries):,} entries, more than the {MAX_ZIP_ENTRIES:,} this app unpacks; "
                        "upload a smaller sample, or give the app's operator a datasets id or folder to use")
    images = _class_images(zipped, name)
    total = sum(info.file_size for _, info in images)
    if total > MAX_UNZIPPED_BYTES:
        raise DataError(f"{name} unpacks to {total / 1024**3:.1f} GiB of images, more than the "
                        f"{MAX_UNZIPPED_BYTES / 1024**3:g} GiB this app unpacks")
    return images


def _class_images(zipped: zipfile.ZipFile, name: str) -> list[tuple[str, zipfile.ZipInfo]]:
    """``(class name, member)`` for every image of the archive; the layout must be ``[root/]class/image``."""
    found = []
    roots = set()
    for info in zipped.infolist():
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if info.is_dir() or path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        if any(part.startswith("__MACOSX") for part in path.parts):
            continue
        if len(path.parts) < 2 or any(part in ("", "..") or not _SAFE_NAME.match(part) for part in path.parts):
            raise DataError(f"{name}: image {info.filename!r} is not inside a class folder; put each class's images "
                            "in a sub-folder named after the class")
        roots.add(path.parts[:-2])
        found.append((path.parts[-2], info))
    if len(roots) > 1:
        raise DataError(f"{name}: the class folders must sit side by side in one folder; found images under "
                        f"{sorted('/'.join(r) or '(top)' for r in roots)}")
    classes = {class_name for class_name, _ in found}
    if len(classes) < 2:
        raise DataError(f"{name} holds images of {len(classes)} class folder(s); an image folder needs at least two "
                        "class sub-folders of images (for example 0/a.png, 1/b.png)")
    return found
