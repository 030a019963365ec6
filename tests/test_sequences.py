"""Sequences: the UCR loader, the LSTM, the teacher wrapper, and amalgamation of LSTM teachers through the engine.

The tests on real data (JapaneseVowels and OSULeaf, UCR) need their .ts files: the optional extra
``amalgam[sequences]`` (aeon ships them) or ``$AMALGAM_UCR_DIR`` naming a folder of .ts files or an aeon wheel.
Without them those tests are skipped, and say so.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from amalgam.data import RelabeledImages, stratified_indices
from amalgam.engine import TrainConfig, evaluate_teachers, per_class_accuracy, student_predictions, train
from amalgam.knowledge import CachedSignals
from amalgam.methods import LabeledSet, create_method
from amalgam.sequences import (
    LSTMClassifier, SequenceSetting, SequenceSpec, SequenceTeacher, build_model, build_sequence_teachers,
    chance_level, load_ucr, parse_ts, series_lengths, ucr_available,
)
from amalgam.teachers import LabelSpace

DATA = "JapaneseVowels"
needs_ucr = pytest.mark.skipif(
    not ucr_available(DATA),
    reason="UCR files not found: pip install 'amalgam[sequences]' (aeon ships them) or set AMALGAM_UCR_DIR",
)


def test_parse_ts_reads_multivariate_variable_length_and_missing_values():
    text = """# a comment
@problemName Toy
@univariate false
@classLabel true up down
@data
1,2,3:4,5,6:down
7,?:9,10:up
"""
    series, labels, classes = parse_ts(text.splitlines())
    assert classes == ["up", "down"] and labels == ["down", "up"]
    assert series[0].shape == (3, 2) and series[1].shape == (2, 2)
    assert np.isnan(series[1][1, 0]) and series[1][1, 1] == 10.0


def test_lstm_reads_a_padded_series_as_if_it_were_not_padded():
    torch.manual_seed(0)
    model = LSTMClassifier(channels=3, num_classes=4, hidden=8).eval()
    short = torch.randn(1, 5, 3)
    padded = torch.cat([short, torch.full((1, 4, 3), float("nan"))], dim=1)
    other = torch.randn(1, 9, 3)
    batch = torch.cat([padded, other])
    assert series_lengths(batch).tolist() == [5, 9]
    with torch.no_grad():
        torch.testing.assert_close(model(batch)[0], model(short)[0])
        assert not torch.allclose(model(batch)[0], model(torch.nan_to_num(padded))[0])  # padding is not read as 0s


def test_sequence_teacher_serves_cached_signals_like_an_image_teacher():
    teacher = SequenceTeacher(build_model({"kind": "conv", "channels": 2, "num_classes": 3}), ["a", "b", "c"],
                              "conv-abc", SequenceSpec(channels=2, length=7))
    data = RelabeledImages(torch.utils.data.TensorDataset(torch.randn(6, 7, 2), torch.zeros(6, dtype=torch.long)),
                           [0])
    signals = CachedSignals.compute([teacher], data, progress=False)
    out = signals(torch.zeros(2, 7, 2), torch.tensor([5, 1]))[0]
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.logits, teacher(data.base.tensors[0][[5, 1]]).logits)


@pytest.fixture(scope="module")
def vowels():
    return load_ucr(DATA)


@pytest.fixture(scope="module")
def setting():
    # The benchmark's setting with a shorter teacher budget (the teachers are cached under the tests' AMALGAM_HOME).
    return SequenceSetting.for_dataset(DATA, teacher_epochs=25)


@pytest.fixture(scope="module")
def teachers(vowels, setting):
    return build_sequence_teachers(setting.teacher_specs(), vowels, progress=False)


@needs_ucr
def test_ucr_loader_returns_the_documented_shapes_and_classes(vowels):
    assert vowels.train.series.shape == (270, 29, 12) and vowels.test.series.shape == (370, 29, 12)
    assert vowels.class_names == [str(i) for i in range(1, 10)]
    assert np.bincount(vowels.train_labels).tolist() == [30] * 9  # 30 utterances per speaker
    lengths = series_lengths(torch.cat([vowels.train.series, vowels.test.series]))
    assert lengths.min() == 7 and lengths.max() == 29  # variable length (7 to 29 steps), NaN-padded to 29
    present = ~torch.isnan(vowels.train.series)
    assert abs(float(vowels.train.series[present].mean())) < 1e-3  # standardised on the train split
    if ucr_available("OSULeaf"):
        leaf = load_ucr("OSULeaf")
        assert leaf.train.series.shape == (200, 427, 1) and leaf.test.series.shape == (242, 427, 1)
        assert leaf.class_names == ["1", "2", "3", "4", "5", "6"]


@needs_ucr
def test_lstm_teachers_beat_chance_on_their_own_classes_and_are_cached(vowels, teachers, setting, tmp_path):
    label_space = LabelSpace.union([t.class_names for t in teachers])
    assert label_space.overlaps() == {"4": [0, 1], "5": [0, 1]}
    test = RelabeledImages(vowels.test, label_space.map_classes(vowels.class_names))
    metrics = evaluate_teachers(teachers, label_space, test)
    for name, own in metrics["teachers"].items():
        chance = 1 / len(setting.teacher_classes[name])
        assert own["accuracy_on_own_classes"] > chance + 0.5, (name, own)
    # a second build loads the saved teachers (same outputs) instead of training again
    again = build_sequence_teachers(setting.teacher_specs(), vowels, progress=False)
    x = vowels.test.series[:8]
    torch.testing.assert_close(again[1](x).logits, teachers[1](x).logits)


@needs_ucr
@pytest.mark.parametrize("method_name", ["concat-logits", "trust-learner"])
def test_student_learns_every_union_class_from_lstm_teachers_through_the_engine(vowels, teachers, method_name):
    label_space = LabelSpace.union([t.class_names for t in teachers])
    label_map = label_space.map_classes(vowels.class_names)
    visible = stratified_indices(vowels.train_labels, 0.02, seed=0)
    assert visible.size == 9  # max(2%, 1 per class) of 270 series
    transfer = RelabeledImages(vowels.train, label_map, visible=visible)
    test = RelabeledImages(vowels.test, label_map)
    signals = CachedSignals.compute(teachers, vowels.train, progress=False)
    torch.manual_seed(0)
    method = create_method(method_name, label_space, teachers)
    rows = visible.tolist()
    series = torch.stack([transfer[i][0] for i in rows])
    labels = torch.tensor([transfer[i][1] for i in rows])
    labeled = LabeledSet(series, labels, signals(series, torch.tensor(rows)))
    student = build_model({"kind": "lstm", "channels": 12, "num_classes": label_space.num_classes, "hidden": 32})
    history = train(student, method, signals, transfer, TrainConfig(epochs=20, batch_size=16, seed=0, cpu=True),
                    labeled=labeled, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    predictions, targets = student_predictions(student, test)
    accuracy = float((predictions == targets).float().mean())
    chance = chance_level(targets.numpy())
    assert accuracy > chance + 0.25, accuracy
    if method_name == "concat-logits":  # a target that is right 92% of the time: every class must be learned
        per_class = per_class_accuracy(predictions, targets, label_space.class_names)
        assert len(per_class) == 9 and min(per_class.values()) > 1 / 9, per_class


@needs_ucr
def test_sequence_benchmark_writes_its_report(vowels, teachers, tmp_path):
    from bench.sequence import main

    main(["--dataset", DATA, "--seeds", "2", "--epochs", "1", "--teacher-epochs", "25",
          "--methods", "trust-learner", "--out", str(tmp_path)])
    md = (tmp_path / f"sequence-{DATA}.md").read_text()
    assert "Regenerate: `python -m bench.sequence --dataset JapaneseVowels --seeds 2" in md
    assert "| trust-learner | method | 2% |" in md and "Do we see the same?" in md
    results = json.loads((tmp_path / f"sequence-{DATA}.json").read_text())
    assert [r["label"] for r in results["rows"]] == ["supervised, all labels", "supervised, 2% labels", "trust-learner",
                                                     "trust-learner, trust model on the series"]
    assert all(len(r["runs"]) == 2 for r in results["rows"])
    assert (tmp_path / f"sequence-{DATA}.png").stat().st_size > 1000
