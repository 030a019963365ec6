"""The student: a timm architecture with a classifier over the union label space, saved as a Hub model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from amalgam.teachers.preprocess import ImageSpec

if TYPE_CHECKING:
    import os

    from amalgam.publish import PublishResult

MIN_INPUT_SIZE = 32  # timm's small CNNs downsample by 32; smaller inputs vanish


class Student(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="amalgam",
    tags=["knowledge-amalgamation", "distillation", "image-classification"],
    pipeline_tag="image-classification",
):
    """A timm model that takes amalgam's raw ``[0, 1]`` image batches and predicts the union classes.

    Saved with ``save_pretrained`` as ``config.json`` (the constructor arguments below) plus
    ``model.safetensors``; ``from_pretrained`` loads with strict key checking.

    Example:
        >>> student = Student("test_efficientnet", class_names=["cat", "dog"], input_size=32, channels=1)
        >>> student(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        architecture: str,
        class_names: Sequence[str],
        input_size: int | Sequence[int] = MIN_INPUT_SIZE,
        channels: int = 3,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
    ) -> None:
        import timm

        super().__init__()
        self.architecture = architecture
        self.class_names = [str(c) for c in class_names]
        self.input_spec = ImageSpec(size=input_size, channels=channels, mean=mean, std=std)
        self.model = timm.create_model(
            architecture, pretrained=False, num_classes=len(self.class_names), in_chans=channels
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits over ``class_names`` for a raw image batch."""
        return self.model(self.input_spec(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(class name, probability)`` per image."""
        self.eval()
        probs = self(images.to(next(self.parameters()).device)).softmax(dim=-1)
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [
            [(self.class_names[i], float(v)) for v, i in zip(row_v.tolist(), row_i.tolist())]
            for row_v, row_i in zip(values, indices)
        ]

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def push_to_hub(
        self,
        repo_id: str,
        *,
        config: dict | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        branch: str | None = None,
        create_pr: bool | None = None,
        allow_patterns: list[str] | str | None = None,
        ignore_patterns: list[str] | str | None = None,
        delete_patterns: list[str] | str | None = None,
        model_card_kwargs: dict[str, Any] | None = None,
        run_dir: str | os.PathLike | None = None,
        demo: bool = False,
        timm_export: bool = False,
        space_id: str | None = None,
    ) -> PublishResult:
        """Publish this student as Hub model ``repo_id`` with amalgam's model card (and, with ``demo``, a Space).

        Takes the mixin's arguments; ``run_dir`` (the run this student came from) fills the card with its
        teachers, method, data and results, and ``model_card_kwargs`` may set the card's ``license``. The repo's
        main branch is made to hold exactly the published files, so ``branch``, ``create_pr`` and the
        ``*_patterns`` arguments are refused. See :func:`amalgam.publish.push_run` for the rest.

        Example:
            >>> student.push_to_hub("my-org/digits-student", run_dir="runs/mine", demo=True)  # doctest: +SKIP
        """
        from amalgam.errors import PublishError
        from amalgam.publish import push_student
        from amalgam.publish.card import DEFAULT_LICENSE
        from amalgam.publish.push import DEFAULT_COMMIT_MESSAGE

        refused = {"branch": branch, "create_pr": create_pr, "allow_patterns": allow_patterns,
                   "ignore_patterns": ignore_patterns, "delete_patterns": delete_patterns}
        refused = sorted(name for name, value in refused.items() if value)
        card = dict(model_card_kwargs or {})
        license = card.pop("license", DEFAULT_LICENSE)
        if refused or card:
            raise PublishError(f"Student.push_to_hub does not take {', '.join(refused + sorted(card))}: it "
                               "publishes the student, its card and its Space to the repos' main branch as a whole")
        return push_student(self, repo_id, run_dir=run_dir, token=token, private=bool(private), demo=demo,
                            timm_export=timm_export, space_id=space_id, license=license, config=config,
                            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE)

    @classmethod
    def _from_pretrained(cls, *, strict: bool = True, **kwargs: Any) -> "Student":
        # The mixin's default is strict=False, which would load a student with missing weights in silence.
        return super()._from_pretrained(strict=strict, **kwargs)


def default_input_size(data_size: Sequence[int]) -> int:
    """The student's input side for data of ``data_size``: the data's own size, at least 32."""
    return max(MIN_INPUT_SIZE, *data_size)

