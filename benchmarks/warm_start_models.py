"""The warm-start benchmark's models: each builds a model and one step of work on it.

Imported by ``warm_start.py`` (and its variants) in the child process only: the parent
never imports torch.  Every model is built from its config with seeded random weights, so
nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import platform
from typing import Any

MODELS: dict[str, tuple[str, ...]] = {
    # model -> the packages it needs beyond torch
    "mlp": (),
    "gpt2": ("transformers",),
    "gpt2-train": ("transformers",),
    "resnet50": ("torchvision",),
}

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


BUILDERS: dict[str, Callable[[Any], Workload]] = {"mlp": _mlp, "gpt2": _gpt2, "gpt2-train": _gpt2_train, "resnet50": _resnet50}


def cpu_model() -> str:
    """The processor's model name, for the report's machine line."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def dist_version(name: str) -> str | None:
    """An installed distribution's version, or None (a model's optional package)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
