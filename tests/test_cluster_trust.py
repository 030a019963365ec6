"""cluster-trust: zero-label trust decided per k-means cluster of what the teachers see."""

from __future__ import annotations

import pytest
import torch

from amalgam.errors import MethodError
from amalgam.methods import StepInputs, create_method
from amalgam.methods.base import Setup
from amalgam.methods.features.clusters import ClusterTrust, cluster_means, kmeans
from amalgam.methods.features.probe import confident_half
from amalgam.teachers import LabelSpace, TeacherOutput
from tiny import tiny_teachers

SPACE = LabelSpace.union([["a", "b"], ["c", "d"]])
SURE, UNSURE = [4.0, 0.0], [0.0, 0.0]


def outputs(features: torch.Tensor, logits) -> list[TeacherOutput]:
    """Two teachers that both 'see' ``features`` (a 1 x 1 map per sample) and say ``logits``."""
    return [TeacherOutput(z, {"f": features[:, :, None, None]}) for z in logits]


def clustered(features: torch.Tensor, logits, **options) -> ClusterTrust:
    method = create_method("cluster-trust", SPACE, tiny_teachers(["a", "b"], ["c", "d"]),
                           {"teacher_taps": ["f", "f"], **options})
    method.setup(Setup(transfer_logits=logits,
                       transfer_rows=lambda rows: outputs(features[rows], [z[rows] for z in logits])))
    return method


def two_groups():
    """Images near 0, where teacher 0 is sure and teacher 1 unsure, and near 10, the other way round."""
    features = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
    logits = [torch.tensor([SURE, SURE, UNSURE, UNSURE]), torch.tensor([UNSURE, UNSURE, SURE, SURE])]
    return features, logits


def test_kmeans_and_cluster_means_by_hand():
    points = torch.tensor([[0.0], [0.1], [10.0], [10.1]])
    assert sorted(kmeans(points, 2, torch.Generator().manual_seed(0)).flatten().tolist()) == \
        pytest.approx([0.05, 10.05])
    assert cluster_means(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1, 1]), 2).tolist() == \
        [[0.0, 0.0], [2.0, 3.0]]
    with pytest.raises(MethodError, match="between 1 and the number of points"):
        kmeans(points, 5)


def test_each_cluster_goes_to_the_teacher_confident_on_it_and_rows_are_looked_up():
    features, logits = two_groups()
    method = clustered(features, logits, clusters=[2])
    # standardised max-prob over the four rows: +-0.866 per teacher (std with n - 1), so each cluster's weights are
    # softmax(0.866, -0.866) towards the teacher sure of it
    expected = torch.tensor([0.866, -0.866]).softmax(dim=0)
    assert torch.allclose(method.row_weights, torch.stack([expected, expected, expected.flip(0), expected.flip(0)]),
                          atol=1e-3)
    new = method.weights_of(outputs(torch.tensor([[0.2], [9.0]]), [torch.tensor([SURE, UNSURE])] * 2))
    assert torch.allclose(new, torch.stack([expected, expected.flip(0)]), atol=1e-3)
    looked_up = method.batch_teacher_weights([z[[3, 0]] for z in logits], None, torch.tensor([3, 0]))
    assert torch.allclose(looked_up, torch.stack([expected.flip(0), expected]), atol=1e-3)


def test_the_weights_are_averaged_over_the_cluster_counts_by_hand():
    features, logits = two_groups()
    method = clustered(features, logits, clusters=[1, 2])
    # one cluster holds every row: both teachers' mean standardised score is 0, so (0.5, 0.5)
    expected = (torch.tensor([0.5, 0.5]) + torch.tensor([0.866, -0.866]).softmax(dim=0)) / 2
    assert torch.allclose(method.row_weights[0], expected, atol=1e-3)
    assert method.counts == [1, 2]


def test_a_cluster_outvotes_a_teacher_that_is_sure_of_a_wrong_class_on_one_image():
    """A quarter of each group misleads: the teacher that knows the class is unsure and the other sure of its
    class 0. Per image, confidence-trust follows the wrong teacher there; per cluster, the group's majority wins.
    What the teachers see (8 numbers, beside their 4 probabilities) separates the classes."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(160) % 4
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, 0.0], [0.0, -4.0]]).repeat(1, 4)
    features = centres[labels] + 0.5 * torch.randn(160, 8, generator=generator)
    misleading = torch.arange(160) % 16 >= 12
    logits = [torch.zeros(160, 2), torch.zeros(160, 2)]
    for n, y in enumerate(labels.tolist()):
        owner, own_class = divmod(y, 2)
        logits[owner][n, own_class] = 0.2 if misleading[n] else 4.0
        logits[1 - owner][n, 0] = 3.0 if misleading[n] else 0.5
    per_image = create_method("confidence-trust", SPACE, tiny_teachers(["a", "b"], ["c", "d"]))
    per_image.setup(Setup(transfer_logits=logits))
    per_cluster = clustered(features, logits, clusters=[4])
    rows = torch.arange(160)
    image_right = per_image.target(logits, temperature=1.0).argmax(-1) == labels
    cluster_right = per_cluster.target(logits, temperature=1.0, rows=rows).argmax(-1) == labels
    assert not image_right[misleading].any() and cluster_right[misleading].float().mean() > 0.9
    assert cluster_right.float().mean() > 0.95
    # feature-probe with pseudo_from="cluster-trust" is fitted on this target's surer half, read from the cache
    torch.manual_seed(0)
    probe = create_method("feature-probe", SPACE, tiny_teachers(["a", "b"], ["c", "d"]),
                          {"teacher_taps": ["f", "f"], "pseudo_labels": True, "pseudo_from": "cluster-trust",
                           "probe_epochs": 100})
    probe.setup(Setup(transfer_logits=logits, transfer_rows=lambda r: outputs(features[r], [z[r] for z in logits])))
    assert isinstance(probe.pseudo_labeler, ClusterTrust) and probe.pseudo_labeler.row_weights is not None
    pseudo = probe.pseudo_labeler.target(logits, temperature=1.0, rows=rows)
    kept = confident_half(pseudo)
    predicted = probe.probe_logits(outputs(features[kept], [z[kept] for z in logits])).argmax(-1)
    assert (predicted == pseudo.argmax(-1)[kept]).float().mean() > 0.95


def test_it_needs_the_cache_and_has_no_logits_only_target():
    features, logits = two_groups()
    method = create_method("cluster-trust", SPACE, tiny_teachers(["a", "b"], ["c", "d"]), {"teacher_taps": ["f", "f"]})
    assert method.needs().label_free and len(method.needs().teacher_taps) == 2
    with pytest.raises(MethodError, match="cache_teachers=True"):
        method.setup(Setup(transfer_logits=logits))
    method = clustered(features, logits, clusters=[2])
    assert method.combined_target(logits, torch.zeros(4, 1, 4, 4)) is None
    student = torch.zeros(4, 4)
    with pytest.raises(MethodError, match="cache_teachers=True"):
        method(StepInputs(student, outputs(features, logits), torch.full((4,), -1)))
    with pytest.raises(MethodError, match="clusters must be"):
        create_method("cluster-trust", SPACE, tiny_teachers(["a", "b"], ["c", "d"]), {"clusters": []})


def test_a_run_caches_the_taps_and_trains_on_each_rows_cluster_weights(demo_zoo, tmp_path):
    import numpy as np

    from amalgam.config import TrainConfig
    from amalgam.pipeline import Knowledge, Pipeline
    from demo_methods import demo_setup, demo_student

    teachers, space, transfer, test = demo_setup(demo_zoo, samples=96)
    torch.manual_seed(0)
    # more clusters than the ten digits, so that a cluster rarely mixes two teachers' classes (with 4 and 8 the
    # target's accuracy depended on the machine's demo teachers: 0.78 on one, over 0.8 on another)
    method = create_method("cluster-trust", space, teachers, {"clusters": [16, 32]})
    run = Pipeline(teachers, space, method, demo_student(space, method), transfer,
                   torch.utils.data.Subset(test, range(16)), np.arange(0), TrainConfig(epochs=1, batch_size=32),
                   Knowledge(knowledge_cache=tmp_path / "cache"))
    run.fit(progress=False, test_each_epoch=False)
    rows = torch.arange(len(transfer))
    assert method.row_weights.shape == (len(transfer), len(teachers))
    # the weights of the engine's cached rows are those of the rows' own features, and they pick the right teacher
    assert torch.allclose(method.row_weights, method.weights_of(run.signals.rows(rows)), atol=1e-5)
    labels = torch.tensor([transfer[i][1] for i in range(len(transfer))])
    target = method.target(run.signals.logits, temperature=1.0, rows=rows).argmax(-1)
    assert (target == labels).float().mean() > 0.8
