"""A frozen teacher: one model, its class names, its own input, and its taps."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from amalgam.errors import TeacherError
from amalgam.teachers.formats import LoadedModel, load_model_folder
from amalgam.teachers.label_space import distinct_class_names
from amalgam.teachers.preprocess import ImageSpec
from amalgam.teachers.sources import ResolvedSource, resolve_source
from amalgam.teachers.taps import capture_features, module_paths, resolve_modules

HIDDEN_STATE_TAP = "hidden_states."


@dataclass
class TeacherOutput:
    """What a teacher says about a batch: logits in its **own** label space, and the features asked for."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class FrozenModel:
    """What every kind of teacher shares: a frozen ``model``, its size, and where it runs."""

    model: nn.Module

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "FrozenModel":
        """Move the model; on a GPU also to channels-last memory, which its convolutions run fastest in."""
        on_gpu = torch.device(device).type == "cuda"
        self.model.to(device, memory_format=torch.channels_last if on_gpu else torch.contiguous_format)
        return self


class Teacher(FrozenModel):
    """A frozen pretrained classifier, runnable on amalgam's raw image batches.

    Build one with :func:`load_teacher`. Calling it converts the raw ``[0, 1]`` batch to the teacher's own
    input (size, channels, normalisation), runs it without gradients, and returns a :class:`TeacherOutput`.

    Example:
        >>> import timm
        >>> teacher = load_teacher(timm.create_model("test_resnet", num_classes=2), class_names=["cat", "dog"])
        >>> out = teacher(torch.rand(4, 1, 28, 28), taps=["layer1"])
        >>> out.logits.shape, out.features["layer1"].shape[0]
        (torch.Size([4, 2]), 4)
    """

    def __init__(
        self,
        loaded: LoadedModel,
        class_names: Sequence[str],
        name: str,
        source: ResolvedSource | None = None,
    ) -> None:
        self.model = loaded.model.eval().requires_grad_(False)
        self.library = loaded.library
        self.architecture = loaded.architecture
        self.input_spec = loaded.input_spec
        self.class_names = [str(c) for c in class_names]
        self.name = name
        self.source = source
        self._suggested_taps = list(loaded.suggested_taps)
        self.files = list(loaded.files)  # the files it was built from (none for a module)

    def tap_names(self, all_modules: bool = False) -> list[str]:
        """Suggested feature taps (stage outputs or hidden states); with ``all_modules``, every module path."""
        if all_modules:
            return self._suggested_taps + [p for p in module_paths(self.model) if p not in self._suggested_taps]
        return list(self._suggested_taps)

    def describe(self) -> dict[str, Any]:
        """A plain-data summary (for tables, model cards and the app)."""
        return {
            "name": self.name,
            "source": self.source.label if self.source else "module",
            "repo_id": self.source.repo_id if self.source else None,
            "revision": self.source.revision if self.source else None,
            "library": self.library,
            "architecture": self.architecture,
            "parameters": self.num_parameters,
            "input": self.input_spec.to_dict(),
            "classes": self.class_names,
        }

    def __call__(self, images: torch.Tensor, taps: Sequence[str] = ()) -> TeacherOutput:
        return self.run_prepared(self.input_spec(images.to(self.device, non_blocking=True)), taps)

    @torch.no_grad()
    def run_prepared(self, x: torch.Tensor, taps: Sequence[str] = ()) -> TeacherOutput:
        """The teacher on a batch already in its own input (``input_spec`` applied, for example per image in
        DataLoader workers, as the knowledge cache does)."""
        x = x.to(self.device, non_blocking=True)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        hidden = [t for t in taps if self.library == "transformers" and t.startswith(HIDDEN_STATE_TAP)]
        hooked = [t for t in taps if t not in hidden]
        modules = resolve_modules(self.model, hooked, f"teacher {self.name!r}", self._suggested_taps)
        with capture_features(self.model, hooked, modules) as features:
            logits, states = self._run(x, hidden_states=bool(hidden))
            for tap in hidden:
                features[tap] = self._hidden_state(states, tap)
        return TeacherOutput(logits=logits, features={t: features[t] for t in taps})

    def differentiable_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits whose graph reaches back to ``images`` (the weights stay frozen), for methods that perturb
        the input against a teacher (ODS, shared/METHODS.md §8)."""
        with torch.enable_grad():
            return self._run(self.input_spec(images.to(self.device)))[0]

    def _run(self, x: torch.Tensor, hidden_states: bool = False) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        """The model on its own input: logits, and the hidden states when asked (transformers)."""
        states: Sequence[torch.Tensor] = ()
        if self.library == "transformers":
            out = self.model(pixel_values=x, output_hidden_states=hidden_states)
            logits, states = out.logits, out.hidden_states or ()
        else:
            logits = self.model(x)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise TeacherError(
                f"teacher {self.name!r} must return class logits of shape B x C; it returned "
                f"{getattr(logits, 'shape', type(logits).__name__)}"
            )
        return logits, states

    def _hidden_state(self, states: Sequence[torch.Tensor], tap: str) -> torch.Tensor:
        index = tap[len(HIDDEN_STATE_TAP):]
        if not index.isdigit() or int(index) >= len(states):
            raise TeacherError(f"teacher {self.name!r} has no tap {tap!r}; its taps are {self._suggested_taps}")
        return states[int(index)]

    def __repr__(self) -> str:
        return (
            f"Teacher({self.name!r}, {self.library}:{self.architecture}, {len(self.class_names)} classes, "
            f"input {self.input_spec.channels}x{self.input_spec.size[0]}x{self.input_spec.size[1]})"
        )


def load_teacher(
    source: str | os.PathLike | nn.Module,
    *,
    revision: str | None = None,
    class_names: Sequence[str] | None = None,
    input_spec: ImageSpec | None = None,
    name: str | None = None,
    trust_remote_code: bool = False,
) -> Teacher:
    """Load a frozen teacher from the Hub, a local folder, or a module.

    Args:
        source: ``"hf-hub:org/name"``, ``"org/name"``, a folder (timm or transformers layout), or an
            ``nn.Module`` that maps an image batch to logits.
        revision: Hub branch, tag or commit to pin (also ``hf-hub:org/name@rev``).
        class_names: the teacher's class names in output order; required when the files (or module) carry
            none, and overriding them otherwise.
        input_spec: the input the model expects; taken from the files, or from a timm module's
            ``pretrained_cfg``, when not given.
        name: how the teacher is called in logs and tables (default: the repo or folder name).
        trust_remote_code: allow a transformers repo's own Python code. Off unless you ask for it.

    Example:
        >>> import timm
        >>> t = load_teacher(timm.create_model("test_vit", num_classes=3), class_names=["a", "b", "c"])
        >>> t.class_names, t.input_spec.size
        (['a', 'b', 'c'], (160, 160))
    """
    resolved = None
    if isinstance(source, nn.Module):
        loaded = _loaded_module(source, input_spec)
        default_name = type(source).__name__
    elif isinstance(source, (str, os.PathLike)):
        resolved = resolve_source(source, revision, remote_code=trust_remote_code)
        loaded = load_model_folder(resolved.folder, trust_remote_code=trust_remote_code)
        default_name = resolved.repo_id.split("/")[-1] if resolved.repo_id else resolved.folder.name
        if input_spec is not None:
            loaded.input_spec = input_spec
    else:
        raise TeacherError(
            f"unknown teacher source of type {type(source).__name__}: expected a Hub id, a folder path or an "
            "nn.Module"
        )
    name = name or default_name
    num_outputs = _probe_outputs(loaded, name)
    names = list(class_names) if class_names is not None else loaded.class_names
    if not names:
        raise TeacherError(
            f"teacher {name!r} has no class names in its files; pass class_names=[...] ({num_outputs} names, "
            "in output order). Amalgamation matches classes across teachers by name."
        )
    if len(names) != num_outputs:
        raise TeacherError(
            f"teacher {name!r} has {num_outputs} outputs but {len(names)} class names were given"
        )
    distinct = distinct_class_names(names)
    renamed = [f"#{c} {old!r} -> {new!r}" for c, (old, new) in enumerate(zip(names, distinct)) if old != new]
    if renamed:
        warnings.warn(f"teacher {name!r} has repeated class names; kept apart as {', '.join(renamed)} (a label "
                      "mapping can name them so, or by index: [{'#517': 'crane (machine)'}, ...])", stacklevel=2)
    return Teacher(loaded, distinct, name=name, source=resolved)


def _loaded_module(module: nn.Module, input_spec: ImageSpec | None) -> LoadedModel:
    cfg = getattr(module, "pretrained_cfg", None)
    if input_spec is None:
        if not cfg:
            raise TeacherError(
                f"an nn.Module teacher ({type(module).__name__}) needs input_spec=ImageSpec(size=..., "
                "channels=..., mean=..., std=...) so amalgam can prepare its input"
            )
        input_spec = ImageSpec.from_timm_config(cfg)
    feature_info = getattr(module, "feature_info", None)
    taps = [info["module"] for info in feature_info if info.get("module")] if isinstance(feature_info, list) else []
    return LoadedModel(
        model=module,
        library="timm" if cfg else "module",
        architecture=(cfg or {}).get("architecture", type(module).__name__),
        input_spec=input_spec,
        class_names=None,
        suggested_taps=taps,
    )


def _probe_outputs(loaded: LoadedModel, name: str) -> int:
    """Run one blank image through the model: proves it takes images and tells how many classes it has."""
    spec = loaded.input_spec
    probe = torch.zeros(1, spec.channels, *spec.size)
    loaded.model.eval()
    try:
        with torch.no_grad():
            out = loaded.model(pixel_values=probe) if loaded.library == "transformers" else loaded.model(probe)
    except Exception as err:  # noqa: BLE001 - any failure here means the model cannot serve as an image teacher
        raise TeacherError(
            f"teacher {name!r} ({loaded.architecture}) fails on a {spec.channels}x{spec.size[0]}x{spec.size[1]} "
            f"image batch: {type(err).__name__}: {err}. Is it an image classifier, and is input_spec right?"
        ) from None
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise TeacherError(
            f"teacher {name!r} ({loaded.architecture}) does not return class logits (B x C) for an image batch; "
            "amalgam's image task needs an image classifier"
        )
    return logits.shape[1]
