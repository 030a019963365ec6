"""The on-disk knowledge cache: read back instead of recomputed, equal to live teachers, keyed soundly, atomic.

Teachers are the demo zoo (a timm CNN and a transformers ViT) or small timm modules; data are real digits.
Whether a teacher ran is counted with a forward hook on its model: the code under test is not patched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import amalgam
from amalgam.config import TrainConfig
from amalgam.data import TensorImages, load_digits
from amalgam.knowledge import KnowledgeCache, KnowledgeCacheError
from amalgam.knowledge.cache import ARROW_FILE, KEY_FILE, PARTIAL_PREFIX
from amalgam.knowledge.signals import CACHE_BATCH
from amalgam.methods import Method
from amalgam.methods.base import Needs
from amalgam.pipeline import Knowledge, Pipeline
from amalgam.teachers import ImageSpec, LabelSpace, Teacher, load_teacher

SAMPLES = 300  # two cache batches: the second is partial, so batching is exercised


@pytest.fixture(scope="module")
def digits() -> TensorImages:
    train = load_digits().train
    return TensorImages(train.images[:SAMPLES].clone(), train.labels[:SAMPLES].clone())


@contextmanager
def forward_calls(teacher: Teacher):
    """Counts the teacher model's forward calls inside the block."""
    calls = [0]
    handle = teacher.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def computed(teacher: Teacher, data, root: Path, taps=(), name: str = "digits") -> bool:
    """Build the cache for one teacher and say whether the teacher had to run."""
    with forward_calls(teacher) as calls:
        KnowledgeCache.build([teacher], data, data_name=name, taps=[list(taps)], root=root, progress=False)
    return calls[0] > 0


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_second_build_reads_the_cache_and_equals_live_teachers(demo_zoo, digits, tmp_path):
    teachers = [load_teacher(folder) for folder in demo_zoo]
    taps = [[t.tap_names()[0]] for t in teachers]  # a CNN stage and a ViT hidden state
    with forward_calls(teachers[0]) as cnn, forward_calls(teachers[1]) as vit:
        KnowledgeCache.build(teachers, digits, data_name="digits", taps=taps, root=tmp_path, progress=False)
    assert cnn[0] > 0 and vit[0] > 0
    assert len(entries(tmp_path)) == 2 and all((tmp_path / e / KEY_FILE).is_file() for e in entries(tmp_path))

    with forward_calls(teachers[0]) as cnn, forward_calls(teachers[1]) as vit:
        cache = KnowledgeCache.build(teachers, digits, data_name="digits", taps=taps, root=tmp_path, progress=False)
    assert cnn[0] == 0 and vit[0] == 0, "the second build must read the cache, not run the teachers"

    # The cache ran the teachers on batches 0..255 and 256..299: the same batches live give the same numbers.
    indices = torch.arange(SAMPLES)
    images = torch.stack([digits[i][0] for i in range(SAMPLES)])
    live = [[t(images[s:s + CACHE_BATCH], taps=tap) for s in range(0, SAMPLES, CACHE_BATCH)]
            for t, tap in zip(teachers, taps)]
    shuffled = indices[torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(0))][:64]
    looked_up = cache(images[shuffled], shuffled)
    for k, tap in enumerate(taps):
        live_logits = torch.cat([out.logits for out in live[k]])
        live_features = torch.cat([out.features[tap[0]] for out in live[k]])
        assert torch.equal(cache.logits[k], live_logits)  # logits are stored float32: exact
        assert torch.equal(looked_up[k].logits, live_logits[shuffled])
        cached = looked_up[k].features[tap[0]]
        assert cached.dtype == torch.float32 and cached.shape == live_features[shuffled].shape
        # features are stored float16: equal within half precision
        assert torch.allclose(cached, live_features[shuffled], rtol=1e-3, atol=1e-3 * live_features.abs().max())


def test_every_part_of_the_key_recomputes_when_it_changes(demo_zoo, digits, tmp_path):
    cnn = load_teacher(demo_zoo[0])
    tap = cnn.tap_names()[0]
    assert computed(cnn, digits, tmp_path)
    assert not computed(cnn, digits, tmp_path)

    # revision: the same files published as two Hub commits are two caches
    for revision in ("a" * 40, "b" * 40):
        cnn.source = dataclasses.replace(cnn.source, repo_id="org/cnn-digits-0to4", revision=revision)
        assert computed(cnn, digits, tmp_path)
        assert not computed(cnn, digits, tmp_path)

    # weights: a folder whose safetensors changed
    folder = tmp_path.parent / f"{tmp_path.name}-teacher"
    shutil.copytree(demo_zoo[0], folder)
    assert not computed(load_teacher(folder), digits, tmp_path)  # same files, other folder: same cache
    weights = load_file(folder / "model.safetensors")
    first = min(weights)
    weights[first] = weights[first] + 1e-3
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert computed(load_teacher(folder), digits, tmp_path)

    # weights of an in-memory module: its state_dict
    module = load_teacher(timm.create_model("test_resnet", num_classes=3, in_chans=1), class_names=list("abc"),
                          input_spec=ImageSpec(size=16, channels=1))
    assert computed(module, digits, tmp_path)
    with torch.no_grad():
        next(module.model.parameters()).add_(1e-3)
    assert computed(module, digits, tmp_path)

    # data: one pixel of one image, or another name
    changed = TensorImages(digits.images.clone(), digits.labels)
    changed.images[7, 0, 3, 3] ^= 1
    assert computed(cnn, changed, tmp_path)
    assert computed(cnn, digits, tmp_path, name="digits-copy")

    # taps and the input transform
    assert computed(cnn, digits, tmp_path, taps=[tap])
    assert not computed(cnn, digits, tmp_path, taps=[tap])
    resized = load_teacher(demo_zoo[0], input_spec=dataclasses.replace(cnn.input_spec, size=(24, 24)))
    assert computed(resized, digits, tmp_path)


class Flaky(nn.Module):
    """A teacher model that raises on its ``fail_at``-th call (state_dict as the wrapped model's)."""

    def __init__(self, inner: nn.Module, fail_at: int | None) -> None:
        super().__init__()
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("teacher failed midway")
        return self.inner(x)


def _module_teacher(fail_at: int | None) -> Teacher:
    torch.manual_seed(0)
    model = Flaky(timm.create_model("test_resnet", num_classes=3, in_chans=1), fail_at)
    return load_teacher(model, class_names=list("abc"), input_spec=ImageSpec(size=16, channels=1))


def test_an_interrupted_write_leaves_nothing_a_later_run_reads(digits, tmp_path):
    flaky = _module_teacher(fail_at=3)  # call 1 is load_teacher's probe; the 2nd batch of 64 fails
    with pytest.raises(RuntimeError, match="failed midway"):
        KnowledgeCache.build([flaky], digits, data_name="digits", root=tmp_path, batch_size=64, progress=False)
    assert entries(tmp_path) == []

    healthy = _module_teacher(fail_at=None)
    assert computed(healthy, digits, tmp_path)
    cache = KnowledgeCache.build([healthy], digits, data_name="digits", root=tmp_path, progress=False)
    images = torch.stack([digits[i][0] for i in range(CACHE_BATCH)])
    assert torch.equal(cache.logits[0][:CACHE_BATCH], healthy(images).logits)


def test_a_process_killed_midway_leaves_only_a_partial_folder_that_is_never_read(digits, tmp_path):
    script = textwrap.dedent(f"""
        import os, torch
        from amalgam.data import TensorImages, load_digits
        from amalgam.knowledge import KnowledgeCache
        from tests.test_knowledge_cache import _module_teacher, SAMPLES
        teacher = _module_teacher(fail_at=None)
        calls = [0]
        def die(*_):
            calls[0] += 1
            if calls[0] == 2:  # the first batch is written; the process dies during the second
                os._exit(3)
        teacher.model.register_forward_hook(die)
        train = load_digits().train
        data = TensorImages(train.images[:SAMPLES].clone(), train.labels[:SAMPLES].clone())
        KnowledgeCache.build([teacher], data, data_name="digits", root={str(tmp_path)!r}, batch_size=64,
                             progress=False)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 3, done.stderr
    [partial] = entries(tmp_path)
    assert partial.startswith(PARTIAL_PREFIX) and (tmp_path / partial / ARROW_FILE).exists()

    teacher = _module_teacher(fail_at=None)
    assert computed(teacher, digits, tmp_path)  # the partial folder was not taken for a cache
    assert len(entries(tmp_path)) == 1 and not entries(tmp_path)[0].startswith(PARTIAL_PREFIX)


def test_a_cache_over_max_cache_gb_is_refused_before_anything_is_written(demo_zoo, digits, tmp_path, caplog):
    cnn = load_teacher(demo_zoo[0])
    with caplog.at_level(logging.INFO, logger="amalgam.knowledge.cache"), \
            pytest.raises(KnowledgeCacheError, match=r"max_cache_gb=1e-06.*Raise max_cache_gb"):
        KnowledgeCache.build([cnn], digits, data_name="digits", taps=[cnn.tap_names()[:1]], root=tmp_path,
                             max_cache_gb=1e-6, progress=False)
    assert entries(tmp_path) == []
    assert f"{SAMPLES} samples x" in caplog.text  # the size was said before the refusal


class TapsEverything(Method):
    """A method that taps each teacher's first suggested feature (to check the wiring of amalgamate)."""

    name = "test-taps"

    def __init__(self, label_space: LabelSpace, teachers) -> None:
        super().__init__(label_space, teachers)
        self.taps = [t.tap_names()[:1] for t in teachers]

    def needs(self) -> Needs:
        return Needs(teacher_taps=tuple(tuple(t) for t in self.taps))


def test_amalgamate_reads_teacher_signals_from_the_disk_cache(demo_zoo, digits, tmp_path, caplog):
    teachers = [load_teacher(folder) for folder in demo_zoo]
    method = TapsEverything(LabelSpace.union([t.class_names for t in teachers]), teachers)
    def signals_of(cache_teachers: bool):
        run = Pipeline(teachers, method.label_space, method, None, digits, digits, np.array([]), TrainConfig(),
                       Knowledge(cache_teachers, tmp_path, 1.0), "digits")
        return run.teacher_signals(progress=False)

    signals = signals_of(True)
    assert isinstance(signals, KnowledgeCache) and len(entries(tmp_path)) == 2
    out = signals(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))
    assert [list(o.features) for o in out] == method.taps

    with caplog.at_level(logging.INFO):
        signals_of(False)
    assert "live teachers on every batch (cache_teachers=False)" in caplog.text

    data = load_digits()
    result = amalgam.amalgamate(demo_zoo, data=data, epochs=1, knowledge_cache=tmp_path, progress=False)
    assert len(entries(tmp_path)) == 4  # logits-only caches for the whole transfer set, beside the tapped ones
    with caplog.at_level(logging.INFO, logger="amalgam.knowledge.cache"):
        again = amalgam.amalgamate(demo_zoo, data=data, epochs=1, knowledge_cache=tmp_path, progress=False)
    assert caplog.text.count("read from") == 2 and len(entries(tmp_path)) == 4
    assert again.metrics["history"][0]["loss"] == pytest.approx(result.metrics["history"][0]["loss"], rel=1e-6)
