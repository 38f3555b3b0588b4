"""Process-wide patches of torch's classes and functions, and lookups by name.

Capture, hit-time serving and the lean load each replace a few of torch's class
attributes for the duration of one compile or one rebuild.  They share one lock so no two
of them interleave, and every patch is restored on the way out.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from typing import Any

# One compile or rebuild at a time may patch torch's classes.  Re-entrant because a
# compile can trigger a nested Dynamo compile on the same thread.
PATCH_LOCK = threading.RLock()


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``obj.name = value`` for the duration; restore the original after."""
    original = obj.__dict__[name] if isinstance(obj, type) else getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


def find(module: str, name: str) -> Any:
    """``module.name``, or ``None`` when this torch/Triton has no such thing."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
