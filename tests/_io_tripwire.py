"""Trap what decoding a stored document must never do: evaluate strings, load libraries,
touch files, start processes or import modules.

``armed()`` replaces those functions for the length of a ``with`` block.  A trapped call
raises :class:`Tripped`, a ``BaseException`` (so no ``except Exception`` in the code
under test swallows it), and is recorded in the returned list as well, in case something
swallows even that.  Imports of modules already imported are allowed (``import x`` inside
a function is a dictionary lookup then); importing a new one runs its code and is trapped.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import importlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch


class Tripped(BaseException):
    pass


_OS_FILE_FUNCTIONS = (
    "open", "remove", "unlink", "rename", "replace", "mkdir", "makedirs", "rmdir", "removedirs",
    "symlink", "link", "truncate", "chmod", "chown", "utime", "listdir", "scandir", "system",
    "popen", "fork", "execv", "execve", "spawnv", "spawnve", "putenv", "unsetenv",
)


def _targets() -> list[tuple[Any, str]]:
    targets: list[tuple[Any, str]] = [
        (builtins, "eval"), (builtins, "exec"), (builtins, "compile"), (builtins, "open"),
        (io, "open"), (ctypes, "CDLL"), (ctypes, "PyDLL"), (ctypes.cdll, "LoadLibrary"),
        (ctypes.pydll, "LoadLibrary"), (subprocess, "Popen"), (subprocess, "run"),
        (torch.ops, "load_library"), (torch.classes, "load_library"),
    ]
    targets += [(os, name) for name in _OS_FILE_FUNCTIONS if hasattr(os, name)]
    return targets


@contextlib.contextmanager
def armed() -> Iterator[list[str]]:
    calls: list[str] = []

    def trap(name: str) -> Callable[..., Any]:
        def tripped(*args: Any, **kwargs: Any) -> Any:
            calls.append(f"{name}{args[:2]!r}")
            raise Tripped(f"{name} called while decoding")

        return tripped

    real_import = builtins.__import__
    real_import_module = importlib.import_module

    def guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if level == 0 and name not in sys.modules:
            calls.append(f"import {name}")
            raise Tripped(f"import of {name} while decoding")
        return real_import(name, globals, locals, fromlist, level)

    def guarded_import_module(name: str, package: str | None = None) -> Any:
        if name not in sys.modules:
            calls.append(f"importlib.import_module({name!r})")
            raise Tripped(f"import of {name} while decoding")
        return real_import_module(name, package)

    # (owner, name, value, whether the owner itself held it): an instance attribute that
    # only shadows a method for the block is deleted again afterwards.
    saved = [(owner, attr, getattr(owner, attr), attr in vars(owner)) for owner, attr in _targets()]
    try:
        for owner, attr, _, _ in saved:
            setattr(owner, attr, trap(f"{getattr(owner, '__name__', type(owner).__name__)}.{attr}"))
        builtins.__import__ = guarded_import
        importlib.import_module = guarded_import_module
        yield calls
    finally:
        builtins.__import__ = real_import
        importlib.import_module = real_import_module
        for owner, attr, value, own in saved:
            if own:
                setattr(owner, attr, value)
            else:
                delattr(owner, attr)
