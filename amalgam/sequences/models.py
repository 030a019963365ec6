"""Small sequence classifiers: the SKA paper's LSTM (teachers, student) and a 1-D conv net (student).

Both take a ``B x L x D`` float batch in which a series shorter than ``L`` is padded at the end with NaN, and
return ``B x C`` logits. Each is described by a plain dict (:meth:`config`), so it can be saved and rebuilt.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from amalgam.sequences.ucr import series_lengths


class LSTMClassifier(nn.Module):
    """An LSTM read to each series' last real step, then a linear layer (the SKA code's teacher and student).

    ``pool`` > 1 averages that many consecutive steps first (a long series read in ``L / pool`` LSTM steps).

    >>> model = LSTMClassifier(channels=2, num_classes=3, hidden=8)
    >>> x = torch.randn(4, 10, 2); x[0, 6:] = float("nan")   # the first series is 6 steps long
    >>> model(x).shape
    torch.Size([4, 3])
    """

    def __init__(self, channels: int, num_classes: int, hidden: int = 32, layers: int = 2, pool: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.channels, self.num_classes, self.hidden = channels, num_classes, hidden
        self.layers, self.pool, self.dropout = layers, pool, dropout
        self.lstm = nn.LSTM(channels, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, num_classes)

    def config(self) -> dict[str, Any]:
        return {"kind": "lstm", "channels": self.channels, "num_classes": self.num_classes, "hidden": self.hidden,
                "layers": self.layers, "pool": self.pool, "dropout": self.dropout}

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        lengths = series_lengths(series)
        x = torch.nan_to_num(series.float(), nan=0.0)
        if self.pool > 1:  # average blocks of `pool` steps; a block counts while it holds a real step
            x = nn.functional.avg_pool1d(x.transpose(1, 2), self.pool, ceil_mode=True).transpose(1, 2)
            lengths = torch.div(lengths + self.pool - 1, self.pool, rounding_mode="floor")
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.head(h[-1])  # the top layer's state at each series' last step


class ConvClassifier(nn.Module):
    """Three 1-D convolutions with batch norm, then the mean over each series' real steps (a small FCN).

    >>> ConvClassifier(channels=1, num_classes=4)(torch.randn(2, 30, 1)).shape
    torch.Size([2, 4])
    """

    def __init__(self, channels: int, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.channels, self.num_classes, self.width = channels, num_classes, width
        layers: list[nn.Module] = []
        for c_in, c_out, k in ((channels, width, 7), (width, 2 * width, 5), (2 * width, width, 3)):
            layers += [nn.Conv1d(c_in, c_out, k, padding=k // 2), nn.BatchNorm1d(c_out), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def config(self) -> dict[str, Any]:
        return {"kind": "conv", "channels": self.channels, "num_classes": self.num_classes, "width": self.width}

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        lengths = series_lengths(series)
        x = torch.nan_to_num(series.float(), nan=0.0).transpose(1, 2)  # B x D x L
        h = self.body(x)
        mask = (torch.arange(h.shape[-1], device=h.device)[None, :] < lengths[:, None]).to(h.dtype)
        pooled = (h * mask[:, None, :]).sum(dim=-1) / mask.sum(dim=-1, keepdim=True)
        return self.head(pooled)


MODEL_KINDS = {"lstm": LSTMClassifier, "conv": ConvClassifier}


def build_model(config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its :meth:`config` dict.

    >>> build_model({"kind": "conv", "channels": 1, "num_classes": 2}).num_classes
    2
    """
    options = dict(config)
    kind = options.pop("kind")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown sequence model kind {kind!r}; known: {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind](**options)


class SequenceTrust(nn.Module):
    """Trust logits from the series itself: an LSTM, as in the SKA code's TTL (trust-learner's ``trust_input="input"``
    for sequence teachers)."""

    def __init__(self, channels: int, num_teachers: int) -> None:
        super().__init__()
        self.net = LSTMClassifier(channels, num_teachers, hidden=32, layers=1)

    def forward(self, series: torch.Tensor, teacher_logits: object) -> torch.Tensor:
        return self.net(series)
