"""Writing one teacher's knowledge cache: computed batch by batch into an Arrow file (each process its shard of
whole batches under ``accelerate launch``, joined by the main one), checksummed, and renamed into place only
once whole (see :mod:`amalgam.knowledge.cache` for the layout and the guarantees)."""

from __future__ import annotations

import json
import logging
import math
import os
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

from amalgam.errors import AmalgamError
from amalgam.knowledge.inputs import TeacherInputs
from amalgam.knowledge.integrity import ARROW_FILE, KEY_FILE, PARTIAL_PREFIX, file_checksums, is_complete
from amalgam.teachers.teacher import Teacher

logger = logging.getLogger("amalgam.knowledge.cache")


class KnowledgeCacheError(AmalgamError):
    """The knowledge cache cannot be written (for example, it would exceed ``max_cache_gb``)."""


@dataclass(frozen=True)
class CacheRun:
    """How a cache is computed (not part of what it holds, except the precision, which is in the key)."""

    batch_size: int
    mixed_precision: str
    num_workers: int
    progress: bool


def broadcast(value: Any) -> Any:
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


def write_cache(teacher: Teacher, taps: list[str], data: Dataset, folder: Path, material: dict[str, Any], run: CacheRun,
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
             run: CacheRun, budget: dict[str, int], max_cache_gb: float, key: str) -> dict[str, Any]:
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
        if not is_complete(folder, size):
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
