"""A model written the way model libraries (Hugging Face transformers) write theirs, for
the precompile tier: each construct below gives Dynamo a guard source or a transformed-code
global that plain modules never produce.

=============================================  =============================================
construct                                      what Dynamo guards or emits
=============================================  =============================================
``Registry``: a ``MutableMapping`` with a      ``dict(type(r).__dict__)``,
class-level mapping, read with ``in`` and      ``type(r).__mro__[i]`` sources; the frozen
``[]``                                         ``_collections_abc`` code of ``__contains__``
``Settings.__getattribute__`` through an       ``type(s).__mro__[i].__getattribute__``, the
``attribute_map``; a ``property``              property getter by its code (``CLOSURE_MATCH``)
``_scaled(x, factor=2.0)``, a registered       ``fn.__defaults__[i]`` (``DefaultsSource``),
function with a default and a closure cell     ``fn.__closure__[i].cell_contents``
``Action`` (an ``enum.Enum``) read by the      an identity guard on an enum member
decorator of ``forward``
``Output``: a dataclass that is an             its ``__init__`` (code made by ``exec``), a
``OrderedDict``                                global for ``collections``, the builtin ``type``
``type(x) is torch.Tensor``                    a global Dynamo installs for ``torch`` by id
=============================================  =============================================
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import torch
from torch import nn


class Action(enum.Enum):
    NONE = "none"
    WARN = "warn"


def _checked_kwargs(func: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator as ``transformers.utils.deprecation.deprecate_kwarg`` is written: an enum
    member decides what happens to a deprecated keyword."""
    @functools.wraps(func)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        action = Action.NONE
        if "old_scale" in kwargs:
            action = Action.WARN
            kwargs["scale"] = kwargs.pop("old_scale")
        if action == Action.WARN:
            raise TypeError("old_scale was renamed scale")
        return func(self, *args, **kwargs)

    return wrapper


def _make_scaled(offset: float) -> Callable[..., torch.Tensor]:
    def _scaled(x: torch.Tensor, factor: float = 2.0) -> torch.Tensor:
        return x * factor + offset  # a default and a closure cell, both guarded

    return _scaled


class Registry(MutableMapping):
    """A registry as ``transformers``' ``AttentionInterface``: a class-level mapping every
    instance shares, and a local one."""

    _global_mapping = {"scaled": _make_scaled(0.5)}

    def __init__(self) -> None:
        self._local_mapping: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self._local_mapping:
            return self._local_mapping[key]
        return self._global_mapping[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._local_mapping[key] = value

    def __delitem__(self, key: str) -> None:
        del self._local_mapping[key]

    def __iter__(self) -> Iterator[str]:
        return iter({**self._global_mapping, **self._local_mapping})

    def __len__(self) -> int:
        return len(self._global_mapping.keys() | self._local_mapping.keys())


REGISTRY = Registry()


class Settings:
    """A configuration object as ``PretrainedConfig``: attribute names mapped through a
    class attribute, and a property."""

    attribute_map = {"kind": "implementation"}

    def __init__(self) -> None:
        self.implementation = "scaled"
        self.width = 8

    def __getattribute__(self, key: str) -> Any:
        if key != "attribute_map" and key in super().__getattribute__("attribute_map"):
            key = super().__getattribute__("attribute_map")[key]
        return super().__getattribute__(key)

    @property
    def double_width(self) -> int:
        return self.width * 2

    @property
    def gain(self) -> float:
        return self.width / 8


@dataclasses.dataclass
class Output(collections.OrderedDict):
    """A return value as ``ModelOutput``: a dataclass that is an ordered dict."""

    hidden: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class LibraryStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = Settings()
        self.a = nn.Linear(8, self.config.double_width)
        self.b = nn.Linear(self.config.double_width, 4)

    @_checked_kwargs
    def forward(self, x: torch.Tensor, scale: float = 1.0) -> Output:
        if type(x) is not torch.Tensor:
            raise TypeError("a plain tensor")
        kind = self.config.kind
        scaled = REGISTRY[kind] if kind in REGISTRY else None
        h = self.a(x).tanh()
        if scaled is not None:
            h = scaled(h)
        return Output(hidden=h, logits=self.b(h) * scale * self.config.gain)
