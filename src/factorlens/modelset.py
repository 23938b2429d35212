"""Several networks run as one: the capture stage of ``factorlens compare``.

:class:`ModelSet` holds labelled models as its submodules, so a capture of it sees the
layer ``conv1`` of the model labelled ``clean`` as the module ``clean.conv1``: every block's
name is prefixed by its model's label, and one store holds all models' layers on the same
inputs next to the one input block.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from factorlens.capture import EnoughOfThisBatch, select_layers
from factorlens.errors import FactorlensError, FactorlensRuntimeError, one_line

#: a label: letters, digits, ``_`` and ``-``, starting with a letter or digit (it becomes the
#: first dotted part of every block name of its model)
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")
#: names a label may not take: the input block's, and attributes every nn.Module has
RESERVED = frozenset({"input", "output", "training", "models", "hooks"})


def check_label(label: Any) -> str:
    """Return ``label`` when it can prefix block names; a one-line error otherwise."""
    if not isinstance(label, str) or not LABEL.fullmatch(label):
        raise FactorlensError(
            f"model label {label!r} is not usable: use 1-48 letters, digits, '_' or '-', "
            "starting with a letter or digit (e.g. clean, noisy-40, epoch_05)"
        )
    if label in RESERVED or hasattr(nn.Module, label):
        raise FactorlensError(f"model label {label!r} is reserved; choose another label")
    return label


class ModelSet(nn.Module):
    """Labelled models run one after the other on the same batch.

    Parameters
    ----------
    models : mapping of str to torch.nn.Module
        ``{label: model}`` in the order to show them; two or more. A model given under two
        labels is copied, so each label has its own modules (and its own blocks).
    preprocess : mapping of str to callable, optional
        ``{label: f}``: ``f(x)`` is applied to the batch before that model only (a model
        file's ``factorlens_preprocess``); the stored input block is never changed.

    ``forward(x)`` returns the last model's output; the capture reads the layers.
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        preprocess: Mapping[str, Callable[[torch.Tensor], torch.Tensor] | None] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(models, Mapping) or len(models) < 2:
            raise FactorlensError(
                "compare needs two or more models as {label: model}; to analyse one model "
                "use analyze"
            )
        seen: set[int] = set()
        for label, model in models.items():
            check_label(label)
            if not isinstance(model, nn.Module):
                raise FactorlensError(
                    f"model {label!r} is a {type(model).__name__}, not a torch.nn.Module"
                )
            if id(model) in seen:  # the same object twice: named_modules() would list it once
                model = copy.deepcopy(model)
            seen.add(id(model))
            self.add_module(label, model)
        self.labels: list[str] = list(models)
        extra = set(preprocess or {}) - set(self.labels)
        if extra:
            raise FactorlensError(
                f"preprocess names {sorted(extra)} that are not model labels {self.labels}"
            )
        self.preprocess = {k: v for k, v in (preprocess or {}).items() if v is not None}

    def forward(self, x: torch.Tensor) -> Any:
        """Run every model on ``x`` (after its own preprocessing); return the last output."""
        out = None
        for label in self.labels:
            hook = self.preprocess.get(label)
            try:
                out = getattr(self, label)(hook(x) if hook is not None else x)
            except (FactorlensError, EnoughOfThisBatch):
                raise
            except Exception as exc:  # say which of the models it was
                raise FactorlensRuntimeError(
                    f"model {label!r} failed on an input batch of shape {tuple(x.shape)}: "
                    f"{type(exc).__name__}: {one_line(exc, 400)}; check that the data shape, "
                    "channels and preprocessing match what that model expects"
                ) from exc
        return out


def model_layers(
    models: ModelSet, layers: Mapping[str, Sequence[str] | str | None] | None = None
) -> list[str]:
    """Resolve each model's layer choice to the prefixed module names a capture takes.

    ``layers`` maps a label to names or globs as :func:`factorlens.capture.select_layers`
    takes them (within that model, without the label); a label left out gets its default
    layers. Returns ``["label.name", ...]``, model by model in ``models.labels`` order.
    """
    if layers is not None and not isinstance(layers, Mapping):
        raise FactorlensError(
            f"`layers` of a comparison must map each model's label to its layers, e.g. "
            f"{{{models.labels[0]!r}: 'features.*'}}, got {type(layers).__name__}"
        )
    layers = dict(layers or {})
    extra = set(layers) - set(models.labels)
    if extra:
        raise FactorlensError(
            f"layers are given for {sorted(extra)}, which are not model labels {models.labels}"
        )
    names: list[str] = []
    for label in models.labels:
        try:
            chosen = select_layers(getattr(models, label), layers.get(label))
        except FactorlensError as exc:
            raise FactorlensError(f"model {label!r}: {exc}") from exc
        names += [f"{label}.{name}" for name in chosen]
    return names
