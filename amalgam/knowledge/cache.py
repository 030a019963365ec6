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
import math
import os
import re
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from amalgam.data.augment import TransferViews
from amalgam.data.images import RelabeledImages, TensorImages
from amalgam.errors import AmalgamError
from amalgam.knowledge.integrity import check_file, file_checksums
from amalgam.knowledge.signals import CACHE_BATCH
from amalgam.paths import amalgam_home
from amalgam.teachers.sources import TEACHER_FILES
from amalgam.teachers.teacher import Teacher, TeacherOutput, load_teacher

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the layout or the meaning of the stored numbers changes (2: checksums)
DEFAULT_MAX_CACHE_GB = 20.0
ARROW_FILE = "knowledge.arrow"
KEY_FILE = "key.json"
PARTIAL_PREFIX = ".partial-"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HASH_CHUNK = 1 << 24


class KnowledgeCacheError(AmalgamError):
    """The knowledge cache cannot be written (for example, it would exceed ``max_cache_gb``)."""


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
        self._taps = [list(meta["features"]) for meta in self.meta]
        self._tables = [ds.with_format("numpy", columns=[meta["features"][t]["column"] for t in taps])
                        for ds, meta, taps in zip(self.datasets, self.meta, self._taps)]

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
        run = _Run(batch_size, mixed_precision, num_workers, progress and state.is_local_main_process)
        folders = []
        for source, teacher_taps in zip(teachers, taps):
            owned = not isinstance(source, Teacher)
            teacher = load_teacher(source).to(device or "cpu") if owned else source
            key, material = cache_key(teacher_identity(teacher), fingerprint, teacher.input_spec.to_dict(),
                                      teacher_taps, mixed_precision)
            folder = root / key
            complete = _complete(folder, len(data)) if state.is_main_process else None
            if state.num_processes > 1:  # the main process decides for all (it may have removed a damaged one)
                complete = _broadcast(complete)
            if complete:
                logger.info("knowledge cache: teacher %s read from %s", teacher.name, folder)
            else:
                _write(teacher, teacher_taps, data, folder, material, run, budget, max_cache_gb, state)
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
        rows = indices.cpu()
        outputs = []
        for logits, table, meta, taps in zip(self.logits, self._tables, self.meta, self._taps):
            features = {}
            if taps:
                batch = table[rows.tolist()]
                for tap in taps:
                    spec = meta["features"][tap]
                    values = torch.from_numpy(np.asarray(batch[spec["column"]]))
                    features[tap] = values.to(images.device).float().reshape(len(rows), *spec["shape"])
            outputs.append(TeacherOutput(logits=logits[rows].to(images.device), features=features))
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
            meta = _read_meta(folder)
            problem = "key.json is unreadable" if meta is None else check_file(folder / ARROW_FILE, meta.get("arrow"),
                                                                                full=True)
            if problem is not None:
                logger.warning("knowledge cache: %s is damaged (%s); removed", folder, problem)
                shutil.rmtree(folder, ignore_errors=True)
                damaged[folder] = problem
    return damaged


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / KEY_FILE).read_text())
    except (OSError, ValueError):
        return None


def _complete(folder: Path, size: int) -> bool:
    """Whether ``folder`` is a finished, undamaged cache of ``size`` rows (only renamed-into-place folders exist;
    a damaged one is removed, with a warning, to be computed again)."""
    meta = _read_meta(folder)
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


@dataclass(frozen=True)
class _Run:
    """How a cache is computed (not part of what it holds, except the precision, which is in the key)."""

    batch_size: int
    mixed_precision: str
    num_workers: int
    progress: bool


def _broadcast(value: Any) -> Any:
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _shard(size: int, batch_size: int, rank: int, processes: int) -> range:
    """The rows process ``rank`` of ``processes`` computes: a contiguous run of whole batches (the last process
    also takes the last, short batch), so that every batch is one the one-process cache computes as well.

    >>> [_shard(10, 3, r, 2) for r in range(2)]
    [range(0, 6), range(6, 10)]
    """
    batches = math.ceil(size / batch_size)
    first, last = rank * batches // processes, (rank + 1) * batches // processes
    return range(min(size, first * batch_size), min(size, last * batch_size))


def _write(teacher: Teacher, taps: list[str], data: Dataset, folder: Path, material: dict[str, Any], run: _Run,
           budget: dict[str, int], max_cache_gb: float, state: Any) -> None:
    """Compute one teacher's cache and rename it into place; under several processes, each computes its shard
    and the main process joins them (see the module docstring)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:
        _remove_dead_partials(folder)
    owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial = folder.parent / f"{PARTIAL_PREFIX}{folder.name}-{owner}"
    partial.mkdir()
    sharded = state.num_processes > 1
    rows = _shard(len(data), run.batch_size, state.process_index, state.num_processes) if sharded \
        else range(len(data))
    meta: dict[str, Any] = {}
    try:
        try:
            meta = _compute(teacher, taps, data, rows, partial / ARROW_FILE, material, run, budget, max_cache_gb,
                            folder.name)
        finally:
            if sharded:  # every process reaches the join, even one that failed (the main one then fails too)
                shards = _gather_shards(partial if meta else None)
        if sharded and state.is_main_process:
            if any(shard is None for shard in shards):
                raise KnowledgeCacheError(f"teacher {teacher.name!r}: a process failed to compute its shard")
            _join(shards, partial / ARROW_FILE, meta)
        if state.is_main_process:
            _publish(partial, folder, meta, len(data))
            logger.info("knowledge cache: teacher %s written to %s (%s)", teacher.name, folder, meta["summary"])
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        if sharded:
            state.wait_for_everyone()  # the cache is in place before any process opens it
            if partial.exists() and partial != folder:
                shutil.rmtree(partial, ignore_errors=True)


def _gather_shards(partial: Path | None) -> list[Path | None]:
    from accelerate.utils import gather_object

    return [None if p is None else Path(p) for p in gather_object([None if partial is None else str(partial)])]


@torch.inference_mode()
def _compute(teacher: Teacher, taps: list[str], data: Dataset, rows: range, path: Path, material: dict[str, Any],
             run: _Run, budget: dict[str, int], max_cache_gb: float, key: str) -> dict[str, Any]:
    """The teacher's logits and taps on ``rows`` of ``data``, streamed into the Arrow file ``path``; returns the
    cache's metadata (shapes and size, from the first batch)."""
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    # the teacher's own view of each image is made where the image is decoded (in the workers, when there are)
    loader = DataLoader(TeacherInputs(Subset(data, rows) if len(rows) != len(data) else data, teacher.input_spec),
                        batch_size=run.batch_size, shuffle=False, num_workers=run.num_workers,
                        pin_memory=teacher.device.type == "cuda")
    bar = tqdm(loader, desc=f"teacher {teacher.name}", disable=not run.progress, leave=False)
    autocast = torch.autocast(teacher.device.type, dtype=torch.bfloat16 if run.mixed_precision == "bf16"
                              else torch.float16, enabled=run.mixed_precision != "no")
    writer = None
    meta: dict[str, Any] = {}
    try:
        for batch in bar:
            with autocast:
                out = teacher.run_prepared(batch, taps=taps)
            logits = out.logits.float().cpu().numpy()
            features = [out.features[t].to(torch.float16).cpu() for t in taps]
            if writer is None:  # the first batch tells the shapes: size the cache before writing any of it
                meta = _plan(teacher, taps, data, logits, features, key, material, budget, max_cache_gb)
                bar.set_description(f"teacher {teacher.name}: caching {meta['summary']}")
                writer = ArrowWriter(features=_arrow_features(meta, taps), path=str(path))
            table = {"logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.ravel()), logits.shape[1])}
            for tap, values in zip(taps, features):
                flat = values.reshape(len(values), -1).numpy()
                table[meta["features"][tap]["column"]] = pa.FixedSizeListArray.from_arrays(
                    pa.array(flat.ravel()), flat.shape[1])
            writer.write_table(pa.table(table))
        if writer is None:
            raise KnowledgeCacheError(f"the transfer set is empty: nothing to cache for teacher {teacher.name!r}")
        written, _ = writer.finalize()
        if written != len(rows):
            raise KnowledgeCacheError(f"teacher {teacher.name!r}: wrote {written} rows for {len(rows)} samples")
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    finally:
        bar.close()
    return meta


class TeacherInputs(Dataset):
    """The images of ``data`` as one teacher takes them (``spec`` applied to each image)."""

    def __init__(self, data: Dataset, spec: Any) -> None:
        self.data, self.spec = data, spec

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.spec(torch.as_tensor(self.data[index][0])[None])[0]


def _arrow_features(meta: dict[str, Any], taps: list[str]) -> Any:
    from datasets import Features, List, Value

    columns = {"logits": List(Value("float32"), length=meta["logits"])}
    for tap in taps:
        spec = meta["features"][tap]
        columns[spec["column"]] = List(Value("float16"), length=int(np.prod(spec["shape"])))
    return Features(columns)


def _join(shards: Sequence[Path], path: Path, meta: dict[str, Any]) -> None:
    """The shards' Arrow files, in order, as one Arrow file at ``path`` (the first shard's file is replaced)."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    joined = path.with_name("joined.arrow")
    writer = ArrowWriter(features=_arrow_features(meta, list(meta["features"])), path=str(joined))
    for shard in shards:
        writer.write_table(datasets.Dataset.from_file(str(shard / ARROW_FILE)).data.table)
    writer.finalize()
    joined.replace(path)


def _publish(partial: Path, folder: Path, meta: dict[str, Any], size: int) -> None:
    """Checksum the finished Arrow file, write ``key.json`` (last: a folder with key.json is whole) and rename the
    partial folder into place (keeping another process's, when it finished the same key first)."""
    meta["arrow"] = file_checksums(partial / ARROW_FILE)  # checked on every open (integrity.py)
    (partial / KEY_FILE).write_text(json.dumps(meta, indent=2))
    try:
        partial.rename(folder)
    except OSError:
        if not _complete(folder, size):
            raise
        shutil.rmtree(partial, ignore_errors=True)


def _plan(teacher: Teacher, taps: list[str], data: Dataset, logits: np.ndarray, features: list[torch.Tensor],
          folder_name: str, material: dict[str, Any], budget: dict[str, int], max_cache_gb: float) -> dict[str, Any]:
    """Shapes and size of one teacher's cache, logged; refuses when the call's writes would pass the limit."""
    shapes = {tap: list(values.shape[1:]) for tap, values in zip(taps, features)}
    per_sample = logits.shape[1] * 4 + sum(int(np.prod(s)) * 2 for s in shapes.values())
    total = per_sample * len(data)
    summary = f"{len(data)} samples x {_human(per_sample)} = {_human(total)}"
    logger.info("knowledge cache: teacher %s will take %s (logits float32, %d feature taps float16)",
                teacher.name, summary, len(taps))
    if budget["written"] + total > budget["limit"]:
        raise KnowledgeCacheError(
            f"the knowledge cache of teacher {teacher.name!r} would take {summary} (taps {taps or 'none'}), "
            f"{_human(budget['written'] + total)} with this run's other caches, over the limit max_cache_gb="
            f"{max_cache_gb:g}. Raise max_cache_gb (amalgamate(..., max_cache_gb=...)), tap fewer or smaller "
            "features, or run the teachers live with cache_teachers=False."
        )
    budget["written"] += total
    return {
        **material,
        "key": folder_name,
        "name": teacher.name,
        "samples": len(data),
        "logits": int(logits.shape[1]),
        "features": {tap: {"column": f"tap_{i}", "shape": shapes[tap], "dtype": "float16"}
                     for i, tap in enumerate(taps)},
        "bytes": total,
        "summary": summary,
    }


def _remove_dead_partials(folder: Path) -> None:
    """Remove partial writes of this key left by processes of this host that no longer run (crashes)."""
    host = socket.gethostname()
    for partial in folder.parent.glob(f"{PARTIAL_PREFIX}{folder.name}-*"):
        parts = partial.name[len(PARTIAL_PREFIX) + len(folder.name) + 1:].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except PermissionError:  # alive, owned by someone else
            pass


def _human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
