"""The knowledge cache under 2 processes (gloo on CPU, launched with torch.distributed.run): each process computes
a shard of whole batches and the main process joins them; the result equals the cache one process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed

from amalgam.knowledge.cache import ARROW_FILE, KEY_FILE, PARTIAL_PREFIX
from amalgam.knowledge.writer import _shard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sharded_cache_setup import BATCH, build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


def test_shards_are_whole_batches_that_cover_every_row_once():
    for size, processes in ((100, 2), (7, 3), (33, 4), (16, 2)):
        shards = [_shard(size, BATCH, rank, processes) for rank in range(processes)]
        assert [row for shard in shards for row in shard] == list(range(size))
        assert all(shard.start % BATCH == 0 for shard in shards)


def test_two_processes_write_the_cache_one_process_writes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    shared = tmp_path / "two"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "tests" / "sharded_cache_run.py"), str(shared)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    torch.set_num_threads(1)  # the same arithmetic as the launched processes
    one = build(tmp_path / "one")
    (folder,) = one.folders
    joined = shared / folder.name  # the same key
    assert sorted(p.name for p in shared.iterdir() if p.is_dir()) == [folder.name]  # no partial shard left
    assert not any(p.name.startswith(PARTIAL_PREFIX) for p in shared.iterdir())
    ranks = [torch.load(shared / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(r["folders"] == [str(joined)] for r in ranks)
    from amalgam.knowledge import KnowledgeCache

    two = KnowledgeCache([joined])
    assert one.logits[0].shape == (100, 3)
    assert torch.equal(two.logits[0], one.logits[0]) and all(torch.equal(r["logits"], one.logits[0]) for r in ranks)
    rows = torch.arange(100)
    images = torch.zeros(100, 1, 8, 8)
    assert torch.equal(two(images, rows)[0].features["layer1"], one(images, rows)[0].features["layer1"])
    meta_one, meta_two = (json.loads((f / KEY_FILE).read_text()) for f in (folder, joined))
    assert {k: v for k, v in meta_two.items() if k != "arrow"} == {k: v for k, v in meta_one.items() if k != "arrow"}
    assert (joined / ARROW_FILE).stat().st_size > 0
