"""Trying a run's student on one image, beside each of the run's teachers."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from amalgam.app.runs import read_run
from amalgam.app.teachers import TeacherCatalog, reload_source
from amalgam.data import ImageData, load_data
from amalgam.errors import AmalgamError
from amalgam.students import Student


def image_to_batch(image: Image.Image, channels: int, max_side: int) -> torch.Tensor:
    """A picture as amalgam's raw batch: ``1 x channels x H x W`` floats in ``[0, 1]``.

    Grey data gets a grey image (PIL's luma, the conversion amalgam's preprocessing uses), RGB data an RGB one.
    A picture larger than ``max_side`` (the largest input among the models) is shrunk, keeping its aspect, with
    the same antialiased resize as the models' preprocessing; each model then resizes it to its own input, as
    it did with the training data.

    >>> image_to_batch(Image.new("RGB", (640, 480), "white"), channels=1, max_side=32).shape
    torch.Size([1, 1, 24, 32])
    """
    pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    batch = torch.from_numpy(pixels).reshape(pixels.shape[0], pixels.shape[1], channels).permute(2, 0, 1)[None]
    height, width = batch.shape[-2:]
    if max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        batch = F.interpolate(batch, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return batch


def batch_to_image(image: torch.Tensor) -> Image.Image:
    """A ``C x H x W`` image in ``[0, 1]`` (what amalgam's data sets yield) as a PIL image.

    >>> batch_to_image(torch.ones(1, 8, 8)).mode, batch_to_image(torch.zeros(3, 4, 6)).size
    ('L', (6, 4))
    """
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array, "L" if array.shape[2] == 1 else "RGB")


@lru_cache(maxsize=2)
def _data(name: str) -> ImageData:
    return load_data(name)


def has_dark_background(data_name: str, images: int = 64) -> bool:
    """Whether the pictures of ``data_name`` show their subject light on a dark background (as digits and
    Fashion-MNIST do), judged by the median of the outer pixels of its first test images.

    >>> has_dark_background("digits")
    True
    """
    data = _data(data_name)
    borders = []
    for index in range(min(images, len(data.test))):
        image = data.test[index][0].float().mean(dim=0)  # grey
        borders += [image[0], image[-1], image[:, 0], image[:, -1]]
    return float(torch.cat(borders).median()) < 0.5


def drawing_to_image(layers: list[Image.Image], dark_background: bool, margin: float = 0.15) -> Image.Image:
    """Strokes drawn on a sketchpad as a picture like the data's: the ink is where the layers are opaque
    (whatever the brush colour), cropped to a square around it with a ``margin`` on each side (as digits and
    Fashion-MNIST frame their subject), light on dark when the data are (see :func:`has_dark_background`),
    dark on light otherwise.

    >>> stroke = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    >>> stroke.paste((0, 0, 0, 255), (40, 10, 60, 90))  # a bar 20 wide, 80 high
    >>> picture = drawing_to_image([stroke], dark_background=True)
    >>> picture.mode, picture.size, picture.getpixel((52, 52)), picture.getpixel((2, 2))
    ('L', (104, 104), 255, 0)
    """
    alphas = [np.asarray(layer.convert("RGBA"), dtype=np.float32)[:, :, 3] / 255.0 for layer in layers]
    if not alphas or max(float(a.max()) for a in alphas) < 0.1:
        raise AmalgamError("draw something on the sketchpad first (it is empty)")
    ink = np.maximum.reduce(alphas)
    rows, cols = np.nonzero(ink >= 0.1)
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    side = round(max(ink.shape) * (1 + 2 * margin))
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - ink.shape[0]) // 2, (side - ink.shape[1]) // 2
    square[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
    pixels = square if dark_background else 1.0 - square
    return Image.fromarray(np.round(pixels * 255).astype(np.uint8), "L")


def sample_image(data_name: str, index: int | None = None) -> tuple[Image.Image, str]:
    """A test image of data set ``data_name`` (random unless ``index`` is given) and its true class.

    >>> image, label = sample_image("digits", index=0)
    >>> image.size, label
    ((8, 8), '7')
    """
    data = _data(data_name)
    index = random.randrange(len(data.test)) if index is None else index
    image, label = data.test[index]
    return batch_to_image(image), data.class_names[label]


@dataclass(frozen=True)
class ModelAnswer:
    """One model's answer for an image: its top classes with probabilities, and how long it took."""

    model: str
    top: list[tuple[str, float]]
    milliseconds: float
    error: str | None = None


class Tryout:
    """The students and teachers of runs, loaded once, for classifying single images.

    Example:
        >>> tryout = Tryout(TeacherCatalog())
        >>> answers = tryout.predict("runs/mine", Image.open("digit.png"))  # doctest: +SKIP
        >>> answers[0].model, answers[0].top[0]  # doctest: +SKIP
        ('student test_efficientnet', ('7', 0.93))
    """

    def __init__(self, catalog: TeacherCatalog) -> None:
        self.catalog = catalog
        self._students: dict[Path, Student] = {}
        self._lock = threading.Lock()

    def student(self, run_dir: Path) -> Student:
        """The run's student, loaded on first use."""
        key = run_dir.resolve()
        with self._lock:
            if key not in self._students:
                if not (run_dir / "student" / "model.safetensors").is_file():
                    raise AmalgamError(f"run {run_dir.name} has no student yet: it is unfinished (still running, "
                                       "failed or cancelled)")
                self._students[key] = Student.from_pretrained(run_dir / "student").eval()
            return self._students[key]

    def predict(self, run_dir: Path, image: Image.Image, top_k: int = 3) -> list[ModelAnswer]:
        """The student's top classes, then each teacher's (over its own classes), for ``image``."""
        description, _ = read_run(run_dir)
        student = self.student(run_dir)
        teachers = []
        for described in description["teachers"]:
            try:
                teachers.append((described["name"], self.catalog.load(reload_source(described)), None))
            except AmalgamError as err:  # a teacher that moved away must not hide the others' answers
                teachers.append((described["name"], None, str(err)))
        specs = [student.input_spec] + [t.input_spec for _, t, _ in teachers if t is not None]
        sizes = [side for spec in specs for side in (spec.resize_size or spec.size)]  # before each one's crop
        batch = image_to_batch(image, student.input_spec.channels, max(sizes))

        started = time.perf_counter()
        top = student.predict(batch, top_k=top_k)[0]
        answers = [ModelAnswer(f"student {student.architecture}", top, 1000 * (time.perf_counter() - started))]
        for name, teacher, error in teachers:
            if teacher is None:
                answers.append(ModelAnswer(f"teacher {name}", [], 0.0, error))
                continue
            started = time.perf_counter()
            probs = teacher(batch).logits.softmax(dim=-1)[0]
            values, indices = probs.topk(min(top_k, probs.numel()))
            top = [(teacher.class_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]
            answers.append(ModelAnswer(f"teacher {name}", top, 1000 * (time.perf_counter() - started)))
        return answers
