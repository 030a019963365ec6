"""Teachers' inputs made where the images are decoded: in the DataLoader's workers, when there are.

Each teacher takes a batch through its own ``input_spec`` (resize, crop, normalise; amalgam.teachers.preprocess).
Done in the training loop, that work is serial with the student's step; done in the loader's workers, it runs
beside it. The knowledge cache reads :class:`TeacherInputs`; training with live teachers on a CPU device reads
:class:`WithTeacherInputs` (on an accelerator, resizing on the device is cheaper than sending it teacher-sized
inputs, so the loop keeps doing it there).

Example:
    >>> import torch
    >>> from amalgam.data import TensorImages
    >>> images = TensorImages(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    >>> double = lambda batch: torch.nn.functional.interpolate(batch, scale_factor=2)
    >>> item = WithTeacherInputs(images, [double])[1]
    >>> item[0].shape, item[-1][0].shape  # the image as it was, then each teacher's input
    (torch.Size([1, 8, 8]), torch.Size([1, 16, 16]))
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

InputSpec = Callable[[torch.Tensor], torch.Tensor]


def fetch(data: Dataset, indices: Sequence[int]) -> list[Any]:
    """``data``'s items at ``indices``, a batch at once where the set can (views are made together)."""
    many = getattr(data, "__getitems__", None)
    return many(list(indices)) if many is not None else [data[i] for i in indices]


def teacher_input(items: Sequence[Any], spec: InputSpec) -> list[torch.Tensor]:
    """The images of ``items`` (each item's first element) in one teacher's input: resized as one batch."""
    return list(spec(torch.stack([torch.as_tensor(item[0]) for item in items])).unbind(0))


class TeacherInputs(Dataset):
    """The images of ``data`` as one teacher takes them (``spec`` applied to each image)."""

    def __init__(self, data: Dataset, spec: InputSpec) -> None:
        self.data, self.spec = data, spec

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[torch.Tensor]:
        return teacher_input(fetch(self.data, indices), self.spec)


class WithTeacherInputs(Dataset):
    """``data``'s items, each with one more element last: its image in every teacher's input (a list, in the
    order of ``specs``), for :meth:`~amalgam.knowledge.LiveSignals.run_prepared`."""

    def __init__(self, data: Dataset, specs: Sequence[InputSpec]) -> None:
        self.data, self.specs = data, list(specs)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple]:
        items = fetch(self.data, indices)
        inputs = [teacher_input(items, spec) for spec in self.specs]
        return [(*item, [column[i] for column in inputs]) for i, item in enumerate(items)]
