"""The precompile tier behind ``torch.compile``: ``torch.compile(fn, backend="artcache",
options={"precompile": True})``, ``ARTCACHE_PRECOMPILE=1``, or a backend from
``Cache.backend(options={"precompile": True})``.

When ``torch.compile`` is called (before the first call), :class:`CompileHook` puts a
*precompile entry* on the code of the frame Dynamo would trace (``fn``'s, a module's
``forward``, or torch's inline wrapper for torch's own modules and functions, whose locals
are ``fn``, ``args`` and ``kwargs``; such a frame has its own frame key;
:mod:`artcache._torch.precompile_hook`).  Torch's eval-frame checks it at each
call of that frame, before Dynamo's own cache and before tracing, calling the hook's guard
with the frame's locals:

* only while this ``torch.compile``'s function is running (an enter hook on its context
  says so; the same code compiled elsewhere, or called eagerly, is not served);
* a frame entry already loaded whose checks all hold on these locals: the guard returns
  True, and the entry's code (the frame's own layout, its body replaced by a call of the
  hook) runs the compiled graph instead of the frame.  Dynamo does not trace;
* otherwise, once per frame key in a process: the frame entry is looked up, its guards
  evaluated on the locals, the graph entry loaded and checked (as for ``artcache.precompile``,
  :class:`~artcache.frames.FrameTier`); a hit is served as above.  Its checks are then
  also built into a tree of torch's own C++ guards (:mod:`artcache._torch.guard_tree`),
  installed ahead of this guard: later calls cost what Dynamo's guards cost, plus reading
  the graph inputs and checking their aliasing in Python (inputs that alias otherwise go
  through Dynamo);
* an absent entry: the entry's code calls the function again through the same compiled
  context with the hook declining once, so that Dynamo traces it with the recording backend;
  the frame entry is saved when the frame qualifies, else the reason is counted;
* anything else (a failed guard, an unreadable entry, an unsupported frame): the guard
  returns False and the frame goes through Dynamo as without precompile; the graphs still
  hit.  Errors in the guard are a miss with a warning (``Cache.degrade``).

A chain entry that holds *called frames* (functions its code calls that Dynamo compiled as
frames of their own, :mod:`artcache.frame_resume`) runs its code with those calls seen by
this context's callback; at its first served call each called function's code gets a
precompile entry of its own (:class:`CalledFrame`), which serves that frame while this
hook's compiled function runs and otherwise declines (Dynamo, as without precompile).

The guard and the entry's code run in one thread back to back; what the guard decided is
passed to the code through thread-local state.  A hook and its entries live as long as the
process, like the code object they are installed on.
"""

from __future__ import annotations

import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ._torch import guard_tree, precompile_hook
from .entries import EntryStore
from .errors import ArtcacheError, CorruptEntryError, Uncacheable
from .frame_entry import CONSTANTS
from .frame_replay import MISSING, Frame, Recorder
from .frame_resume import call_args
from .frames import FrameTier

log = logging.getLogger(__name__)


class _State(threading.local):
    active: Any = None  # the hook whose compiled function runs in this thread
    bypass: Any = None  # the hook whose next guard declines (a record's own call)
    pending: Any = None  # what the guard decided, for the code it let run
    called: Any = None  # what a called frame's guard decided, for its code (CalledFrame)
    declined: Any = None  # the called frame whose next guard declines (a call made again)


_state = _State()
_HOOKS: weakref.WeakSet[CompileHook] = weakref.WeakSet()


def attached() -> list[CompileHook]:
    """The hooks attached in this process (their ``replayed``, ``reasons``, ``refusals``
    say what the tier did; benchmarks and tests read them)."""
    return list(_HOOKS)


class CompileHook(FrameTier):
    """The precompile tier for one ``torch.compile`` call of ``func``'s frames."""

    def __init__(self, fn: Any, traced: tuple[Any, Any, bool], cache: EntryStore, backend: Any,
                 recorder: Recorder) -> None:
        frame_fn, code_fn, wrapped = traced
        super().__init__(code_fn, cache, backend)
        self._recorder = recorder
        recorder.recording = False
        self._wrapped = wrapped
        self.wrapped_frames = wrapped  # serve only entries recorded on the same kind of frame
        # The function whose frame is served (torch's inline wrapper around fn, or fn's own).
        self._frame_fn = frame_fn
        self._call_signature = inspect.signature(frame_fn, follow_wrapped=False)
        # How the wrapper's call binds to fn's own code (for the frame key, as the wrapper
        # artcache.precompile keys it): a module or bound method is the code's first argument.
        self._key_signature = inspect.signature(code_fn, follow_wrapped=False)
        self._key_self = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
        code = frame_fn.__code__
        self._code = code
        self._cells = dict(zip(code.co_freevars, frame_fn.__closure__ or ()))
        self._rerun: Callable[..., Any] | None = None
        self._replacement: Any = None
        self._looked_up: set[Any] = set()  # quick specs of calls already looked up
        self._trees: set[int] = set()  # ids of the replays whose checks torch's guards run
        self._tree_tried: list[Any] = []
        self.trees = 0  # loaded entries served through a guard tree (the rest: Python checks)
        self.called_replayed = 0  # calls of called frames served by their chains (CalledFrame)

    def attach(self, ctx: Any) -> None:
        """Install the precompile entry on the frame's code, for calls through ``ctx``."""
        name = f"__artcache_precompiled_{id(self):x}"
        replacement = self._replacement = precompile_hook.replacement_code(self._code, name)
        # The replacement code runs with the frame's globals: the hook's runner is one of them
        # (as Dynamo installs its compiled functions there).
        self._frame_fn.__globals__[name] = precompile_hook.disable(self._run)
        precompile_hook.add_enter_hook(ctx, self._enter)
        self._rerun = ctx(self._frame_fn)
        self._callees = precompile_hook.callees_traced(ctx)
        precompile_hook.install_entry(self._code, self._guard, replacement,
                                      f"artcache precompiled frame {self._code_fn.__qualname__}")
        _HOOKS.add(self)

    def _enter(self) -> Callable[[], None]:
        previous = _state.active
        _state.active = self

        def leave() -> None:
            _state.active = previous

        return leave

    # -- in torch's frame evaluation -------------------------------------------------------
    def _guard(self, f_locals: dict[str, Any]) -> bool:
        if _state.active is not self:
            return False
        if _state.bypass is self:
            _state.bypass = None
            return False
        try:
            return self._decide(f_locals)
        except ArtcacheError as exc:
            error: ArtcacheError = exc
        except Exception as exc:  # noqa: BLE001 - the guard boundary
            # The guard runs inside torch's frame evaluation on the user's call: whatever
            # reading the locals or the store raises, the frame goes through Dynamo
            # (strict mode raises).
            error = CorruptEntryError(f"precompiled frame {self._code_fn.__qualname__}: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        self.reasons["error"] += 1
        if self.cache.settings.strict:
            # Torch treats an exception in a guard as a failed guard: the error is raised
            # from the frame instead (strict mode raises every error).
            _state.pending = ("error", error)
            return True
        _state.pending = None
        self.cache.degrade("precompile", error)
        return False

    def _decide(self, f_locals: dict[str, Any]) -> bool:
        frame = Frame({}, f_locals) if self._wrapped else Frame(f_locals, {})
        for replay in self._replays:
            if id(replay) in self._trees:
                continue  # its guard tree, checked before this guard, did not hold
            failed, values = replay.check(frame)
            if failed is None:
                _state.pending = ("replay", (replay, values, frame))
                return True
        quick = _quick_spec(f_locals, self._wrapped)
        if quick in self._looked_up:  # Dynamo's own cache serves these calls now
            return False
        self._looked_up.add(quick)
        if self._wrapped:
            bound = self._key_signature.bind(*(() if self._key_self is None else (self._key_self,)),
                                             *f_locals["args"], **f_locals["kwargs"])
            bound.apply_defaults()
            frame = Frame(dict(bound.arguments), f_locals)
        try:
            # The wrapper's frame reads fn itself (a module, not its bound forward as the
            # wrapper artcache.precompile compiles): its own key.
            key, factors = self._frame_key(frame.direct, {"frame": "inline-wrapper"} if self._wrapped else {})
        except Uncacheable as exc:
            self.reasons[f"key-{exc.reason}"] += 1
            return False
        if key.key in self._tried:
            return False
        self._tried.add(key.key)
        replay, reason = self._load(key.key, frame)
        if replay is not None:
            self._replays.append(replay)
            failed, values = replay.check(frame)
            if failed is None:
                _state.pending = ("replay", (replay, values, frame))
                return True
            return False
        self.reasons[reason] += 1
        call = self._call_of(f_locals) if reason == "absent" else None
        if call is None:
            return False
        _state.pending = ("record", (key, factors, dict(frame.direct), call))
        return True

    def _install_tree(self, replay: Any, values: list[Any]) -> None:
        """From the next call on, check ``replay`` with torch's guards (before this hook's
        guard), when every check can be expressed so; else its Python checks go on."""

        def accept(f_locals: Any) -> bool:  # last, after every guard of the tree held
            if _state.active is not self or _state.bypass is self:
                return False
            _state.pending = ("checked", (replay, f_locals))
            return True

        if _install_tree(self._code, replay, values, accept, self._replacement):
            self._trees.add(id(replay))
            self.trees += 1

    def _run(self) -> Any:
        """What the replacement code calls: the graph of the entry the guard chose, or a
        record (the frame through Dynamo)."""
        pending, _state.pending = _state.pending, None
        if pending is None:
            raise ArtcacheError("a precompiled frame ran without its guard deciding")
        kind, what = pending
        if kind == "replay":
            self.replayed += 1
            replay, values, frame = what
            if replay not in self._tree_tried:
                # Here, not in the guard: torch iterates the code's entries while guards run.
                self._tree_tried.append(replay)
                self._install_tree(replay, values)
                for fn, called in getattr(replay, "called", ()):
                    CalledFrame(self, fn, called)
            return replay.run_frame(frame, values)
        if kind == "checked":  # a guard tree held: read the inputs, check their aliasing
            replay, f_locals = what
            ran, out = replay.run_checked(Frame({}, f_locals) if self._wrapped else Frame(f_locals, {}))
            if ran:
                self.replayed += 1
                return out
            self.reasons["inputs-alias"] += 1
            call = self._call_of(f_locals)
            if call is None:
                raise ArtcacheError("a precompiled frame cannot be called again through Dynamo")
            return self._through_dynamo(*call)
        if kind == "error":
            self.cache.degrade("precompile", what)  # raises: only strict mode gets here
            raise what
        key, factors, f_locals, (args, kwargs) = what
        return self._record(key, factors, f_locals, lambda: self._through_dynamo(args, kwargs))

    def _through_dynamo(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """The frame again, through the same compiled context, with this hook declining it
        once: Dynamo's cache or tracer serves it."""
        rerun = self._rerun
        assert rerun is not None  # set by attach() before the entry exists
        _state.bypass = self
        try:
            return rerun(*args, **kwargs)
        finally:
            _state.bypass = None

    def _call_of(self, f_locals: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]] | None:
        """The arguments of a call of ``func`` that makes this frame again; None when the
        frame is not one of ``func``'s (another closure over the same code)."""
        for name, cell in self._cells.items():
            try:
                same = cell.cell_contents is f_locals.get(name, MISSING)
            except ValueError:  # an empty cell
                same = name not in f_locals
            if not same:
                self.reasons["other-closure"] += 1
                return None
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for param in self._call_signature.parameters.values():
            if param.name not in f_locals:
                return None
            value = f_locals[param.name]
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                args.append(value)
            elif param.kind is param.VAR_POSITIONAL:
                args.extend(value)
            elif param.kind is param.KEYWORD_ONLY:
                kwargs[param.name] = value
            else:
                kwargs.update(value)
        return args, kwargs


class CalledFrame:
    """A precompile entry on the code of a function a replayed chain calls that Dynamo
    compiled as a frame of its own (``ChainEntry.called``): while the hook's compiled
    function runs, a call whose checks hold runs the called frame's chain (its graph loaded
    at the first such call); any other call goes through Dynamo (its graphs still hit)."""

    def __init__(self, hook: CompileHook, fn: Any, replay: Any) -> None:
        self._hook = hook
        self._replay = replay
        self._code = fn.__code__
        self._loaded: bool | None = None  # the graph: not tried yet, loaded, or unloadable
        self._tree_tried = False
        self._fn = fn
        name = f"__artcache_called_{id(self):x}"
        self._replacement = precompile_hook.replacement_code(self._code, name)
        fn.__globals__[name] = precompile_hook.disable(self._run)
        precompile_hook.install_entry(self._code, self._guard, self._replacement,
                                      f"artcache precompiled called frame {fn.__qualname__}")

    def _guard(self, f_locals: dict[str, Any]) -> bool:
        if _state.declined is self:
            _state.declined = None
            return False
        if _state.active is not self._hook or _state.bypass is self._hook or self._loaded is False:
            return False
        error: ArtcacheError | None = None
        try:
            frame = Frame(f_locals, {})
            failed, values = self._replay.check(frame)
            if failed is None and self._loaded is None:
                inputs = [values[at] for at in self._replay.inputs]
                self._replay.compiled = self._hook._load_graph(self._replay.chain.steps[0].frame, inputs)
                self._loaded = self._replay.compiled is not None
                if not self._loaded:
                    self._hook.reasons["called-graph"] += 1
                    return False
        except ArtcacheError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - the guard boundary (CompileHook._guard)
            error = CorruptEntryError(f"precompiled called frame: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        if error is not None:
            self._loaded = False  # this frame is Dynamo's from now on
            self._hook.reasons["error"] += 1
            if self._hook.cache.settings.strict:  # raised from the frame (a guard's error is a failed guard)
                _state.called = (self, error, None)
                return True
            self._hook.cache.degrade("precompile", error)
            return False
        if failed is not None:
            self._hook.reasons["called-guards"] += 1
            return False
        _state.called = (self, frame, values)
        return True

    def _run(self) -> Any:
        pending, _state.called = _state.called, None
        if pending is None or pending[0] is not self:
            raise ArtcacheError("a precompiled called frame ran without its guard deciding")
        _, frame, values = pending
        if isinstance(frame, ArtcacheError):
            self._hook.cache.degrade("precompile", frame)  # raises: only strict mode gets here
            raise frame
        if values is None:  # the guard tree held: the inputs' aliasing is left to check
            ran, out = self._replay.run_checked(frame)
            if not ran:  # inputs alias as the record's did not: the frame again, through Dynamo
                self._hook.reasons["called-inputs-alias"] += 1
                return self._through_dynamo(frame)
        else:
            if not self._tree_tried:  # here, not in the guard: torch iterates the entries then
                self._tree_tried = True
                self._install_tree(values)
            out = self._replay.run_frame(frame, values)
        self._hook.called_replayed += 1
        return out

    def _install_tree(self, values: list[Any]) -> None:
        """From the next call on, the replay's checks as a tree of torch's guards, ahead of
        this entry's Python guard (when every check can be expressed so)."""
        replay = self._replay

        def accept(f_locals: Any) -> bool:  # last, after every guard of the tree held
            if _state.active is not self._hook or _state.bypass is self._hook or _state.declined is self:
                return False
            _state.called = (self, Frame(f_locals, {}), None)
            return True

        if _install_tree(self._code, replay, values, accept, self._replacement):
            self._hook.trees += 1

    def _through_dynamo(self, frame: Frame) -> Any:
        """The called frame's function again, as a frame Dynamo traces (its code's own
        entries declined once, as the hook's record does)."""
        args, kwargs = call_args(self._code, frame.direct)
        _state.declined = self
        assert self._hook._callees is not None  # a called frame is served only with it
        return self._hook._callees(self._fn)(*args, **kwargs)


def _install_tree(code: Any, replay: Any, values: list[Any], accept: Callable[[Any], bool], replacement: Any) -> bool:
    """Install ``replay``'s checks, as they held on ``values``, as a tree of torch's guards
    on ``code`` (ending in ``accept``), ahead of the deciding guards; False when a check
    cannot be expressed so (its Python checks go on)."""
    built = guard_tree.build(code, replay.f_globals, replay.nodes, values, replay.checks, accept,
                             replay.distinct_inputs)
    if built is None:
        return False
    manager, replay.tree_keep = built
    replay.tree_aliasing = bool(replay.distinct_inputs)
    precompile_hook.install_tree(code, manager, replacement)
    return True


def _quick_spec(f_locals: Mapping[str, Any], wrapped: bool) -> tuple[Any, ...]:
    """A cheap stand-in for a call's frame key, to look each key up once per process: two
    calls with the same quick spec have the same frame key unless a module was changed in
    place (then the store is not asked again: the call goes through Dynamo, still right).
    The wrapper frame's arguments are read from its ``args`` and ``kwargs``."""
    spec: list[Any] = []
    items = f_locals.items()
    if wrapped:
        items = [("fn", f_locals["fn"]), *enumerate(f_locals["args"]), *f_locals["kwargs"].items()]
    for name, value in items:
        if isinstance(value, torch.Tensor):
            spec.append((name, value.dtype, value.shape, value.device, value.requires_grad))
        elif isinstance(value, torch.nn.Module):
            spec.append((name, id(value), value.training))
        elif type(value) in CONSTANTS:
            spec.append((name, type(value), value))
        else:
            spec.append((name, type(value)))
    return tuple(spec)


def attach_function(cache: EntryStore, backend: Any) -> tuple[Recorder, Callable[[Any, Any], None]]:
    """The recording backend to hand Dynamo, and the function that attaches a hook to the
    context ``torch.compile`` makes for ``fn`` (nothing for a builtin or a generator)."""
    recorder = Recorder(backend)
    recorder.recording = False

    def attach(ctx: Any, fn: Any) -> None:
        traced = precompile_hook.traced_frame(fn)
        if traced is None:
            log.info("artcache: %r is compiled without precompile (no Python frame of its own)", type(fn).__name__)
            return
        CompileHook(fn, traced, cache, backend, recorder).attach(ctx)

    return recorder, attach
