"""The ``artcache`` torch.compile backend (entry point ``torch_dynamo_backends``).

Compile integration lands with the warm-start issue; until then the backend refuses
clearly instead of silently compiling without a cache.
"""

from __future__ import annotations

from typing import Any


def artcache_backend(gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("artcache: the torch.compile backend is not implemented yet")
