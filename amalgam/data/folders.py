"""Checks of a local image folder before anything trains on it: its layout (class sub-folders) and every file
(an image PIL can read, not cut short), so a bad file is named at once instead of failing mid-run."""

from __future__ import annotations

import warnings
from pathlib import Path

from amalgam.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_FOLDERS = {"train", "test", "validation", "valid", "val"}  # datasets' imagefolder reads these as splits
_JPEG_END = b"\xff\xd9"
_JPEG_TAIL = 4096  # bytes searched for the end-of-image marker (some writers pad after it)


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (by suffix; hidden files and folders skipped), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def class_layout_problem(folder: Path, files: list[Path]) -> str | None:
    """Why ``folder``'s images do not sit in at least two class sub-folders (``None`` when they do): the labels
    of an image folder are its class folders' names."""
    if not files:
        return f"image folder {str(folder)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
    loose = [p for p in files if p.parent == folder]
    if loose:
        return (f"image folder {str(folder)!r} has images outside class sub-folders (e.g. {loose[0].name}), so it "
                "has no labels; for labels, put each class's images in a sub-folder named after the class "
                "(cat/1.png, dog/2.png)")
    classes = sorted({p.relative_to(folder).parts[0] for p in files})
    if len(classes) < 2:
        return (f"image folder {str(folder)!r} holds a single class folder ({classes[0]!r}, {len(files)} images); "
                "the labels come from the class sub-folders, so it needs at least two of them (cat/1.png, "
                "dog/2.png)")
    return None


def check_image_file(path: Path) -> None:
    """Raise a :class:`DataError` naming ``path`` unless PIL can identify it and it is whole (PNG and others:
    PIL's ``verify``; JPEG, which ``verify`` does not read through: its end-of-image marker, or a full decode)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            kind = image.format
            image.verify()
        if kind == "JPEG":
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - _JPEG_TAIL))
                whole = _JPEG_END in f.read()
            if not whole:
                with Image.open(path) as image:
                    image.load()  # raises if the data really stops short
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for unreadable or broken files
        raise DataError(
            f"image file {str(path)!r} cannot be read as an image ({type(err).__name__}: {err}); remove or "
            "replace it (it may be cut short, or not an image despite its name)"
        ) from None


def folder_layout_problem(folder: Path, files: list[Path]) -> str | None:
    """:func:`class_layout_problem` of ``folder`` (``class/image``), or of each split folder when it is laid out
    as ``train/class/image`` beside ``test/class/image``."""
    splits = {p.relative_to(folder).parts[0] for p in files if p.parent != folder}
    if splits and splits <= SPLIT_FOLDERS:
        for split in sorted(splits):
            problem = class_layout_problem(folder / split, [p for p in files if p.relative_to(folder).parts[0] == split])
            if problem:
                return problem
        return None
    return class_layout_problem(folder, files)


def check_image_files(files: list[Path], skip_unreadable: bool = False) -> list[Path]:
    """Every file checked with :func:`check_image_file`: a bad one is named before anything trains. With
    ``skip_unreadable``, bad files are left out instead (a warning names how many and the first few); returns the
    readable files."""
    readable, unreadable = [], []
    for path in files:
        try:
            check_image_file(path)
            readable.append(path)
        except DataError as err:
            if not skip_unreadable:
                raise DataError(f"{err}. To leave unreadable files out instead (counted in the run's metrics), "
                                "pass skip_unreadable=True (`amalgam run --skip-unreadable`)") from None
            unreadable.append(path)
    if unreadable:
        shown = ", ".join(repr(str(p)) for p in unreadable[:3]) + (", ..." if len(unreadable) > 3 else "")
        warnings.warn(f"{len(unreadable)} of {len(files)} image files cannot be read and are left out: {shown}",
                      stacklevel=3)
    return readable
