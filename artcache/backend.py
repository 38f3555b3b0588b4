"""The ``artcache`` torch.compile backend: key -> hit (load) or miss (compile, capture, save).

``torch.compile(model, backend="artcache", mode=..., options=...)`` reaches
:func:`artcache_backend` through the ``torch_dynamo_backends`` entry point; explicit users
call ``artcache.Cache(store=...).backend()``.  ``mode`` and ``options`` are applied to
Inductor's config exactly as the default backend applies them, and are part of the key.

Policy: a hit never compiles; a miss compiles with Inductor as usual and saves the result;
a graph artcache cannot cache is compiled normally and its reason counted; any error in
the cache path is handed to ``Cache.degrade`` (a warning and a miss, or a raise in strict
mode).  The user's compile is never lost to a cache problem.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from . import _static_launch as static_launch
from . import _torch_compat as compat
from . import _torch_key_inputs as key_inputs
from . import _triton_compat as triton_compat
from . import _triton_tuning as triton_tuning
from . import keys, pickler
from .cache import Cache
from .config import settings_from_env
from .environment import fingerprint
from .errors import ArtcacheError, CorruptEntryError, StoreError, Uncacheable
from .output_code import CompiledGraph

log = logging.getLogger(__name__)

# GPU entries are re-saved with tuning winners found during this many first calls (and at exit).
_RESAVE_CALLS = 4


class ArtcacheBackend:
    """A torch.compile backend bound to one :class:`Cache` and one mode/options pair."""

    def __init__(self, cache: Cache, *, mode: str | None = None, options: Mapping[str, Any] | None = None) -> None:
        self.cache = cache
        self.mode = mode
        self.options = dict(options or {})
        self._environment: dict[frozenset[str], dict[str, str]] = {}

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        with torch._inductor.config.patch(compat.mode_options(self.mode, self.options)):
            if self.cache.settings.disabled:
                return compat.compile_fx(gm, example_inputs)
            return self._compile(gm, example_inputs)

    # -- the path ------------------------------------------------------------------------
    def _compile(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        try:
            key, specs, values = self._key(gm, example_inputs)
        except Uncacheable as exc:
            return self._uncacheable(exc, gm, example_inputs)
        except Exception as exc:  # noqa: BLE001 - the keying boundary, see below
            # Keying reads torch's global settings and registries and walks user code;
            # whatever that raises, the user's compile goes on without the cache (one
            # warning; strict mode raises through degrade()).
            self.cache.degrade("key", ArtcacheError(f"cannot compute the key: {type(exc).__name__}: {exc}"))
            return self._uncacheable(Uncacheable("key-error", type(exc).__name__), gm, example_inputs)
        hit = self._load(key.key, gm, example_inputs)
        if hit is not None:
            return hit
        self.cache.record_miss_details(key.key, {"factors": key.digests(), "values": values})
        on_gpu = any(isinstance(x, torch.Tensor) and x.device.type == "cuda" for x in example_inputs)
        if on_gpu:
            # Kernels tune at their first run, after this returns: record it (_triton_tuning).
            triton_tuning.install_tuning_recorder()
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            capture = stack.enter_context(compat.capture_compile())
            if on_gpu and triton_compat.triton_available():
                # One ptxas for every kernel's Triton key, here and in compile workers,
                # so that the hit can find them all (align_ptxas_with_compile_workers).
                triton_compat.align_ptxas_with_compile_workers()
                stack.enter_context(static_launch.adopting_long_named_kernels())
            compiled = compat.compile_fx(gm, example_inputs)
        compile_s = time.perf_counter() - start
        graph = CompiledGraph.captured(capture.entry, dict(capture.cpp_kernels))
        self._save(key, graph, gm, specs, values, compile_s)
        kernels = graph.triton_kernels() if on_gpu else None
        if kernels:
            return self._resave_after_tuning(compiled, key, graph, kernels, gm, specs, values, compile_s)
        return compiled

    def _resave_after_tuning(
        self, compiled: Callable[..., Any], key: keys.CacheKey, graph: CompiledGraph,
        kernels: triton_compat.KernelRefs, gm: torch.fx.GraphModule, specs: list[str], values: dict[str, Any], compile_s: float,
    ) -> Callable[..., Any]:
        """Two-phase write for GPU entries: the entry saved above holds the compiled kernels;
        autotuning winners appear at the first forward (and backward) run.  Whenever the
        recorder holds new winners for this graph's kernels, save the entry again with them
        (the manifest write is the commit point, so readers see either version whole).
        Checked around the first calls and once at exit (a backward's tuning ends after the
        forward call returned)."""
        recorder = triton_tuning.recorder()
        lock = threading.Lock()
        state = {"saved": graph.tuning_state(), "calls": 0}

        def resave() -> None:
            with lock:
                tuning = recorder.for_kernels(kernels)
                if tuning == state["saved"]:
                    return
                state["saved"] = tuning
            self._save(key, graph.with_tuning(*tuning), gm, specs, values, compile_s)

        atexit.register(resave)

        @functools.wraps(compiled)
        def run(*args: Any) -> Any:
            if state["calls"] < _RESAVE_CALLS:
                resave()  # the previous call's backward may have tuned
            out = compiled(*args)
            if state["calls"] < _RESAVE_CALLS:
                state["calls"] += 1
                resave()
            return out

        return run

    def _key(
        self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]
    ) -> tuple[keys.CacheKey, list[str], dict[str, Any]]:
        """The key, the input specs, and the readable values behind the factors (kept in
        the manifest and in miss records so ``artcache explain`` can name what differs)."""
        specs = keys.input_specs(gm, example_inputs)
        if torch._inductor.config.freezing:
            # Freezing bakes parameter values into the graph through a compiler path that
            # AOTAutograd's result capture does not cover.
            raise Uncacheable("freezing", "inductor config freezing=True")
        numerics = compat.numerics_flags(cpu_code=compat.may_run_cpu_code(gm, example_inputs))
        environment = self._fingerprint(example_inputs)
        options = {"mode": self.mode, "options": sorted(self.options)}
        extra = key_inputs.extra_factors(gm)
        cache_key = keys.graph_key(
            graph_digest=pickler.hash_object(gm),
            inputs=specs,
            custom_ops=keys.custom_op_factor_value(gm, compat.custom_op_code),
            configs={**compat.config_snapshots(), **key_inputs.extra_configs()},
            numerics=numerics,
            environment=environment,
            compile_options=options,
            extra=extra,
        )
        cache_key.log()
        overrides = compat.config_overrides()
        values = {
            "inputs": specs,
            "numerics": numerics,
            "environment": environment,
            "options": options,
            **{name: value for name, value in extra.items() if value},
            "inductor_config": {k: repr(v) for k, v in overrides["inductor"].items()},
            "functorch_config": {k: repr(v) for k, v in overrides["functorch"].items()},
        }
        return cache_key, specs, values

    def _fingerprint(self, example_inputs: Sequence[Any]) -> dict[str, str]:
        devices = frozenset(x.device.type for x in example_inputs if isinstance(x, torch.Tensor))
        if devices not in self._environment:
            self._environment[devices] = fingerprint(devices)
        return self._environment[devices]

    def _load(self, key: str, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any] | None:
        start = time.perf_counter()
        loaded = self.cache.lookup(key)
        if loaded is None:
            return None
        try:
            graph = CompiledGraph.from_loaded(loaded)
            lifted = compat.lifted_inputs(gm)
            if not graph.guards_hold([*lifted, *example_inputs]):
                self.cache.reject(key, "guards")
                return None
            compiled = graph.load(example_inputs, cudagraphs=bool(torch._inductor.config.triton.cudagraphs), lifted=lifted)
            self.cache.record_hit(loaded, time.perf_counter() - start)
            return compiled
        except ArtcacheError as exc:
            error: ArtcacheError = exc
        except Exception as exc:  # noqa: BLE001 - the one boundary, see below
            # Rebuilding runs torch's post-compile code on stored data; whatever it raises,
            # the user's compile must go on (compile and overwrite the entry).  Strict mode
            # re-raises through degrade(), so tests still see every failure.
            error = CorruptEntryError(f"entry {key[:16]} could not be rebuilt: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        self.cache.degrade("load", error)
        self.cache.reject(key, "unloadable")
        return None

    def _save(
        self,
        key: keys.CacheKey,
        graph: CompiledGraph,
        gm: torch.fx.GraphModule,
        specs: list[str],
        values: dict[str, Any],
        compile_s: float,
    ) -> None:
        try:
            blobs = graph.to_blobs()
            summary = graph.summary(gm, specs)
        except Uncacheable as exc:
            self.cache.record_uncacheable(exc.reason)
            log.info("artcache: graph not cached (%s)", exc)
            return
        except Exception as exc:  # noqa: BLE001 - the compile succeeded; never lose it to a save bug
            self.cache.record_uncacheable("serializer-error")
            self.cache.degrade("save", CorruptEntryError(f"cannot serialize: {type(exc).__name__}: {exc}"))
            return
        summary["compile_seconds"] = round(compile_s, 3)
        summary["factor_values"] = values
        environment = self._fingerprint([])
        self.cache.save(key.key, blobs, factors=key.digests(), environment=environment, summary=summary)

    def _uncacheable(self, exc: Uncacheable, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        self.cache.record_uncacheable(exc.reason)
        log.info("artcache: compiling without the cache (%s)", exc)
        return compat.compile_fx(gm, example_inputs)


def artcache_backend(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    mode: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Callable[..., Any]:
    """``torch.compile(backend="artcache")``: a Cache configured from the environment.

    A store that cannot even be opened (unwritable directory, bad URL, missing extra) is a
    broken store like any other: the graph is compiled without the cache, with a warning,
    unless ``ARTCACHE_STRICT=1``.
    """
    settings = settings_from_env()
    try:
        cache = Cache(settings=settings)
    except StoreError as exc:
        if settings.strict:
            raise
        log.warning("artcache: cannot open the store, compiling without the cache: %s", exc)
        with torch._inductor.config.patch(compat.mode_options(mode, options)):
            return compat.compile_fx(gm, example_inputs)
    return ArtcacheBackend(cache, mode=mode, options=options)(gm, example_inputs)
