"""Engine: training on accelerate, evaluation."""

from amalgam.engine.evaluate import (
    accuracy, confusion_matrix, evaluate_teachers, head_accuracies, member_probabilities, per_class_accuracy,
    student_predictions, target_accuracy,
)
from amalgam.engine.trainer import TrainConfig, train

__all__ = [
    "TrainConfig", "accuracy", "confusion_matrix", "evaluate_teachers", "head_accuracies", "member_probabilities",
    "per_class_accuracy", "student_predictions", "target_accuracy", "train",
]
