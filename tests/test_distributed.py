"""The engine under 2-process data parallel training (gloo on CPU), launched for real with torch.distributed.run.

tests/distributed_run.py trains a student with ``selective-learning`` (live teachers) and ``trust-learner``
(cached teacher logits, trust model fitted on each process with the same seed) once in 2 processes with batch
B = 16 each, and once in 1 process with batch 2B = 32, same seed; each process records the indices of its
batches, the per-sample teacher weights the method used, the loss terms of each step and each step's
learning rate. With accelerate's default sharding process i takes batches i, i + 2, ... of the same shuffled
order, so step t of the 2-process run sees, split in two, exactly the 2B samples of step t of the 1-process run.

The student is ``test_efficientnet_gn`` (GroupNorm): with a BatchNorm student each process normalises over its
own B samples, a different computation from one batch of 2B (about 1e-2 apart), which no engine change short of
SyncBatchNorm (not available on CPU) can match. The transfer samples are unlabeled: ``masked_cross_entropy``
averages over the labeled rows of each process's batch, so with labels the two runs differ when the processes
hold different numbers of labeled rows.

Tolerances: both runs do the same fp32 arithmetic in a different order (two means over B and a 2-way all-reduce
average against one mean over 2B, convolutions blocked for 16 or 32 images), about 1e-7 relative per step, which
training compounds (measured: at most 6e-6 relative on the loss after 6 steps, 8e-7 on the final weights). The
errors these tests exist to catch are 1e-3 and larger (a learning-rate schedule counted in the wrong steps moved
the loss by 3e-2 by the third step). So losses must agree to rtol 1e-4, the final weights to 1e-5, the weights a
method gives a sample to 1e-6, and the learning rates exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "distributed_run.py"
METHODS = ["selective-learning", "trust-learner"]
BATCH = 16  # per process; the 1-process run takes 2 * BATCH
EPOCHS = 2
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-6
STUDENT_ATOL = 1e-5

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


def _launch(out: Path, processes: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if processes == 1:
        command = [sys.executable, str(SCRIPT), str(out), "--batch-size", str(2 * BATCH)]
    else:  # --standalone: a rendezvous on a free local port
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   str(SCRIPT), str(out), "--batch-size", str(BATCH)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """For each method: the 1-process record and the two ranks' records of the 2-process run."""
    out = tmp_path_factory.mktemp("distributed")
    launched = {n: _launch(out / f"{n}-process", n) for n in (1, 2)}
    for n, process in launched.items():
        try:
            log, _ = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            log, _ = process.communicate()
        assert process.returncode == 0, f"the {n}-process run failed:\n{log[-6000:]}"
    return {
        method: {
            "one": torch.load(out / "1-process" / f"{method}-rank0-of1.pt"),
            "ranks": [torch.load(out / "2-process" / f"{method}-rank{r}-of2.pt") for r in range(2)],
        }
        for method in METHODS
    }


@pytest.mark.parametrize("method", METHODS)
def test_ranks_take_disjoint_halves_of_the_one_process_batches(runs, method):
    one, ranks = runs[method]["one"], runs[method]["ranks"]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    steps = len(one["steps"])
    assert steps == EPOCHS * 3 and [len(r["steps"]) for r in ranks] == [steps, steps]  # 120 samples: 3 steps of 32
    for epoch in range(1, EPOCHS + 1):
        seen = [[i for s in r["steps"] if s["epoch"] == epoch for i in s["indices"]] for r in ranks]
        assert all(len(s) == len(set(s)) == 3 * BATCH for s in seen)
        assert not set(seen[0]) & set(seen[1]), f"epoch {epoch}: both ranks trained on the same samples"
    for t in range(steps):  # the same data order: rank 0 has the first half of the 1-process batch, rank 1 the rest
        assert ranks[0]["steps"][t]["indices"] + ranks[1]["steps"][t]["indices"] == one["steps"][t]["indices"]


@pytest.mark.parametrize("method", METHODS)
def test_each_rank_weights_its_own_samples_as_one_process_does(runs, method):
    one, ranks = runs[method]["one"], runs[method]["ranks"]
    reference = one["reference_weights"]  # every transfer sample, computed in one call in one process
    assert reference.shape == (120, 2)
    if method == "trust-learner":  # the trust model was fitted identically everywhere
        assert reference.std(dim=0).min() > 1e-3  # weights that differ between samples, so a mix-up would show
        for r in ranks:
            assert torch.equal(r["method_parameters"], one["method_parameters"])
    else:
        assert set(reference.argmax(dim=-1).tolist()) == {0, 1}  # both teachers get chosen for some samples
    worst = 0.0
    for record in [one, *ranks]:
        for step in record["steps"]:
            weights = step["weights"]
            assert weights.shape == (len(step["indices"]), 2)  # per sample, on this process's own batch
            worst = max(worst, (weights - reference[step["indices"]]).abs().max().item())
    assert worst <= WEIGHT_ATOL


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_of_batch_b_follow_the_one_process_curve_of_batch_2b(runs, method):
    one, ranks = runs[method]["one"], runs[method]["ranks"]
    for t, step in enumerate(one["steps"]):
        assert [r["steps"][t]["lr"] for r in ranks] == pytest.approx([step["lr"]] * 2, rel=1e-12, abs=0)
        for term, value in step["losses"].items():
            mean = sum(r["steps"][t]["losses"][term] for r in ranks) / 2
            assert mean == pytest.approx(value, rel=LOSS_RTOL, abs=1e-7), f"step {t}, {term}"
    assert one["steps"][-1]["lr"] < 0.1 * one["steps"][0]["lr"]  # the cosine schedule ran its course
    # the history train() returns: the same on both ranks (means over both), and the 1-process one
    assert ranks[0]["history"] == ranks[1]["history"]
    for mine, reference in zip(ranks[0]["history"], one["history"], strict=True):
        assert mine.keys() == reference.keys()
        assert mine["loss_terms"] == reference["loss_terms"]
        for key, value in reference.items():
            if key != "loss_terms":
                assert mine[key] == pytest.approx(value, rel=LOSS_RTOL, abs=1e-7), f"epoch {reference['epoch']}, {key}"
    assert torch.equal(ranks[0]["student"], ranks[1]["student"])  # replicas stay identical
    assert torch.allclose(ranks[0]["student"], one["student"], rtol=0, atol=STUDENT_ATOL)
