"""The knowledge cache: every teacher's logits and tapped features on the transfer set, computed once, on disk.

Teachers are frozen, so what a teacher says about a transfer image never changes: :class:`KnowledgeCache`
computes it once per teacher and stores it as an Arrow file written with ``datasets`` (memory-mapped when read),
so later epochs and later runs read rows instead of running teachers.

**Key.** Each teacher's cache lives in ``$AMALGAM_HOME/knowledge/<key>/``, where ``<key>`` hashes everything the
stored numbers depend on: the teacher's identity (Hub repo id + resolved commit; else a hash of its files; else,
for an in-memory module, of its ``state_dict``), the data fingerprint (name, split, size and a digest of the
sample contents), the teacher's input transform (``input_spec.to_dict()``), the taps and :data:`FORMAT_VERSION`.
Change any of them and the key changes, so the signals are computed again; nothing is ever invalidated in place.

**Layout.** ``<key>/knowledge.arrow`` has one row per transfer sample (in transfer-set order): a ``logits``
column (float32, exact) and one ``tap_<i>`` column per tap (float16, flattened; the shape is in the metadata).
``<key>/key.json`` holds the key's material, the shapes and the size, for people and for checking on read.

**Atomicity.** A cache is written into ``.partial-<key>-<host>-<pid>-<random>/`` beside its final place and
renamed to ``<key>/`` only once complete, so a crash never leaves a folder that a later run reads; a failed
write removes its partial folder, and partial folders left by dead processes are removed on the next write.

**Integrity.** ``key.json`` also holds the Arrow file's size and block checksums (:mod:`.integrity`); a cache
whose file was truncated or changed is found when it is opened, removed with a warning and computed again
(:func:`verify_knowledge_cache`, or ``amalgam cache verify``, reads every cache whole).

**Memory.** Teachers are run one at a time, rows are streamed to disk batch by batch, and teachers given as
sources (Hub ids, folders) are loaded one at a time and freed after use: peak memory is about the largest
teacher plus a batch, not the sum of the teachers (``bench/memory.py`` measures it).

**Augmentation.** With augmentation (:mod:`amalgam.data.augment`) the cached set is the views: K rows per
transfer image (row ``view * N + index``), the augmentation and its seed part of the data fingerprint, so K
views cost K times the disk of one (logits: K x 4 bytes x classes per image; taps likewise).

**Several processes.** Under ``accelerate launch`` every process computes a contiguous shard of the rows (whole
batches, so each row is computed exactly as one process would), and the main process joins the shards, in order,
into the one Arrow file; all processes then read it. The cache folder must be on a file system they share.

**Precision.** ``mixed_precision="bf16"``/``"fp16"`` runs the teachers under autocast (on GPUs), in inference mode
either way; the precision is part of the key when it is not full.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from amalgam.data.augment import TransferViews
from amalgam.data.images import RelabeledImages, TensorImages
from amalgam.knowledge.columns import MappedColumn
from amalgam.knowledge.integrity import ARROW_FILE, KEY_FILE, PARTIAL_PREFIX, check_file, is_complete, read_meta
from amalgam.knowledge.signals import CACHE_BATCH
from amalgam.knowledge.writer import CacheRun, broadcast, write_cache
from amalgam.paths import amalgam_home
from amalgam.teachers.sources import TEACHER_FILES
from amalgam.teachers.teacher import Teacher, TeacherOutput, load_teacher

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the layout or the meaning of the stored numbers changes (2: checksums)
DEFAULT_MAX_CACHE_GB = 20.0
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HASH_CHUNK = 1 << 24


def knowledge_root() -> Path:
    """Where knowledge caches live by default: ``$AMALGAM_HOME/knowledge``."""
    return amalgam_home() / "knowledge"


# --------------------------------------------------------------------------------------------- key material


def teacher_identity(teacher: Teacher) -> dict[str, Any]:
    """What pins a teacher's weights: Hub repo + commit, else a hash of its files, else of its ``state_dict``.

    A Hub revision that is not a commit (a branch name that could move) is not trusted: the files are hashed.
    """
    source = teacher.source
    identity: dict[str, Any] = {"library": teacher.library, "architecture": teacher.architecture}
    if source is not None and source.repo_id and source.revision and _COMMIT.match(source.revision):
        identity.update(repo_id=source.repo_id, revision=source.revision)
    elif source is not None:
        identity["files"] = _hash_files(source.folder, teacher.files)
    else:
        identity["state_dict"] = _hash_state_dict(teacher.model)
    return identity


def _hash_files(folder: Path, files: Sequence[Path] = ()) -> str:
    """Digest of the files a teacher was built from (its config and the weights actually loaded), or, for a
    teacher that does not say, of every file of the patterns the Hub download fetches."""
    digest = hashlib.blake2b(digest_size=20)
    files = sorted(files) or sorted({p for pattern in TEACHER_FILES for p in folder.rglob(pattern) if p.is_file()})
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _hash_state_dict(model: torch.nn.Module) -> str:
    digest = hashlib.blake2b(digest_size=20)
    digest.update(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d buffers cannot be viewed as bytes
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)}".encode())
        digest.update(memoryview(array.view(torch.uint8).numpy()) if array.numel() else b"")
    return digest.hexdigest()


def data_fingerprint(data: Dataset, name: str, split: str = "train") -> dict[str, Any]:
    """Name, split, size and a digest of the samples' contents (labels excluded: teachers never see them).

    In-memory tensors are hashed whole; a ``datasets`` split contributes the content fingerprint ``datasets``
    itself keys its caches with; any other data set is read once and every image's bytes are hashed.

    Example:
        >>> from amalgam.data import TensorImages
        >>> images = TensorImages(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(3))
        >>> fingerprint = data_fingerprint(images, "blank")
        >>> fingerprint["size"], len(fingerprint["digest"])
        (3, 40)
    """
    return {"name": name, "split": split, "size": len(data), "digest": _content_digest(data)}


def _content_digest(data: Dataset) -> str:
    from amalgam.data.hf import HFImages

    digest = hashlib.blake2b(digest_size=20)
    if isinstance(data, RelabeledImages):  # a view that changes labels only
        return _content_digest(data.base)
    if isinstance(data, TransferViews):
        if data.augmentation is None:  # the images themselves
            return _content_digest(data.base)
        digest.update(_content_digest(data.base).encode())
        digest.update(json.dumps(data.describe(), sort_keys=True).encode())
    elif isinstance(data, Subset):
        digest.update(_content_digest(data.dataset).encode())
        digest.update(np.asarray(data.indices, dtype=np.int64).tobytes())
    elif isinstance(data, TensorImages):
        images = data.images.contiguous()
        digest.update(f"tensor:{images.dtype}:{tuple(images.shape)}".encode())
        digest.update(memoryview(images.numpy()))
    elif isinstance(data, HFImages) and getattr(data.split, "_fingerprint", None):
        digest.update(f"datasets:{data.split._fingerprint}:{data.image_column}:{data.channels}:{data.size}".encode())
    else:  # unknown kind of data set: hash what the teachers will actually see
        for index in range(len(data)):
            image = torch.as_tensor(data[index][0]).contiguous()
            digest.update(f"{image.dtype}:{tuple(image.shape)}".encode())
            digest.update(memoryview(image.numpy()))
    return digest.hexdigest()


def cache_key(identity: dict[str, Any], fingerprint: dict[str, Any], input_spec: dict[str, Any],
              taps: Sequence[str], mixed_precision: str = "no") -> tuple[str, dict[str, Any]]:
    """The folder name of one teacher's cache, and the material it hashes (stored in ``key.json``)."""
    material = {"format": FORMAT_VERSION, "teacher": identity, "data": fingerprint, "input": input_spec,
                "taps": list(taps)}
    if mixed_precision != "no":  # full precision keeps the keys of caches written before this option existed
        material["precision"] = mixed_precision
    text = json.dumps(material, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest(), material


# --------------------------------------------------------------------------------------------------- cache


class KnowledgeCache:
    """Teacher signals read from the on-disk knowledge cache (a :class:`~amalgam.knowledge.TeacherSignals`).

    Build it with :meth:`build`; calling it returns each teacher's logits (float32, exactly what the teacher
    said) and tapped features (stored float16, returned float32) for the given transfer indices. ``logits``
    holds every teacher's logits on the whole transfer set (what methods' ``prepare`` may calibrate on).

    Example:
        >>> import tempfile, timm
        >>> from amalgam.data import TensorImages
        >>> from amalgam.teachers import load_teacher
        >>> teacher = load_teacher(timm.create_model("test_resnet", num_classes=3), class_names=["a", "b", "c"])
        >>> images = TensorImages(torch.zeros(5, 1, 8, 8, dtype=torch.uint8), torch.zeros(5, dtype=torch.long))
        >>> cache = KnowledgeCache.build([teacher], images, data_name="blank", taps=[["layer1"]],
        ...                              root=tempfile.mkdtemp(), progress=False)
        >>> out = cache(torch.zeros(2, 1, 8, 8), torch.tensor([0, 4]))[0]
        >>> out.logits.shape, out.features["layer1"].dtype
        (torch.Size([2, 3]), torch.float32)
    """

    def __init__(self, folders: Sequence[Path]) -> None:
        import datasets

        self.folders = [Path(f) for f in folders]
        self.meta = [json.loads((f / KEY_FILE).read_text()) for f in self.folders]
        # memory-mapped: opening costs nothing, rows are paged in as they are read
        self.datasets = [datasets.Dataset.from_file(str(f / ARROW_FILE)) for f in self.folders]
        self.logits = [  # small (samples x classes): kept in memory; features stay on disk until looked up
            torch.from_numpy(np.asarray(ds.with_format("numpy", columns=["logits"])[:]["logits"], dtype=np.float32))
            for ds in self.datasets
        ]
        self._columns = [{tap: MappedColumn(ds.data.column(spec["column"])) for tap, spec in meta["features"].items()}
                         for ds, meta in zip(self.datasets, self.meta)]

    @classmethod
    def build(
        cls,
        teachers: Sequence[Teacher | str | os.PathLike],
        data: Dataset,
        *,
        data_name: str,
        split: str = "train",
        taps: Sequence[Sequence[str]] | None = None,
        root: str | os.PathLike | None = None,
        max_cache_gb: float = DEFAULT_MAX_CACHE_GB,
        batch_size: int = CACHE_BATCH,
        device: torch.device | str | None = None,
        mixed_precision: str = "no",
        num_workers: int = 0,
        progress: bool = True,
    ) -> "KnowledgeCache":
        """Open each teacher's cache, computing (and writing) the ones that are missing.

        Args:
            teachers: :class:`Teacher` objects (run where they are), or sources for :func:`load_teacher`, which
                are loaded one at a time, on ``device`` (default CPU), and freed once their cache is written.
            data: the transfer set, yielding ``(image, ...)`` in a fixed order (labels are not used), or its
                :class:`~amalgam.data.augment.TransferViews` (one row per view).
            data_name, split: name the data in the key (the contents are digested as well).
            taps: per teacher, the feature taps to store (none by default).
            root: the cache folder (default :func:`knowledge_root`).
            max_cache_gb: refuse to write more than this many GB in this call (caches already on disk are free).
            batch_size: teacher batch size while computing.
            mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"``: autocast for the teachers (part of the key).
            num_workers: DataLoader worker processes decoding the images.

        Under several processes (``accelerate launch``) every process must call it: each computes its shard.
        """
        from accelerate import PartialState

        state = PartialState()
        root = Path(root) if root is not None else knowledge_root()
        taps = [list(t) for t in taps] if taps is not None else [[] for _ in teachers]
        if len(taps) != len(teachers):
            raise ValueError(f"{len(teachers)} teachers but {len(taps)} tap lists")
        fingerprint = data_fingerprint(data, data_name, split)
        budget = {"limit": int(max_cache_gb * 1e9), "written": 0}
        run = CacheRun(batch_size, mixed_precision, num_workers, progress and state.is_local_main_process)
        folders = []
        for source, teacher_taps in zip(teachers, taps):
            owned = not isinstance(source, Teacher)
            teacher = load_teacher(source).to(device or "cpu") if owned else source
            key, material = cache_key(teacher_identity(teacher), fingerprint, teacher.input_spec.to_dict(),
                                      teacher_taps, mixed_precision)
            folder = root / key
            complete = is_complete(folder, len(data)) if state.is_main_process else None
            if state.num_processes > 1:  # the main process decides for all (it may have removed a damaged one)
                complete = broadcast(complete)
            if complete:
                logger.info("knowledge cache: teacher %s read from %s", teacher.name, folder)
            else:
                write_cache(teacher, teacher_taps, data, folder, material, run, budget, max_cache_gb, state)
            folders.append(folder)
            if owned:  # one teacher in memory at a time
                del teacher
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        return cls(folders)

    def to(self, device: torch.device | str) -> None:
        """Nothing to move: rows are sent to the batch's device as they are looked up."""

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> list[TeacherOutput]:
        return self.rows(indices, images.device)

    def rows(self, indices: torch.Tensor, device: torch.device | str = "cpu") -> list[TeacherOutput]:
        """Each teacher's cached outputs (logits and taps) at rows ``indices``, on ``device``, without images:
        what a method reads in setup over the whole transfer set."""
        rows = indices.cpu()
        outputs = []
        for logits, columns, meta in zip(self.logits, self._columns, self.meta):
            features = {
                tap: torch.from_numpy(column.take(rows.numpy())).to(device).float()
                .reshape(len(rows), *meta["features"][tap]["shape"])
                for tap, column in columns.items()
            }
            outputs.append(TeacherOutput(logits=logits[rows].to(device), features=features))
        return outputs


def verify_knowledge_cache(root: str | os.PathLike | None = None) -> dict[Path, str]:
    """Read every cache under ``root`` (default :func:`knowledge_root`) whole against its checksums; remove the
    damaged ones (the next run that needs them computes them again) and return what was wrong with each.

    Opening a cache checks only its size and part of its blocks when it is large; this checks all of them.
    """
    root = Path(root) if root is not None else knowledge_root()
    damaged = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir() and not folder.name.startswith(PARTIAL_PREFIX):
            meta = read_meta(folder)
            problem = "key.json is unreadable" if meta is None else check_file(folder / ARROW_FILE, meta.get("arrow"),
                                                                                full=True)
            if problem is not None:
                logger.warning("knowledge cache: %s is damaged (%s); removed", folder, problem)
                shutil.rmtree(folder, ignore_errors=True)
                damaged[folder] = problem
    return damaged
