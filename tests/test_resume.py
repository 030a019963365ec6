"""Checkpoints, resume after SIGKILL, gradient accumulation and mixed precision in the engine.

The resume test is a real run in a subprocess (this file is also the script it runs): ``amalgamate`` with two
small random timm teachers, the ``test_efficientnet`` student at 32 px on digits, and ``adaptive-weights`` with
10% labels (its path weights are an EMA buffer that changes every step, so the method's state is checked as well
as the student's). One run goes uninterrupted; another, with checkpoints every few optimizer steps, is killed with
SIGKILL as soon as a checkpoint written in the middle of its second epoch appears, then resumed in a new process.
Both end bit for bit equal (``torch.equal``): the resumed run does the same float32 operations in the same order
on the same thread count, from exactly the saved weights, optimizer moments, schedule, random states and shuffled
order, so no tolerance is needed.

Gradient accumulation is compared in-process on a GroupNorm student (``test_efficientnet_gn``; with BatchNorm a
batch of B normalises differently from one of 2B): 2 batches of 16 per step against 1 batch of 32 differ only in
the order of float32 sums (a mean of two means against one mean, convolutions blocked differently), about 1e-7
relative on the gradients, which AdamW amplifies on weights whose gradients are tiny (it divides by their root
mean square): measured after one epoch of 4 steps, 3.6e-9 on average and 1.7e-6 at most over 101,334 weights. So
they must agree to 1e-5 (test_distributed.py's tolerance for the same kind of comparison); without accumulation
the same run ends 2e-2 away from the batch-32 run, so the tolerance tells the two apart.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
EPOCHS = 2
BATCH = 64  # digits: 1437 transfer images, 22 optimizer steps per epoch
CHECKPOINT_EVERY = 4
KILL_IN_EPOCH = 2  # kill once a checkpoint from the middle of this epoch is on disk
ACCUMULATION_ATOL = 1e-5


# --- the run in a subprocess -------------------------------------------------------------------------------------

def _teachers():
    import timm

    from amalgam.teachers import ImageSpec, load_teacher

    torch.manual_seed(SEED)
    teachers = []
    for classes in (["0", "1", "2", "3", "4"], ["5", "6", "7", "8", "9"]):
        model = timm.create_model("test_resnet", num_classes=len(classes), in_chans=1)
        with torch.no_grad():  # spread-out logits: the teachers disagree, so the path weights move
            model.get_classifier().weight.mul_(20.0)
        teachers.append(load_teacher(model, class_names=classes,
                                     input_spec=ImageSpec(size=16, channels=1, mean=(0.5,), std=(0.5,))))
    return teachers


def _main(argv: list[str]) -> None:
    """``python tests/test_resume.py RUN_DIR [--resume] [--checkpoint-every N] [--mixed-precision P --epochs E]``"""
    import amalgam
    from amalgam.students import Student

    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--mixed-precision", default="no")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    teachers = _teachers()
    torch.manual_seed(SEED)
    student = Student("test_efficientnet", class_names=[str(d) for d in range(10)], input_size=32, channels=1)
    # what the student's first convolution computes in while training (autocast or not; accelerate turns the
    # student's own outputs back into float32)
    dtypes: set[str] = set()

    def record_dtype(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if module.training:
            dtypes.add(str(output.dtype))

    next(m for m in student.modules() if isinstance(m, torch.nn.Conv2d)).register_forward_hook(record_dtype)
    amalgam.amalgamate(teachers, student=student, data="digits", method="adaptive-weights", labeled_fraction=0.1,
                       epochs=args.epochs, batch_size=BATCH, seed=SEED, mixed_precision=args.mixed_precision,
                       checkpoint_every=args.checkpoint_every, run_dir=args.run_dir, resume=args.resume,
                       progress=False)
    (args.run_dir / "dtypes.json").write_text(json.dumps(sorted(dtypes)))


def _launch(run_dir: Path, home: Path, *options: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", AMALGAM_HOME=str(home),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, __file__, str(run_dir), *options], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, what: str) -> None:
    try:
        log, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.kill()
        log, _ = process.communicate()
    assert process.returncode == 0, f"the {what} run failed:\n{log[-6000:]}"


def _mid_epoch_checkpoint(folder: Path) -> dict | None:
    """The state of a checkpoint in ``folder`` written in the middle of epoch KILL_IN_EPOCH, if there is one."""
    for candidate in folder.glob("step-*/state.json") if folder.is_dir() else []:
        try:
            progress = json.loads(candidate.read_text())["progress"]
        except (OSError, ValueError):  # pruned between the glob and the read
            continue
        if progress["epochs_done"] == KILL_IN_EPOCH - 1 and progress["batches_done"] > 0:
            return {"name": candidate.parent.name, **progress}
    return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """An uninterrupted run, and a run killed mid-epoch then resumed (plus a bf16 run alongside the resume)."""
    out = tmp_path_factory.mktemp("resume")
    # own knowledge caches, so two runs at once never build the same cache entry together
    reference = _launch(out / "reference", out / "home-reference")
    killed = _launch(out / "killed", out / "home-killed", "--checkpoint-every", str(CHECKPOINT_EVERY))
    deadline, seen = time.monotonic() + 240, None
    while seen is None and killed.poll() is None and time.monotonic() < deadline:
        seen = _mid_epoch_checkpoint(out / "killed" / "checkpoints")
        time.sleep(0.01)
    if seen is not None:
        os.kill(killed.pid, signal.SIGKILL)
    log, _ = killed.communicate()
    assert seen is not None and killed.returncode == -signal.SIGKILL, f"the run was not killed mid-epoch:\n{log}"
    resumed = _launch(out / "killed", out / "home-killed", "--resume", "--checkpoint-every", str(CHECKPOINT_EVERY))
    bf16 = _launch(out / "bf16", out / "home-bf16", "--mixed-precision", "bf16", "--epochs", "1")
    for process, what in ((reference, "uninterrupted"), (resumed, "resumed"), (bf16, "bf16")):
        _finish(process, what)
    return {"out": out, "seen": seen}


def _checkpoint(run_dir: Path) -> Path:
    from amalgam.engine.checkpoint import latest_checkpoint

    return latest_checkpoint(run_dir / "checkpoints")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def _assert_equal(mine: dict, theirs: dict, what: str) -> None:
    assert mine.keys() == theirs.keys(), what
    unequal = [k for k in mine if not torch.equal(mine[k], theirs[k])]
    assert not unequal, f"{what}: {len(unequal)} tensors differ, e.g. {unequal[:3]}"


def test_killed_run_resumed_ends_bit_for_bit_as_an_uninterrupted_one(runs):
    out, seen = runs["out"], runs["seen"]
    reference, resumed = out / "reference", out / "killed"
    assert seen["batches_done"] > 0 and seen["optimizer_steps"] % CHECKPOINT_EVERY == 0
    # the final student, with every weight and BatchNorm statistic
    _assert_equal(_tensors(resumed / "student" / "model.safetensors"),
                  _tensors(reference / "student" / "model.safetensors"), "student")
    # the end-of-run checkpoints: the method's state (path weights), the student, the optimizer's moments
    mine, theirs = _checkpoint(resumed), _checkpoint(reference)
    assert mine.name == theirs.name == f"step-{EPOCHS * 22:08d}"
    method = _tensors(mine / "method.safetensors")
    _assert_equal(method, _tensors(theirs / "method.safetensors"), "method state")
    assert not torch.equal(method["path_weights"], torch.ones(2))  # the EMA buffer moved: the check means something
    _assert_equal(_tensors(mine / "student.safetensors"), _tensors(theirs / "student.safetensors"), "student")
    optimizers = [torch.load(p / "trainer.pt", weights_only=True)["optimizer"] for p in (mine, theirs)]
    assert optimizers[0]["param_groups"] == optimizers[1]["param_groups"]
    for key, state in optimizers[1]["state"].items():
        _assert_equal(optimizers[0]["state"][key], state, f"optimizer state {key}")
    # the history: every number equal (losses, path weights, test accuracy) except the seconds
    histories = [json.loads((run / "metrics.json").read_text())["history"] for run in (resumed, reference)]
    assert len(histories[0]) == EPOCHS and any(k.startswith("path_weight/") for k in histories[0][0])
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in histories[0]] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in histories[1]]
    # resumed, not restarted: the epoch finished before the kill was not trained again, its record is the
    # killed run's own (its time included)
    assert histories[0][0]["seconds"] == seen["history"][0]["seconds"] != histories[1][0]["seconds"]


def test_bf16_on_cpu_autocasts_and_is_recorded(runs):
    run_dir = runs["out"] / "bf16"
    assert json.loads((run_dir / "run.json").read_text())["train"]["mixed_precision"] == "bf16"
    assert json.loads((run_dir / "dtypes.json").read_text()) == ["torch.bfloat16"]
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert torch.isfinite(torch.tensor(history[0]["loss"]))
    weights = _tensors(run_dir / "student" / "model.safetensors")
    assert all(w.dtype in (torch.float32, torch.int64) for w in weights.values())  # master weights stay float32


# --- in-process checks -------------------------------------------------------------------------------------------

class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.register_buffer("ema", torch.zeros(2))


def _save(folder: Path, steps: int, value: float) -> Path:
    from amalgam.engine.checkpoint import Progress, save_checkpoint

    student, method = _Tiny(), _Tiny()
    torch.nn.init.constant_(student.linear.weight, value)
    method.ema.fill_(value)
    trainer = {"optimizer": {}, "scheduler": {}, "scaler": None, "loader_generator": torch.Generator().get_state()}
    return save_checkpoint(folder, student, method, trainer, Progress(optimizer_steps=steps), {"seed": 0})


def test_an_interrupted_write_is_never_read_as_a_checkpoint(tmp_path, monkeypatch):
    from amalgam.engine import checkpoint

    good = _save(tmp_path, 3, 1.0)

    def crash(*args):  # the process dies after writing every file, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 6, 2.0)
    monkeypatch.undo()
    leftover = [p for p in tmp_path.iterdir() if p != good]
    assert [p.name for p in leftover] == [".tmp-step-00000006-" + str(os.getpid())]
    assert sorted(f.name for f in leftover[0].iterdir()) == sorted(f.name for f in good.iterdir())  # complete, yet
    (tmp_path / "step-garbage").mkdir()  # not a step count either
    assert checkpoint.latest_checkpoint(tmp_path) == good
    student, method = _Tiny(), _Tiny()
    loaded = checkpoint.load_checkpoint(good, student, method, {"seed": 0})
    assert loaded.progress.optimizer_steps == 3 and float(method.ema[0]) == 1.0
    assert torch.equal(student.linear.weight, torch.ones(2, 3))
    newer = _save(tmp_path, 9, 3.0)  # the next checkpoint replaces the older one and the leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000009", "step-garbage"]
    assert checkpoint.latest_checkpoint(tmp_path) == newer


def test_resume_errors_say_what_to_do(tmp_path):
    import amalgam
    from amalgam.engine.checkpoint import CheckpointError, check_checkpoint_dir, load_checkpoint

    with pytest.raises(CheckpointError, match=r"nothing to resume: checkpoint_dir .* holds no complete checkpoint"):
        check_checkpoint_dir(tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="needs run_dir"):
        amalgam.amalgamate(_teachers(), epochs=1, progress=False, resume=True)
    with pytest.raises(CheckpointError, match=r"run_dir's checkpoint folder .* holds no complete checkpoint"):
        amalgam.amalgamate(_teachers(), epochs=1, progress=False, run_dir=tmp_path / "never-ran", resume=True)
    assert not (tmp_path / "never-ran").exists()  # refused before writing anything
    written = _save(tmp_path / "run" / "checkpoints", 3, 1.0)
    with pytest.raises(CheckpointError, match=r"already holds a checkpoint of an earlier run \(step-00000003\)"):
        amalgam.amalgamate(_teachers(), epochs=1, progress=False, run_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"written with seed=0, this run has seed=1"):
        load_checkpoint(written, _Tiny(), _Tiny(), {"seed": 1})
    with pytest.raises(CheckpointError, match="does not fit this run's student"):
        load_checkpoint(written, torch.nn.Linear(3, 2), _Tiny(), {"seed": 0})


def _accumulation_run(batch_size: int, grad_accumulation: int) -> tuple[torch.Tensor, list[float]]:
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from amalgam.data import TensorImages, load_digits
    from amalgam.engine import TrainConfig, train
    from amalgam.knowledge import CachedSignals
    from amalgam.methods.registry import get_method
    from amalgam.students import Student
    from amalgam.teachers import LabelSpace

    teachers = _teachers()
    transfer = TensorImages(load_digits().train.images[:128], torch.full((128,), -1))  # unlabeled: means over B
    space = LabelSpace.union([t.class_names for t in teachers])
    torch.manual_seed(SEED)
    method = get_method("soft-targets")(space, teachers)
    student = Student("test_efficientnet_gn", class_names=space.class_names, input_size=32, channels=1)
    rates: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: rates.append(opt.param_groups[0]["lr"]))
    try:
        config = TrainConfig(epochs=1, batch_size=batch_size, grad_accumulation=grad_accumulation, seed=SEED,
                             cpu=True)
        train(student, method, CachedSignals.compute(teachers, transfer, progress=False), transfer, config,
              progress=False)
    finally:
        handle.remove()
    return torch.cat([p.detach().flatten() for p in student.parameters()]), rates


def test_accumulating_two_batches_of_b_is_one_batch_of_2b():
    torch.set_num_threads(1)
    accumulated, accumulated_rates = _accumulation_run(16, 2)
    whole, whole_rates = _accumulation_run(32, 1)
    unaccumulated, _ = _accumulation_run(16, 1)
    assert len(accumulated_rates) == len(whole_rates) == 4  # optimizer steps, counted by the schedule as such
    assert accumulated_rates == whole_rates
    difference = (accumulated - whole).abs().max().item()
    assert difference <= ACCUMULATION_ATOL, difference
    assert (unaccumulated - whole).abs().max().item() > 1e-3


def test_cli_wires_resume_mixed_precision_and_accumulation(tmp_path, monkeypatch):
    import amalgam.api
    from amalgam.cli import RECIPE_FILE, main

    calls: list[dict] = []
    monkeypatch.setattr(amalgam.api, "amalgamate", lambda teachers, **kwargs: calls.append(kwargs) or _Done())
    monkeypatch.setattr("amalgam.zoo.build_demo_zoo", lambda progress=True: [])  # teachers are not needed
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[train]\nepochs = 3\ngrad_accumulation = 2\ncheckpoint_every = 5\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "runs"), "--mixed-precision", "bf16", "--quiet"]) == 0
    first = calls[-1]
    train = first["train"]  # the recipe's [train] is the TrainConfig amalgamate gets
    assert (train.epochs, train.grad_accumulation, train.checkpoint_every, train.mixed_precision, first["resume"]) == (
        3, 2, 5, "bf16", False)
    run_dir = first["run_dir"]
    assert json.loads((run_dir / RECIPE_FILE).read_text())["train"]["mixed_precision"] == "bf16"
    assert main(["run", "--resume", str(run_dir), "--quiet"]) == 0  # the saved recipe, the same folder
    again = calls[-1]
    assert again["resume"] is True and again["run_dir"] == run_dir
    same = [k for k in first if k not in ("resume", "data")]  # data: the same set, loaded again
    assert {k: again[k] for k in same} == {k: first[k] for k in same}
    assert main(["run", "--resume", str(tmp_path / "nowhere"), "--quiet"]) == 2  # no recipe.json: an error


class _Done:
    run_dir = None

    def table(self) -> str:
        return ""


if __name__ == "__main__":
    _main(sys.argv[1:])
