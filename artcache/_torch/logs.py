"""artcache in torch's own observability: the ``artcache`` log name in ``torch._logging``
(``TORCH_LOGS=artcache``, ``torch._logging.set_logs(modules={"artcache": logging.INFO})``), counts in
``torch._dynamo.utils.counters["artcache"]``, and structured-trace artifacts
(``TORCH_TRACE``) that tlparse lists beside torch's own cache decisions.

``TORCH_LOGS=artcache`` set before ``import torch`` already works through torch's
module-name lookup (artcache is importable); :func:`register` makes ``artcache`` one of
torch's registered log names, so that it is listed by ``TORCH_LOGS=help`` and set up with
torch's handlers and format whenever torch (re)initializes its logs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import torch._logging
from torch._logging._internal import log_registry

LOG_NAME = "artcache"


def register() -> None:
    """Make ``artcache`` a torch log name (idempotent)."""
    if not log_registry.is_log(LOG_NAME):
        torch._logging._internal.register_log(LOG_NAME, LOG_NAME)


def count(*names: str) -> None:
    """Add one to each of ``counters["artcache"][name]``."""
    from torch._dynamo.utils import counters  # loaded by the time a backend runs

    bucket = counters[LOG_NAME]
    for name in names:
        bucket[name] += 1


def trace(event: str, payload: Mapping[str, Any]) -> None:
    """One structured-trace artifact ``artcache_<event>`` (JSON), attached to the compile
    being traced.  Nothing is built unless a trace is being written."""
    make: Callable[[], str] = lambda: json.dumps(dict(payload), sort_keys=True, default=str)  # noqa: E731
    torch._logging.trace_structured(
        "artifact",
        metadata_fn=lambda: {"name": f"{LOG_NAME}_{event}", "encoding": "json"},
        payload_fn=make,
    )
