"""The student: a timm architecture with a classifier over the union label space (or named heads on a shared
body), saved as a Hub model."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np  # noqa: F401 (the doctests use it)
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from amalgam.data.pictures import Picture, picture_tensor
from amalgam.errors import PublishError, StudentError
from amalgam.students.heads import Head, check_heads
from amalgam.teachers.preprocess import ImageSpec

MIN_INPUT_SIZE = 32  # timm's small CNNs downsample by 32; smaller inputs vanish


def check_architecture(architecture: str) -> str:
    """Refuse a name timm cannot build, with the closest names it knows (before any teacher or data is loaded).

    >>> check_architecture("test_efficientnet")
    'test_efficientnet'
    >>> check_architecture("resnet_18")
    Traceback (most recent call last):
    ...
    amalgam.errors.StudentError: unknown student architecture 'resnet_18': timm has no such model; close names: ...
    """
    import difflib

    import timm

    if not isinstance(architecture, str) or not timm.is_model(architecture):
        close = difflib.get_close_matches(str(architecture), timm.list_models(), n=5, cutoff=0.6)
        raise StudentError(
            f"unknown student architecture {architecture!r}: timm has no such model; close names: "
            f"{', '.join(close) or 'none'} (timm.list_models('*pattern*') lists them all)"
        )
    return architecture


class Student(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="amalgam",
    tags=["knowledge-amalgamation", "distillation", "image-classification"],
    pipeline_tag="image-classification",
):
    """A timm model that takes amalgam's raw ``[0, 1]`` image batches and predicts the union classes.

    Without ``heads`` it is the timm architecture with its own classifier over ``class_names`` (the plain case,
    exportable in timm's format). With ``heads`` (:class:`Head` objects or their dicts) the timm model is the
    shared body (its pooled features) and each named head has its own task and outputs; ``forward`` then
    returns ``{head name: output}`` and :meth:`served` turns that into the logits over ``class_names`` that the
    student is scored and served by: the mean of the probabilities of its classification heads over
    ``class_names`` (an ensemble of heads), or the head named by ``serve`` (over some of ``class_names``: a
    multi-task student serves its main task, the union's other classes get no probability).

    ``origin`` records where the body's first weights came from (``None``: random, trained from scratch); it
    is a record only, and the student is always built from the plain ``architecture``: a student that starts
    from pretrained weights is made by :func:`amalgam.students.build_student`, which loads them, and a saved one
    is reloaded from its own weights, never from its origin.

    Saved with ``save_pretrained`` as ``config.json`` (the constructor arguments below) plus
    ``model.safetensors``; ``from_pretrained`` loads with strict key checking.

    Example:
        >>> student = Student("test_efficientnet", class_names=["cat", "dog"], input_size=32, channels=1)
        >>> student(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 2])
        >>> heads = [{"name": f"member{m}", "outputs": ["cat", "dog"]} for m in range(3)]
        >>> hydra = Student("test_efficientnet", class_names=["cat", "dog"], channels=1, heads=heads)
        >>> outputs = hydra(torch.rand(4, 1, 8, 8))
        >>> sorted(outputs), hydra.served(outputs).shape
        (['member0', 'member1', 'member2'], torch.Size([4, 2]))
    """

    def __init__(
        self,
        architecture: str,
        class_names: Sequence[str],
        input_size: int | Sequence[int] = MIN_INPUT_SIZE,
        channels: int = 3,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        heads: Sequence[Head | Mapping[str, Any]] | None = None,
        serve: str | None = None,
        origin: str | None = None,
    ) -> None:
        import timm

        super().__init__()
        self.architecture = check_architecture(architecture)
        self.origin = origin
        self.class_names = [str(c) for c in class_names]
        self.input_spec = ImageSpec(size=input_size, channels=channels, mean=mean, std=std)
        self.head_specs = check_heads([Head.of(h) for h in heads]) if heads is not None else []
        self.serve = serve
        if self.head_specs and hasattr(self, "_hub_mixin_config"):
            # the mixin records constructor arguments as given and drops what JSON cannot hold (Head objects)
            self._hub_mixin_config["heads"] = [h.to_dict() for h in self.head_specs]
        # with heads, the timm model ends at its pooled features (num_classes=0) and the heads follow
        num_classes = 0 if self.head_specs else len(self.class_names)
        self.model = timm.create_model(architecture, pretrained=False, num_classes=num_classes, in_chans=channels)
        if self.head_specs:
            self.heads = nn.ModuleDict({h.name: h.build(self.model.num_features) for h in self.head_specs})
            self._check_served()
        elif serve is not None:
            raise StudentError("Student(serve=...) names a head; this student has none (pass heads=...)")

    def _check_served(self) -> None:
        head = {h.name: h for h in self.head_specs}.get(self.serve) if self.serve is not None else None
        if self.serve is not None and (head is None or head.task != "classification"
                                       or not set(head.outputs) <= set(self.class_names)):
            raise StudentError(f"serve={self.serve!r} must name a classification head over (some of) class_names "
                               f"{self.class_names}; the heads are {[h.to_dict() for h in self.head_specs]}")
        if not self.member_names:
            raise StudentError(f"no classification head predicts class_names {self.class_names}: give one such "
                               "head, or serve=<name of the head to serve>")
        if head is not None:  # where the served head's classes sit among class_names
            self.register_buffer("served_positions", torch.tensor([self.class_names.index(c) for c in head.outputs]),
                                 persistent=False)

    @property
    def member_names(self) -> list[str]:
        """The heads whose votes on ``class_names`` make the served prediction (the ``serve`` head alone, or
        every classification head over ``class_names``)."""
        if self.serve is not None:
            return [self.serve]
        return [h.name for h in self.head_specs
                if h.task == "classification" and list(h.outputs) == self.class_names]

    def forward(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Logits over ``class_names`` for a raw image batch; with heads, each head's output by name."""
        features = self.model(self.input_spec(images))
        if not self.head_specs:
            return features
        return {name: head(features) for name, head in self.heads.items()}

    def members(self, outputs: torch.Tensor | dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The logits over ``class_names`` in :meth:`forward`'s ``outputs`` that vote: the plain student's own,
        or those of :attr:`member_names`."""
        if isinstance(outputs, torch.Tensor):
            return [outputs]
        if self.serve is not None:  # its classes in their places, the others out of reach
            served = outputs[self.serve]
            placed = served.new_full((len(served), len(self.class_names)), torch.finfo(served.dtype).min / 2)
            return [placed.index_copy(1, self.served_positions, served)]
        return [outputs[name] for name in self.member_names]

    def served(self, outputs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits over ``class_names`` the student is scored and served by: a single member's own, or the
        log of the members' mean probability."""
        members = self.members(outputs)
        if len(members) == 1:
            return members[0]
        return torch.stack([z.softmax(dim=-1) for z in members]).mean(dim=0).clamp_min(1e-12).log()

    @torch.no_grad()
    def predict(self, images: torch.Tensor | Picture | Sequence[Picture], top_k: int = 5
                ) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(class name, probability)`` per image: a raw ``B x C x H x W`` batch in ``[0, 1]``, or one
        picture or a list of them, each a PIL image, numpy array, file path or ``C x H x W`` tensor of any size
        (see :func:`amalgam.data.pictures.picture_tensor`).

        >>> student = Student("test_efficientnet", class_names=["cat", "dog"], channels=1)
        >>> [len(top) for top in student.predict([np.zeros((40, 30), dtype=np.uint8), torch.rand(3, 8, 8)], top_k=1)]
        [1, 1]
        """
        self.eval()
        device = next(self.parameters()).device
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            batches = [images]
        else:
            pictures = images if isinstance(images, (list, tuple)) else [images]
            batches = [picture_tensor(p)[None] for p in pictures]  # each at its own size: one by one
        probs = torch.cat([self.served(self(batch.to(device))).softmax(dim=-1) for batch in batches])
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [
            [(self.class_names[i], float(v)) for v, i in zip(row_v.tolist(), row_i.tolist())]
            for row_v, row_i in zip(values, indices)
        ]

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> None:
        """Refused: the mixin's upload would publish the weights without amalgam's model card and checks.

        Publish with :func:`amalgam.publish.push_student` (or ``amalgam push RUN_DIR``), which writes the card
        from the run, validates ``repo_id`` and can add the demo Space:

            >>> from amalgam.publish import push_student
            >>> push_student(student, "my-org/digits-student", run_dir="runs/mine", demo=True)  # doctest: +SKIP
        """
        raise PublishError(f"Student.push_to_hub({repo_id!r}) would upload the weights without amalgam's model card; "
                           "publish with amalgam.publish.push_student(student, repo_id, run_dir=...) or "
                           "`amalgam push RUN_DIR REPO_ID` instead")

    @classmethod
    def _from_pretrained(cls, *, strict: bool = True, **kwargs: Any) -> "Student":
        # The mixin's default is strict=False, which would load a student with missing weights in silence.
        return super()._from_pretrained(strict=strict, **kwargs)


def default_input_size(data_size: Sequence[int]) -> int:
    """The student's input side for data of ``data_size``: the data's own size, at least 32."""
    return max(MIN_INPUT_SIZE, *data_size)

