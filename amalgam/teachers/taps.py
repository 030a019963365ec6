"""Capturing intermediate features of any model by module path, with forward hooks that never outlive a call.

Models are never rewritten to return features (torchdistill's lesson): a hook on ``model.get_submodule(path)``
records that module's output during one forward pass and is removed in ``finally``, so an exception in the
forward cannot leave hooks behind (KamalEngine's failure).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from amalgam.errors import TeacherError


def module_paths(model: nn.Module) -> list[str]:
    """Every tappable module path of ``model`` (``""``, the model itself, excluded)."""
    return [name for name, _ in model.named_modules() if name]


def _first_tensor(output: object) -> torch.Tensor:
    # transformers layers return tuples (hidden, attentions, ...); the hidden state comes first.
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot take a feature from a module output of type {type(output).__name__}")


def resolve_modules(model: nn.Module, paths: Sequence[str], owner: str, suggested: Sequence[str]) -> list[nn.Module]:
    """The modules at ``paths``; an unknown path raises an error listing ``suggested`` taps of ``owner``."""
    modules = []
    for path in paths:
        try:
            modules.append(model.get_submodule(path))
        except AttributeError:
            raise TeacherError(
                f"{owner} has no tap {path!r}. Its suggested taps are {list(suggested)}; any module path of "
                f"the model also works (see Teacher.tap_names(all_modules=True))."
            ) from None
    return modules


@contextmanager
def capture_features(model: nn.Module, paths: Sequence[str], modules: Sequence[nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``modules`` (named by ``paths``) during the forward passes inside the block.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> with capture_features(net, ["0"], [net[0]]) as feats:
        ...     _ = net(torch.zeros(1, 4))
        >>> feats["0"].shape, len(net[0]._forward_hooks)
        (torch.Size([1, 3]), 0)
    """
    features: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(path: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            features[path] = _first_tensor(output)

        return hook

    try:
        for path, module in zip(paths, modules):
            handles.append(module.register_forward_hook(make_hook(path)))
        yield features
    finally:
        for handle in handles:
            handle.remove()
