"""The models of the warm-start benchmarks (``warm_start.py``, ``warm_start_precompile.py``)
and the probe a child uses to report what artcache did.  Imported by the children only:
builders import torch (and transformers or torchvision) inside, so the parent never does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Workload:
    """A model and one step of work on it, given the callable to run (compiled or eager)."""

    model: Any  # torch.nn.Module; typed loosely so the parent never has to import torch
    step: Callable[[Callable[..., Any]], Any]  # returns the output tensor (or loss)
    compare_to_eager: bool  # False where steps mutate state (training) or are random


def _mlp(device: Any) -> Workload:
    import torch

    # The main job's model (the child has the repository on sys.path, for artcache too).
    from examples.mlp_demo import make_mlp

    model = make_mlp().to(device).eval()
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1)).to(device)

    def step(fn: Callable[..., Any]) -> Any:
        with torch.no_grad():
            return fn(x)

    return Workload(model, step, compare_to_eager=True)


def _mlp_flag(device: Any) -> Workload:
    """The MLP behind a Python flag its forward reads (``flagged_mlp.Flagged``)."""
    from flagged_mlp import Flagged  # beside this file, on the children's sys.path

    workload = _mlp(device)
    return Workload(Flagged(workload.model), workload.step, compare_to_eager=True)


def _gpt2_model(device: Any, *, train: bool) -> tuple[Any, Any]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    # GPT-2 small from its config, random weights: nothing downloaded.  use_cache=False:
    # a single forward over the whole sequence has no use for a KV cache object.
    config = GPT2Config(use_cache=False)
    model = GPT2LMHeadModel(config).to(device)
    model.train(train)
    ids = torch.randint(0, config.vocab_size, (4, 256), generator=torch.Generator().manual_seed(1)).to(device)
    return model, ids


def _gpt2(device: Any) -> Workload:
    import torch

    model, ids = _gpt2_model(device, train=False)

    def step(fn: Callable[..., Any]) -> Any:
        with torch.no_grad():
            return fn(ids).logits

    return Workload(model, step, compare_to_eager=True)


def _gpt2_train(device: Any) -> Workload:
    import torch

    model, ids = _gpt2_model(device, train=True)
    # The optimizer step runs eagerly, outside the compiled region: only the model's
    # forward (and, through AOTAutograd, its backward) is compiled.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(fn: Callable[..., Any]) -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = fn(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        return loss.detach()

    # Training mutates the weights and dropout draws random masks: no eager comparison.
    return Workload(model, step, compare_to_eager=False)


def _resnet50(device: Any) -> Workload:
    import torch
    import torchvision

    model = torchvision.models.resnet50(weights=None).to(device).eval()
    x = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)

    def step(fn: Callable[..., Any]) -> Any:
        with torch.no_grad():
            return fn(x)

    return Workload(model, step, compare_to_eager=True)


BUILDERS: dict[str, Callable[[Any], Workload]] = {"mlp": _mlp, "mlp-flag": _mlp_flag, "gpt2": _gpt2, "gpt2-train": _gpt2_train, "resnet50": _resnet50}


class ArtcacheProbe:
    """Collects every artcache ``EntryStore`` (``Cache``) a backend creates, and artcache's log warnings,
    so a child can report hits / misses / saves / errors.  Without this a warm run that
    silently degraded to a miss (and compiled) would pass for a slow warm start."""

    def __init__(self) -> None:
        import logging

        from artcache.entries import EntryStore

        self.caches: list[Any] = []
        self.warnings: list[str] = []
        original_init = EntryStore.__init__
        caches = self.caches

        def recording_init(cache: Any, *args: Any, **kwargs: Any) -> None:
            original_init(cache, *args, **kwargs)
            caches.append(cache)

        EntryStore.__init__ = recording_init  # type: ignore[method-assign]  # this process only

        probe = self

        class _Record(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                probe.warnings.append(record.getMessage()[:500])

        logger = logging.getLogger("artcache")
        logger.addHandler(_Record(level=logging.WARNING))
        # Adding a handler disables Python's last-resort stderr printing: keep it visible.
        logger.addHandler(logging.StreamHandler())

    def summary(self) -> dict[str, Any]:
        total: dict[str, Any] = {"caches": len(self.caches), "hits": 0, "misses": {}, "saves": 0, "errors": {}, "uncacheable": {}, "bytes_read": 0, "bytes_written": 0, "lookup_s": 0.0}
        for cache in self.caches:
            stats = cache.stats()
            total["hits"] += stats.hits
            total["saves"] += stats.saves
            total["bytes_read"] += stats.bytes_read
            total["bytes_written"] += stats.bytes_written
            total["lookup_s"] += stats.lookup_seconds
            for name in ("misses", "errors", "uncacheable"):
                for key, count in getattr(stats, name).items():
                    total[name][key] = total[name].get(key, 0) + count
        total["warnings"] = self.warnings
        return total
