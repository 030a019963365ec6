"""Measuring the student and the teachers on the labeled test split, in the union label space."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from amalgam.engine.uncertainty import member_probabilities_of
from amalgam.methods.base import Method
from amalgam.teachers.placement import place_logits, place_probabilities
from amalgam.teachers.label_space import LabelSpace
from amalgam.teachers.teacher import Teacher

EVAL_BATCH = 256


def _batches(data: Dataset, device: torch.device):
    for images, labels in DataLoader(data, batch_size=EVAL_BATCH, shuffle=False):
        yield images.to(device), labels.to(device)


@torch.no_grad()
def member_probabilities(model: nn.Module, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``M x N x C`` probabilities of the model's voting members on ``data`` (a student's heads over its
    classes; the model itself when it has one output) and the ``N`` union labels (-1 rows dropped)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probabilities, targets = [], []
    for images, labels in _batches(data, device):
        keep = labels >= 0
        if keep.any():
            probabilities.append(member_probabilities_of(model, images[keep]).cpu())
            targets.append(labels[keep].cpu())
    model.train(was_training)
    return torch.cat(probabilities, dim=1), torch.cat(targets)


@torch.no_grad()
def head_accuracies(student: nn.Module, data: Dataset) -> dict[str, dict[str, float | int]]:
    """Each classification head of a student with heads, on the test samples whose class it knows: the same
    measure as a teacher's ``accuracy_on_own_classes``, so a head can be set beside the teacher it learned.
    Empty for a plain student."""
    heads = [h for h in getattr(student, "head_specs", []) if h.task == "classification"
             and set(h.outputs) <= set(student.class_names)]
    if not heads:
        return {}
    device = next(student.parameters()).device
    positions = {h.name: torch.tensor([student.class_names.index(c) for c in h.outputs], device=device)
                 for h in heads}
    correct = dict.fromkeys(positions, 0)
    total = dict.fromkeys(positions, 0)
    was_training = student.training
    student.eval()
    for images, labels in _batches(data, device):
        outputs = student(images)
        for name, index in positions.items():
            known = torch.isin(labels, index)
            predicted = index[outputs[name].argmax(dim=-1)]
            correct[name] += int((predicted == labels)[known].sum())
            total[name] += int(known.sum())
    student.train(was_training)
    return {name: {"accuracy_on_own_classes": correct[name] / max(1, total[name]), "test_samples": total[name]}
            for name in positions}


def student_predictions(model: nn.Module, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted union indices (the argmax of the members' mean probability; a plain model's own argmax) and
    union labels for ``data`` (labels already mapped; -1 rows dropped)."""
    members, targets = member_probabilities(model, data)
    return members.mean(dim=0).argmax(dim=-1), targets


def accuracy(model: nn.Module, data: Dataset) -> float:
    predictions, targets = student_predictions(model, data)
    return float((predictions == targets).float().mean())


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[list[int]]:
    """``matrix[true][predicted]`` counts.

    >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
    [[1, 1], [0, 1]]
    """
    flat = targets * num_classes + predictions
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes).tolist()


def per_class_accuracy(predictions: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str]) -> dict:
    result = {}
    for j, name in enumerate(class_names):
        mask = targets == j
        if mask.any():
            result[name] = float((predictions[mask] == j).float().mean())
    return result


@torch.no_grad()
def target_accuracy(method: Method, teachers: Sequence[Teacher], data: Dataset) -> float | None:
    """Accuracy of the method's combined teacher target (argmax) on union-mapped ``data``, if it has one."""
    device = teachers[0].device
    correct = total = 0
    for images, labels in _batches(data, device):
        keep = labels >= 0
        images, labels = images[keep], labels[keep]
        if not len(labels):
            continue
        target = method.combined_target([teacher(images).logits for teacher in teachers], images)
        if target is None:
            return None
        correct += int((target.argmax(-1) == labels).sum())
        total += len(labels)
    return correct / max(1, total)


@torch.no_grad()
def evaluate_teachers(teachers: Sequence[Teacher], label_space: LabelSpace, data: Dataset) -> dict:
    """Each teacher on its own classes, the teachers' mean prediction, and the oracle, on union-mapped ``data``.

    - ``teachers[name]``: accuracy on the test samples whose class the teacher knows.
    - ``ensemble``: the argmax of the mean of the teachers' probabilities placed in the union space.
    - ``concatenated``: the argmax of the teachers' logits side by side (one classifier over the union).
    - ``oracle``: each sample sent to the teacher(s) that know its true class (an upper reference).

    Each teacher's ``per_class`` is its accuracy on each union class it knows (by the class's name), for the
    per-class view beside the student's.
    """
    device = teachers[0].device
    indices = [label_space.index_tensor(k, device) for k in range(len(teachers))]
    membership = label_space.membership(device)
    counts = {"own": torch.zeros(len(teachers)), "own_total": torch.zeros(len(teachers))}
    class_correct = torch.zeros(len(teachers), label_space.num_classes)  # on the test images of each true class
    class_total = torch.zeros(label_space.num_classes)
    ensemble_correct = oracle_correct = concatenated_correct = total = 0
    uniform = torch.full((len(teachers),), 1.0 / len(teachers), device=device)
    for images, labels in _batches(data, device):
        keep = labels >= 0
        images, labels = images[keep], labels[keep]
        if not len(labels):
            continue
        logits = [teacher(images).logits for teacher in teachers]
        probs = [z.softmax(dim=-1) for z in logits]
        concatenated = place_logits(logits, indices, label_space.num_classes)
        concatenated_correct += int((concatenated.argmax(-1) == labels).sum())
        ensemble = place_probabilities(probs, indices, uniform, label_space.num_classes)
        ensemble_correct += int((ensemble.argmax(-1) == labels).sum())
        knows = membership[:, labels].T  # B x K: does teacher k know the true class
        oracle_weights = knows / knows.sum(dim=1, keepdim=True)
        oracle = place_probabilities(probs, indices, oracle_weights, label_space.num_classes)
        oracle_correct += int((oracle.argmax(-1) == labels).sum())
        total += len(labels)
        class_total += torch.bincount(labels, minlength=label_space.num_classes).cpu().float()
        for k, p in enumerate(probs):
            own = knows[:, k].bool()
            right = indices[k][p.argmax(-1)] == labels
            counts["own"][k] += int(right[own].sum())
            counts["own_total"][k] += int(own.sum())
            class_correct[k] += torch.bincount(labels, weights=right.float(), minlength=label_space.num_classes).cpu()
    return {
        "teachers": {
            teacher.name: {
                "accuracy_on_own_classes": float(counts["own"][k] / max(1, counts["own_total"][k])),
                "test_samples": int(counts["own_total"][k]),
                "per_class": {label_space.class_names[c]: float(class_correct[k, c] / class_total[c])
                              for c in sorted(set(label_space.teacher_indices[k])) if class_total[c]},
            }
            for k, teacher in enumerate(teachers)
        },
        "ensemble": {"accuracy": ensemble_correct / max(1, total)},
        "oracle": {"accuracy": oracle_correct / max(1, total)},
        "concatenated": {"accuracy": concatenated_correct / max(1, total)},
    }
