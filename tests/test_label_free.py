"""A run with no labeled data at all: it trains, holds some transfer images out, and reports what can be known
without labels (agreement with the target and with each teacher where it is trusted), named as such."""

import warnings

import numpy as np
import pytest
import torch

from amalgam.engine.label_free import LABEL_FREE, label_free_report


@pytest.fixture(scope="module")
def unlabeled_digits():
    """The digits train images as a datasets.Dataset with an image column only (no labels)."""
    import datasets
    from PIL import Image

    from amalgam.data import load_data

    digits = load_data("digits")
    images = [Image.fromarray((digits.train[i][0][0].numpy() * 255).astype(np.uint8)) for i in range(len(digits.train))]
    return datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())


def test_a_run_without_any_labels_is_measured_label_free(demo_zoo, unlabeled_digits, tmp_path):
    import amalgam
    from amalgam.pipeline import Pipeline
    from amalgam.publish.card import render_model_card
    from amalgam.publish.run import load_run

    with pytest.warns(UserWarning, match="no labeled data: the run is measured label-free on 144 transfer images"):
        result = amalgam.amalgamate(demo_zoo, data=unlabeled_digits, epochs=3, progress=False, knowledge_cache=False,
                                    run_dir=tmp_path / "run")
    metrics = result.metrics
    assert metrics["kind"] == LABEL_FREE and metrics["check_samples"] == 144 and "accuracy" not in metrics["student"]
    assert metrics["target"] == "method"  # soft-targets has a combined target
    shares = [t["trusted_share"] for t in metrics["teachers"].values()]
    assert sum(shares) == pytest.approx(1.0)  # disjoint teachers: each image is one teacher's
    assert 0.2 < min(shares)  # digits 0-4 and 5-9 both occur
    assert metrics["student"]["agreement_with_target"] > 0.7  # it learned its target (chance: 0.1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        untrained = Pipeline.plan(demo_zoo, data=unlabeled_digits)  # the same check images, a fresh student
    fresh = label_free_report(untrained.student, untrained.method, untrained.teachers, untrained.label_space,
                              untrained.test)
    assert fresh["student"]["agreement_with_target"] < metrics["student"]["agreement_with_target"] - 0.3

    table = result.table()
    assert "agreement" in table and "held-out unlabeled transfer images" in table and "oracle" not in table
    card = " ".join(render_model_card(load_run(tmp_path / "run"), "org/student").split())
    assert "results below are label-free" in card and "| model | evaluated on | agreement |" in card


def test_the_check_images_are_never_trained_on(demo_zoo, unlabeled_digits):
    from amalgam.pipeline import Pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = Pipeline.plan(demo_zoo, data=unlabeled_digits)
    trained, checked = set(run.transfer.base.indices), set(run.test.base.indices)
    assert not trained & checked and len(trained) + len(checked) == len(unlabeled_digits)
    image, label = run.test[0]
    assert label == -1 and torch.equal(image, run.test.base.dataset[run.test.base.indices[0]][0])
