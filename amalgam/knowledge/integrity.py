"""Checksums of a knowledge cache's Arrow file, so that a damaged cache is found and computed again instead of
training a student on wrong teacher outputs (bytes changed on disk) or crashing every later run (a truncated file).

The file is digested in blocks when it is written (``key.json`` stores its size and one short digest per block).
Opening a cache checks the size, and the digests of every block when the file is small (up to
:data:`FULL_CHECK_BLOCKS` blocks: a fraction of a second), else of the first, the last and a few blocks spread
over the file, so a run never reads a multi-gigabyte cache twice. :func:`check_file` with ``full=True`` (what
``amalgam cache --verify`` runs) reads every block.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger("amalgam.knowledge.cache")

ARROW_FILE = "knowledge.arrow"
KEY_FILE = "key.json"
PARTIAL_PREFIX = ".partial-"  # a cache being written: never read

BLOCK_BYTES = 1 << 24  # 16 MiB: a 1 GB cache has 60 digests in its key.json
FULL_CHECK_BLOCKS = 16  # files up to 256 MiB are checked whole on every open
SAMPLED_BLOCKS = 8  # besides the first and the last, for larger files


def _block_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def file_checksums(path: Path) -> dict[str, Any]:
    """The size of ``path`` and the digest of each of its :data:`BLOCK_BYTES` blocks (stored with the cache)."""
    block_bytes, blocks = BLOCK_BYTES, []
    with path.open("rb") as f:
        while chunk := f.read(block_bytes):
            blocks.append(_block_digest(chunk))
    return {"bytes": path.stat().st_size, "block_bytes": block_bytes, "blocks": blocks}


def blocks_to_check(count: int, full: bool) -> list[int]:
    """Which blocks an open checks: all of a small file, else the first, the last and a spread of others.

    >>> blocks_to_check(3, full=False), blocks_to_check(100, full=False)
    ([0, 1, 2], [0, 11, 22, 33, 44, 55, 66, 77, 88, 99])
    """
    if full or count <= FULL_CHECK_BLOCKS:
        return list(range(count))
    step = (count - 1) / (SAMPLED_BLOCKS + 1)
    return sorted({0, count - 1, *(round(step * (i + 1)) for i in range(SAMPLED_BLOCKS))})


def check_file(path: Path, recorded: dict[str, Any] | None, full: bool = False) -> str | None:
    """What is wrong with ``path`` against its ``recorded`` checksums (a sentence), or ``None`` if it matches."""
    if not recorded:
        return "it has no checksums (written by an older amalgam)"
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"{path.name} cannot be read ({err.strerror})"
    if size != recorded["bytes"]:
        return f"{path.name} has {size} bytes, {recorded['bytes']} were written (truncated or changed)"
    block_bytes, digests = recorded["block_bytes"], recorded["blocks"]
    with path.open("rb") as f:
        for index in blocks_to_check(len(digests), full):
            f.seek(index * block_bytes)
            if _block_digest(f.read(block_bytes)) != digests[index]:
                return f"block {index + 1} of {len(digests)} of {path.name} does not match its checksum"
    return None


def read_meta(folder: Path) -> dict[str, Any] | None:
    """A cache folder's ``key.json``, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads((folder / KEY_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_complete(folder: Path, size: int) -> bool:
    """Whether ``folder`` is a finished, undamaged cache of ``size`` rows (only renamed-into-place folders exist;
    a damaged one is removed, with a warning, to be computed again)."""
    meta = read_meta(folder)
    if meta is None:
        if folder.exists():  # not ours, or damaged by hand: recompute rather than trust it
            logger.warning("knowledge cache: %s is unreadable; computing it again", folder)
            shutil.rmtree(folder, ignore_errors=True)
        return False
    if meta.get("samples") != size or not (folder / ARROW_FILE).is_file():
        logger.warning("knowledge cache: %s does not match its key; computing it again", folder)
        shutil.rmtree(folder, ignore_errors=True)
        return False
    problem = check_file(folder / ARROW_FILE, meta.get("arrow"))
    if problem is not None:
        logger.warning("knowledge cache: %s is damaged (%s); computing it again", folder, problem)
        shutil.rmtree(folder, ignore_errors=True)
        return False
    return True
