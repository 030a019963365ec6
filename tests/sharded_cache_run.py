"""Builds one knowledge cache in every process of a ``torch.distributed.run`` launch; driven by
test_sharded_cache.py. ``python -m torch.distributed.run --nproc_per_node 2 tests/sharded_cache_run.py ROOT``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sharded_cache_setup import build  # noqa: E402


if __name__ == "__main__":
    from accelerate import PartialState

    state = PartialState(cpu=True)  # gloo, one process per rank
    cache = build(Path(sys.argv[1]))
    # every process reads the joined cache: each checks its own view of it
    torch.save({"logits": cache.logits[0], "folders": [str(f) for f in cache.folders]},
               Path(sys.argv[1]) / f"rank{state.process_index}.pt")
