"""Sequence classification: the SKA paper's own setting (LSTM teachers on UCR sets) on amalgam's generic engine.

The UCR files ship inside the optional ``aeon`` wheel (``pip install "amalgam[sequences]"``); amalgam reads them
with its own parser and never imports aeon. ``python -m bench.sequence --dataset JapaneseVowels`` runs the
protocol of :mod:`amalgam.sequences.protocol` and writes its table.
"""

from amalgam.sequences.models import ConvClassifier, LSTMClassifier, build_model
from amalgam.sequences.protocol import Row, SequenceSetting, default_rows, run_once, run_protocol
from amalgam.sequences.teacher import (
    SequenceSpec, SequenceTeacher, SequenceTeacherSpec, build_sequence_teachers, load_sequence_teacher,
    train_sequence_teacher,
)
from amalgam.sequences.ucr import (
    SequenceData, SequenceSet, chance_level, load_ucr, parse_ts, series_lengths, ucr_available,
)

__all__ = [
    "ConvClassifier", "LSTMClassifier", "Row", "SequenceData", "SequenceSet", "SequenceSetting", "SequenceSpec",
    "SequenceTeacher", "SequenceTeacherSpec", "build_model", "build_sequence_teachers", "chance_level",
    "default_rows", "load_sequence_teacher", "load_ucr", "parse_ts", "run_once", "run_protocol",
    "series_lengths", "train_sequence_teacher", "ucr_available",
]
