"""The ``artcache`` torch.compile backend: key -> hit (load) or miss (compile, capture, save).

``torch.compile(model, backend="artcache", mode=..., options=...)`` reaches
:func:`artcache_backend` through the ``torch_dynamo_backends`` entry point; explicit users
call ``artcache.Cache(store=...).backend()``.  ``mode`` and ``options`` are applied to
Inductor's config exactly as the default backend applies them, and are part of the key.

With precompile on (``options={"precompile": True}``, ``ARTCACHE_PRECOMPILE=1``) a
``torch.compile`` call also attaches the precompile tier to the function it compiles
(:func:`_precompile_decision`, :mod:`artcache.frame_hook`): a hit then skips Dynamo's
tracing of the frame as well.

Policy: a hit never compiles; a miss compiles with Inductor as usual and saves the result;
a graph artcache cannot cache is compiled normally and its reason counted; any error in
the cache path is handed to ``Cache.degrade`` (a warning and a miss, or a raise in strict
mode).  The user's compile is never lost to a cache problem.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from . import bundler, frame_hook, keys, pickler, single_flight, weights
from ._torch import freezing, import_cost, key_inputs, op_registry, precompile_hook, rebuild
from ._torch import logs as torch_logs
from ._torch import settings as torch_settings
from ._torch.entry_types import entry_allowlist
from .bundler import KernelRefs
from .config import settings_from_env
from .entries import EntryStore, Lookup
from .entry import LoadedEntry, SummaryKey
from .environment import fingerprint
from .errors import ArtcacheError, CorruptEntryError, StoreError, Uncacheable
from .output_code import CompiledGraph, graph_title

log = logging.getLogger(__name__)
torch_logs.register()  # the `artcache` log name in torch._logging (TORCH_LOGS=artcache)

# GPU entries are re-saved with tuning winners found during this many first calls (and at exit).
_RESAVE_CALLS = 4


class ArtcacheBackend:
    """A torch.compile backend bound to one :class:`~artcache.entries.EntryStore` (an
    ``artcache.Cache``) and one mode/options pair."""

    def __init__(self, cache: EntryStore, *, mode: str | None = None, options: Mapping[str, Any] | None = None) -> None:
        self.cache = cache
        self.mode = mode
        self.options = dict(options or {})
        # The precompile tier (artcache.frame_hook): an option of artcache's, never Inductor's.
        wanted = self.options.pop("precompile", None)
        self.precompile = bool(cache.settings.precompile if wanted is None else wanted)
        if self.precompile and not _HOOK_INSTALLED:
            # A warning (shown once per process by Python's default filter), not an error.
            warnings.warn("artcache: precompile needs torch's precompile-entry hook, which this torch lacks; "
                          "compiling with the artcache backend (Dynamo traces, graphs hit).", stacklevel=2)
        self._environment: dict[frozenset[str], dict[str, str]] = {}
        self._allow: pickler.Allowlist | None = None
        # Before Dynamo's first compile imports torch's codecache (and with it redis-py,
        # which a hit never uses): artcache._torch.import_cost.
        import_cost.defer_unused_imports()
        # Called with each computed graph key and what the graph's factors were made of
        # (the precompile tier records which graph entry a frame uses).
        self.on_key: Callable[[str, dict[str, Any]], None] | None = None

    def _allowlist(self) -> pickler.Allowlist:
        """The allowlist a graph is hashed with: every type an entry may hold (Dynamo
        graphs name some of torch's internal callables), built once per backend."""
        if self._allow is None:
            self._allow = entry_allowlist()
        return self._allow

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        with torch_settings.inductor_config_patch(torch_settings.mode_options(self.mode, self.options)):
            if self.cache.settings.disabled:
                return torch_settings.compile_fx(gm, example_inputs)
            return self._compile(gm, example_inputs)

    # -- the path ------------------------------------------------------------------------
    def _compile(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        title = graph_title(gm)
        try:
            key, specs, values = self._key(gm, example_inputs)
        except Uncacheable as exc:
            return self._uncacheable(exc, gm, example_inputs, title)
        except Exception as exc:  # noqa: BLE001 - the keying boundary, see below
            # Keying reads torch's global settings and registries and walks user code;
            # whatever that raises, the user's compile goes on without the cache (one
            # warning; strict mode raises through degrade()).
            self.cache.degrade("key", ArtcacheError(f"cannot compute the key: {type(exc).__name__}: {exc}"))
            return self._uncacheable(Uncacheable("key-error", type(exc).__name__), gm, example_inputs, title)
        hit, miss, slot_key = self._load_variants(key.key, gm, example_inputs, title)
        if hit is not None:
            return hit
        self.cache.record_miss_details(key.key, {"factors": key.digests(), "values": values})
        with single_flight.turn(self.cache.store, slot_key, enabled=self.cache.settings.single_flight) as turn:
            if not turn.compile:
                # Another process compiled this key while we waited: load its entry.
                hit, _ = self._load(slot_key, gm, example_inputs, title, waited_s=turn.waited_s)
                if hit is not None:
                    return hit
            on_gpu = any(isinstance(x, torch.Tensor) and x.device.type == "cuda" for x in example_inputs)
            start = time.perf_counter()
            with bundler.capturing(on_gpu=on_gpu) as capture:
                compiled = torch_settings.compile_fx(gm, example_inputs)
            compile_s = time.perf_counter() - start
            graph = CompiledGraph.captured(capture)
            key = dataclasses.replace(key, key=slot_key)
            saved = self._save(key, graph, gm, specs, values, compile_s)
        self._report_miss(key.key, title, miss, compile_s, saved)
        kernels = graph.triton_kernels() if on_gpu else None
        if kernels:
            return self._resave_after_tuning(compiled, key, graph, kernels, gm, specs, values, compile_s)
        return compiled

    # -- what the cache did, one line per graph --------------------------------------------
    def _report_miss(self, key: str, title: str, miss: Lookup, compile_s: float, saved: str) -> None:
        """One line for a graph that missed and was compiled; ``saved`` is "saved" or why
        not.  A miss on a damaged entry is a warning."""
        outcome = f"compiled in {compile_s:.1f} s, {saved}"
        names = ["miss", f"miss_{miss.reason}"]
        if saved == "saved":
            names.append("save")
        if miss.damaged:
            # Not silent: the user pays a full compile for bytes that were stored.
            names.append("damaged")
            log.warning("artcache: miss (%s) %s %s: the stored entry is damaged (%s); compiling again "
                        "(a saved entry replaces it): %s", miss.reason, key[:12], title, miss.detail, outcome)
        else:
            log.info("artcache: miss (%s) %s %s: %s", miss.reason, key[:12], title, outcome)
        torch_logs.count(*names)
        torch_logs.trace("miss", {"key": key, "reason": miss.reason, "detail": miss.detail, "title": title,
                                  "compile_seconds": round(compile_s, 3), "saved": saved})

    def _resave_after_tuning(
        self, compiled: Callable[..., Any], key: keys.CacheKey, graph: CompiledGraph,
        kernels: KernelRefs, gm: torch.fx.GraphModule, specs: list[str], values: dict[str, Any], compile_s: float,
    ) -> Callable[..., Any]:
        """Two-phase write for GPU entries: the entry saved above holds the compiled kernels;
        autotuning winners appear at the first forward (and backward) run.  Whenever the
        recorder holds new winners for this graph's kernels, save the entry again with them
        (the manifest write is the commit point, so readers see either version whole).
        Checked around the first calls and once at exit (a backward's tuning ends after the
        forward call returned)."""
        lock = threading.Lock()
        state = {"saved": graph.kernels.tuning_state(), "calls": 0}

        def resave() -> None:
            with lock:
                tuning = bundler.tuning_for(kernels)
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
        cpu_code = torch_settings.may_run_cpu_code(gm, example_inputs)
        ambient = self._ambient(cpu_code, example_inputs)
        numerics, environment, options = ambient["numerics"], ambient["environment"], ambient["compile_options"]
        extra = key_inputs.extra_factors(gm)
        if freezing.parameter_freezing():
            # A frozen graph compiles the values of the parameters and buffers that are
            # otherwise inputs: the entry serves only these weights.
            extra["frozen_weights"] = freezing.weights_factor(weights.weights_digest(rebuild.lifted_inputs(gm)))
        custom_ops = keys.custom_op_factor_value(gm, op_registry.custom_op_code)
        cache_key = keys.graph_key(
            # AOTAutograd lifts the graph's parameters and buffers to inputs: only their
            # specs are hashed here, and a frozen graph's values by frozen_weights above.
            graph_digest=pickler.hash_object(gm, allow=self._allowlist(), lifted_inputs=True),
            inputs=specs,
            custom_ops=custom_ops,
            **ambient,
            extra=extra,
        )
        cache_key.log()
        if self.on_key is not None:
            self.on_key(cache_key.key, {"cpu_code": cpu_code, "custom_ops": custom_ops, **extra})
        overrides = torch_settings.config_overrides()
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

    def _ambient(self, cpu_code: bool, example_inputs: Sequence[Any]) -> dict[str, Any]:
        """The key inputs read from the process rather than the graph (``keys.ambient_factors``)."""
        return {
            "configs": {**torch_settings.config_snapshots(), **key_inputs.extra_configs()},
            "numerics": torch_settings.numerics_flags(cpu_code=cpu_code),
            "environment": self.fingerprint(example_inputs),
            "compile_options": {"mode": self.mode, "options": sorted(self.options)},
        }

    def ambient_digests(self, cpu_code: bool, example_inputs: Sequence[Any]) -> dict[str, str]:
        """Digest by factor name of every key factor read from this process: a graph
        entry's manifest must hold the same ones to serve a precompiled frame here."""
        with torch_settings.inductor_config_patch(torch_settings.mode_options(self.mode, self.options)):
            factors = keys.ambient_factors(**self._ambient(cpu_code, example_inputs))
            factors += [keys.factor(name, value) for name, value in key_inputs.ambient_extra_factors().items()]
        return {f.name: f.digest for f in factors}

    def fingerprint(self, example_inputs: Sequence[Any]) -> dict[str, str]:
        """The environment factor for inputs on these devices (computed once per device set)."""
        devices = frozenset(x.device.type for x in example_inputs if isinstance(x, torch.Tensor))
        if devices not in self._environment:
            self._environment[devices] = fingerprint(devices)
        return self._environment[devices]

    def _load_variants(
        self, key: str, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], title: str,
    ) -> tuple[Callable[..., Any] | None, Lookup, str]:
        """Look the key up, then its guard-variant slots while an entry's shape guards reject
        the inputs (``keys.guard_variant``): (the loaded callable or ``None``, the first
        lookup's outcome, the key a compile should be saved under)."""
        hit, first = self._load(key, gm, example_inputs, title, count=False)
        miss, slot = first, 0
        while hit is None and miss.reason == "guards" and slot + 1 < keys.MAX_GUARD_VARIANTS:
            slot += 1
            hit, miss = self._load(keys.guard_variant(key, slot), gm, example_inputs, title, count=False)
        # One graph, one hit or one miss in the counts (the first slot's reason for a miss).
        self.cache.count_lookup(key, None if hit is not None else first.reason)
        # Every slot full of variants for other inputs: the last one is replaced.
        return hit, first, keys.guard_variant(key, slot)

    def _load(
        self, key: str, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], title: str,
        *, waited_s: float | None = None, count: bool = True,
    ) -> tuple[Callable[..., Any] | None, Lookup]:
        """The loaded callable (reported as a hit), or ``None`` and why it missed.  (The
        title is this graph's: a lookup never parses the stored summary.)  With ``count``
        false the caller counts the hit or miss (``EntryStore.count_lookup``)."""
        start = time.perf_counter()
        found = self.cache.lookup_detailed(key, warn=False, count=count)
        reject = self.cache.reject if count else (lambda key, reason: None)
        loaded = found.entry
        if loaded is None:
            return None, found
        try:
            graph = CompiledGraph.from_loaded(loaded)
            lifted = rebuild.lifted_inputs(gm)
            if not graph.guards_hold([*lifted, *example_inputs]):
                reject(key, "guards")
                return None, Lookup(None, "guards", "the entry's shape guards reject these inputs")
            compiled = graph.load(example_inputs, cudagraphs=torch_settings.cudagraphs_enabled(), lifted=lifted)
        except ArtcacheError as exc:
            error: ArtcacheError = exc
        except Exception as exc:  # noqa: BLE001 - the rebuild boundary (artcache.entries docstring)
            # Rebuilding decodes stored bytes and runs torch's post-compile code on them;
            # whatever it raises (a RuntimeError from torch, MemoryError, RecursionError),
            # the user's compile must go on (compile and overwrite the entry).  Strict mode
            # re-raises through degrade(), so tests still see every failure.
            error = CorruptEntryError(f"entry {key[:16]} could not be rebuilt: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        else:
            load_s = time.perf_counter() - start
            self.cache.record_hit(loaded, load_s)
            self._report_hit(loaded, title, load_s, waited_s)
            return compiled, found
        self.cache.degrade("load", error, warn=False)  # reported in the graph's one line
        reject(key, "unloadable")
        return None, Lookup(None, "unloadable", str(error))

    def _report_hit(self, loaded: LoadedEntry, title: str, load_s: float, waited_s: float | None) -> None:
        manifest = loaded.manifest
        saved_s = max(0.0, manifest.compile_seconds - load_s)
        waited = f" after waiting {waited_s:.1f} s for another process" if waited_s is not None else ""
        log.info("artcache: hit %s %s: loaded in %.2f s%s, %.1f s saved", manifest.key[:12], title, load_s,
                 waited, saved_s)
        torch_logs.count("hit")
        torch_logs.trace("hit", {"key": manifest.key, "title": title, "load_seconds": round(load_s, 4),
                                 "saved_seconds": round(saved_s, 3), "waited_seconds": waited_s})

    def _save(
        self,
        key: keys.CacheKey,
        graph: CompiledGraph,
        gm: torch.fx.GraphModule,
        specs: list[str],
        values: dict[str, Any],
        compile_s: float,
    ) -> None:
        """Save the entry; what happened, for the graph's line: "saved", or why not."""
        try:
            blobs = graph.to_blobs()
            summary = graph.summary(gm, specs)
        except Uncacheable as exc:
            self.cache.record_uncacheable(exc.reason)
            torch_logs.count("uncacheable", f"uncacheable_{exc.reason}")
            return f"not saved: uncacheable ({exc})"
        except Exception as exc:  # noqa: BLE001 - the compile succeeded; never lose it to a save bug
            self.cache.record_uncacheable("serializer-error")
            self.cache.degrade("save", CorruptEntryError(f"cannot serialize: {type(exc).__name__}: {exc}"))
            torch_logs.count("uncacheable", "uncacheable_serializer-error")
            return "not saved: uncacheable (serializer-error)"
        summary[SummaryKey.COMPILE_SECONDS] = round(compile_s, 3)
        summary[SummaryKey.FACTOR_VALUES] = values
        environment = self.fingerprint([])
        manifest = self.cache.save(key.key, blobs, factors=key.digests(), environment=environment, summary=summary)
        return "saved" if manifest is not None else "not saved (the store did not take it; see the warning above)"

    def _uncacheable(
        self, exc: Uncacheable, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], title: str
    ) -> Callable[..., Any]:
        self.cache.record_uncacheable(exc.reason)
        start = time.perf_counter()
        compiled = torch_settings.compile_fx(gm, example_inputs)
        compile_s = time.perf_counter() - start
        log.info("artcache: uncacheable (%s) - %s: compiled in %.1f s without the cache%s", exc.reason, title,
                 compile_s, f" ({exc.detail})" if exc.detail else "")
        torch_logs.count("uncacheable", f"uncacheable_{exc.reason}")
        torch_logs.trace("uncacheable", {"reason": exc.reason, "detail": exc.detail, "title": title,
                                         "compile_seconds": round(compile_s, 3)})
        return compiled


def artcache_backend(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    mode: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Callable[..., Any]:
    """``torch.compile(backend="artcache")``: an entry store configured from the environment.

    A bad setting is one warning naming it (``EntryStore``): a store URL that cannot be
    opened (unwritable directory, unknown option, missing extra) leaves out that tier, any
    other bad value turns the cache off, and the graph is compiled either way, unless
    ``ARTCACHE_STRICT=1``.
    """
    settings = settings_from_env()
    try:
        cache = EntryStore(settings=settings)
    except StoreError as exc:
        if settings.strict:
            raise
        log.warning("artcache: cannot open the store, compiling without the cache: %s", exc)
        with torch_settings.inductor_config_patch(torch_settings.mode_options(mode, options)):
            return torch_settings.compile_fx(gm, example_inputs)
    return ArtcacheBackend(cache, mode=mode, options=options)(gm, example_inputs)


def _precompile_decision(kwargs: dict[str, Any]) -> Callable[[Any, Any], None] | None:
    """Called by ``torch.compile`` (through :mod:`artcache._torch.precompile_hook`) with the
    arguments it passes to Dynamo: for an artcache backend with precompile on, the backend
    becomes a recording one and the returned function attaches the precompile tier to the
    function compiled (:mod:`artcache.frame_hook`); anything else is left alone."""
    found = precompile_hook.compile_wrapper_backend(kwargs.get("backend"))
    if found is None:
        return None
    compiler, extra = found
    if compiler is artcache_backend:
        settings = settings_from_env()
        options = dict(extra.get("options") or {})
        wanted = options.get("precompile")
        if not (settings.precompile if wanted is None else wanted) or settings.disabled:
            return None
        try:
            cache = EntryStore(settings=settings)
        except StoreError:
            return None  # the backend warns (or raises in strict mode) at its first graph
        if cache.settings.disabled:  # a setting it could not use turned it off (it warned)
            return None
        backend = ArtcacheBackend(cache, mode=extra.get("mode"), options=options)
    elif isinstance(compiler, ArtcacheBackend) and compiler.precompile and not compiler.cache.settings.disabled:
        backend = compiler
    else:
        return None
    recorder, attach = frame_hook.attach_function(backend.cache, backend)
    kwargs["backend"] = recorder
    kwargs["guard_filter_fn"] = _RecordingGuardFilter(recorder, kwargs.get("guard_filter_fn"))
    return attach


class _RecordingGuardFilter:
    """The guard filter Dynamo gets with precompile on: the recorder reads every guard of
    a frame it records, and the user's filter (if any) decides what is kept.  Torch builds
    a frame's guards twice whenever a filter is set (once to show them to it), testing the
    filter's truth (torch 2.13: ``if guard_filter_fn:`` in ``CheckFunctionManager``):
    this one is false while nothing is recorded and the user gave none, so a compile that
    records nothing (a failed guard's fallback, a recompile) builds its guards once."""

    def __init__(self, recorder: Any, user: Callable[[Any], Any] | None) -> None:
        self._recorder = recorder
        self._user = user

    def __bool__(self) -> bool:
        return self._user is not None or bool(self._recorder.recording)

    def __call__(self, entries: Any) -> Any:
        kept = self._recorder.guard_filter(entries)
        return self._user(entries) if self._user is not None else kept


# torch.compile imports this module (the entry point) before it calls Dynamo: from then on
# an artcache backend with precompile on gets the precompile tier.
_HOOK_INSTALLED = precompile_hook.install_compile_patch(_precompile_decision)
