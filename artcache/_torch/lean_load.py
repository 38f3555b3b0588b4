"""A warm start without Inductor's compiler: the places a hit would import it, avoided.

Importing ``torch._inductor.graph`` or ``torch._inductor.select_algorithm`` imports
Inductor's lowering, its kernel templates and most of its code generator: a large part of a
warm first call (``benchmarks/profile_first_call.py`` measures it).  A compiling process has
all of it already; running a compiled graph needs none of it.  torch's own warm start pays it, because its cache-hit path is written for a process
that may compile.  A hit reaches it three times, and this module removes each, only where
it can show that nothing else changes:

1. **The generated wrapper** starts with::

       from torch._inductor.codegen.memory_planning import _align as align
       from torch._inductor.select_algorithm import extern_kernels

   and uses ``extern_kernels`` only as a namespace of callables (``extern_kernels.addmm(...,
   out=buf0)``) that ``ExternKernelChoice`` fills while Inductor's kernel modules import.
   At capture (a compiling process, where that namespace is full) each name the source uses
   is recorded as the import path of the very object torch registered under it
   (:func:`extern_kernel_refs`; accepted only when resolving the path gives back that object).
   On a hit, :func:`lighten` replaces the import line by one that builds the same namespace
   from those paths when all of these hold, and otherwise leaves the source as torch wrote it:

   - the line is there exactly once, and ``extern_kernels`` is used only as ``extern_kernels.X``;
   - every such ``X`` has a reference, and every reference resolves again, to a callable;
   - every ``torch.ops`` operator the source names outside comment lines (directly or
     through the wrapper's ``aten = torch.ops.aten``-style aliases) is registered already:
     some are registered by modules that the skipped import would have loaded.

   The ``align`` import (``memory_planning``) is dropped only when the name occurs nowhere
   else in the source.  Lines are replaced one for one, so the graph's line map (tracebacks
   to FX nodes) stays right.  The lightened source gets its own ``cache_key`` (torch's hash of
   the text, from ``PyCodeCache.write``), so its module file never stands in for torch's
   original.  References name modules under ``torch`` only: an entry can make the loader
   import nothing else.

2. **``FxGraphCache.cache_hit_post_compile``** (run for every loaded graph) ends with
   ``from .graph import GraphLowering`` only to call a test hook,
   ``GraphLowering.save_output_code``, when one is set.  While ``torch._inductor.graph`` is
   not imported nobody can have set it, so :func:`hit_post_compile` returns torch's function
   rebuilt from torch's own source with that import made conditional on the module being
   loaded already: every other step (Triton bundle, autotune-cache bundler, metrics, the
   module load, logging) stays torch's code.  When the source is unavailable or differs
   from the expected text, torch's function is used unchanged.

3. **``CompiledFxGraph.__call__``** reads ``torch._inductor.debug.RECORD_GRAPH_EXECUTION``
   (a recorder that only ``debug``'s own context manager turns on) as an attribute of the
   package, which exists only once something imported that module, and importing it
   imports Inductor's IR and scheduler.  :func:`lean_call` swaps
   each loaded graph's class for a subclass whose only addition is torch's ``__call__``
   rebuilt the same way as in point 2, with the flag read only once the module is loaded:
   with it unloaded the recorder cannot be on.  Where that cannot be done,
   :func:`runtime_imports` imports the module instead.

None applies to a graph with a kernel that torch rebuilds through ``triton.compile`` (no
static launcher): the lean load has not been shown right for such kernels on a GPU
(``tests/gpu``, case ``nonstatic``, runs them by torch's path), so such a graph loads by
torch's own path (``CompiledGraph.load``).
All three apply only on the torch versions whose runtime was checked to need nothing else
from those imports (:data:`CHECKED_TORCH`).  On any other version a hit imports what torch's
path imports.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import re
import sys
import textwrap
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

EXTERN_IMPORT = "from torch._inductor.select_algorithm import extern_kernels"
ALIGN_IMPORT = "from torch._inductor.codegen.memory_planning import _align as align"

# Each of these is matched only where a word starts (see _words): written without a leading
# \b so that re can search for the literal they begin with.
_EXTERN_USE = re.compile(r"extern_kernels\.([A-Za-z_]\w*)")
_EXTERN_ANY = re.compile(r"extern_kernels\b")
_ALIGN_ANY = re.compile(r"align\b")
_OP_USE = re.compile(r"torch\.ops\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)")
_WORD_CHAR = re.compile(r"\w")
_OP_ALIAS = re.compile(r"^([A-Za-z_]\w*) = torch\.ops\.([A-Za-z_]\w*)$", re.MULTILINE)
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

Ref = tuple[str, str]  # (module, attribute path inside it)

# torch releases (major.minor) on which a hit was checked to run with neither import: the
# CPU corpus on 2.13 (CI), the GPU cases on 2.11 (tests/gpu).
CHECKED_TORCH = frozenset({"2.11", "2.13"})


def applies() -> bool:
    """Whether this torch is one the lean hit path was checked on."""
    import torch

    return ".".join(torch.__version__.split(".")[:2]) in CHECKED_TORCH


def runtime_imports() -> None:
    """What running a loaded graph with torch's own ``__call__`` needs that the skipped
    imports would bring in (point 3)."""
    importlib.import_module("torch._inductor.debug")


# -- capture ------------------------------------------------------------------------------
def extern_kernel_refs(sources: Iterable[str]) -> dict[str, Ref]:
    """``{name: (module, path)}`` for every ``extern_kernels.<name>`` in ``sources`` whose
    registered callable is reachable by an import path under ``torch``.  A name without
    one is left out, which keeps its graph's import as it is on a hit."""
    names = sorted({name for source in sources for name in _words(_EXTERN_USE, source)})
    # Read, never imported: in a compiling process Inductor loaded it; anywhere else there is
    # nothing to record, and importing it here would cost what this module saves.
    select_algorithm = sys.modules.get("torch._inductor.select_algorithm")
    if not names or select_algorithm is None:
        return {}
    namespace = select_algorithm.extern_kernels
    refs: dict[str, Ref] = {}
    for name in names:
        obj = getattr(namespace, name, None)
        ref = _reference(obj) if obj is not None else None
        if ref is not None:
            refs[name] = ref
        else:
            log.debug("artcache: extern kernel %s (%r) has no import path; its graph keeps the import", name, obj)
    return refs


def _reference(obj: Any) -> Ref | None:
    for module, path in _candidates(obj):
        if isinstance(module, str) and isinstance(path, str) and _resolve(module, path) is obj:
            return module, path
    return None


def _candidates(obj: Any) -> list[tuple[Any, Any]]:
    import torch

    if isinstance(obj, torch._ops.OpOverload):
        return [("torch", f"ops.{obj.namespace}.{obj._opname}.{obj._overloadname}")]
    if isinstance(obj, torch._ops.OpOverloadPacket):
        namespace, _, name = obj._qualified_op_name.partition("::")
        return [("torch", f"ops.{namespace}.{name}")]
    module = getattr(obj, "__module__", None)
    # torch.addmm's __qualname__ is "_VariableFunctionsClass.addmm"; its __name__ finds it.
    return [(module, getattr(obj, "__qualname__", None)), (module, getattr(obj, "__name__", None))]


def _resolve(module: str, path: str) -> Any:
    """The object at ``module``.``path``, or None.  Imports ``module`` (under torch only)."""
    if not (module == "torch" or module.startswith("torch.")) or not _DOTTED.fullmatch(module) or not _DOTTED.fullmatch(path):
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):  # torch.ops raises AttributeError for an unknown op
        return None
    return obj


# -- load ---------------------------------------------------------------------------------
def kernel_namespace(refs: tuple[tuple[str, str, str], ...]) -> types.SimpleNamespace:
    """Called by a lightened wrapper at import: the ``extern_kernels`` it uses."""
    kernels = {}
    for name, module, path in refs:
        obj = _resolve(module, path)
        if not callable(obj):
            raise ImportError(f"artcache: extern kernel {name} ({module}:{path}) is not importable")  # noqa: TRY004 - an import that failed
        kernels[name] = obj
    return types.SimpleNamespace(**kernels)


def lighten_source(source: str, refs: Mapping[str, Ref]) -> str | None:
    """``source`` with the imports it does not need replaced, or None to keep it as it is."""
    lines = source.split("\n")
    extern_at = [i for i, line in enumerate(lines) if line == EXTERN_IMPORT]
    if len(extern_at) != 1:
        return _kept(f"{len(extern_at)} extern_kernels import lines")
    uses = _words(_EXTERN_USE, source)
    used = sorted(set(uses))
    if len(_words(_EXTERN_ANY, source)) != 1 + len(uses):
        return _kept("extern_kernels is used otherwise than by attribute")  # the namespace passed around
    missing = [name for name in used if name not in refs]
    if missing:
        return _kept(f"extern kernels without a stored reference: {missing[:3]}")
    needed = tuple((name, *refs[name]) for name in used)
    unresolved = [name for name, module, path in needed if not callable(_resolve(module, path))]
    if unresolved:
        return _kept(f"extern kernels not found by name here: {unresolved[:3]}")
    if not _ops_registered(source):
        return None
    lines[extern_at[0]] = (
        "from artcache._torch.lean_load import kernel_namespace as _artcache_kernel_namespace; "
        f"extern_kernels = _artcache_kernel_namespace({needed!r})"
    )
    align_at = [i for i, line in enumerate(lines) if line == ALIGN_IMPORT]
    if len(align_at) == 1 and len(_words(_ALIGN_ANY, source)) == 1:
        lines[align_at[0]] = ""
    return "\n".join(lines)


def _kept(why: str) -> None:
    log.debug("artcache: a wrapper keeps its imports: %s", why)


def _ops_registered(source: str) -> bool:
    import torch

    # Comment lines name operators that nothing calls: Inductor annotates kernels with the
    # FX nodes they came from (``call_function[target=torch.ops.prims.X.default]``), ops
    # that may be registered only by Inductor's own modules.  A call is never on one.
    source = "\n".join(line for line in source.split("\n") if not line.lstrip().startswith("#"))
    aliases = dict(_OP_ALIAS.findall(source))
    used = set(_words(_OP_USE, source))
    for alias, namespace in aliases.items():
        used |= {(namespace, op) for op in _words(re.compile(rf"{re.escape(alias)}\.([A-Za-z_]\w*)"), source)}
    for namespace, op in sorted(used):
        try:
            getattr(getattr(torch.ops, namespace), op)
        except AttributeError:
            log.debug("artcache: torch.ops.%s.%s not registered yet; the wrapper keeps its imports", namespace, op)
            return False
    return True


def _words(pattern: re.Pattern[str], source: str) -> list[Any]:
    """``pattern.findall(source)``, keeping only matches that start a word, as a leading
    ``\\b`` would.  Why not ``\\b``: a pattern that starts with it makes ``re`` try every
    position of the text, where one that starts with a literal is found by a fast search
    (much faster on the large wrappers of training graphs)."""
    return [
        match.groups() if pattern.groups > 1 else match.group(pattern.groups)
        for match in pattern.finditer(source)
        if match.start() == 0 or not _WORD_CHAR.match(source, match.start() - 1)
    ]


def lighten(graph: Any, refs: Mapping[str, Ref]) -> bool:
    """Lighten one ``CompiledFxGraph`` (freshly deserialized, so this process's own) in
    place before torch loads its module.  True when its source changed."""
    source = getattr(graph, "source_code", None)
    if not isinstance(source, str) or not applies():
        return False
    lightened = lighten_source(source, refs)
    if lightened is None:
        return False
    # Reaches into torch: CompiledFxGraph.write_to_disk names the module file by cache_key,
    # which torch sets to the hash of the source (PyCodeCache.write), so the key must follow
    # the text, or an existing file of the original source would be loaded instead (or ours
    # found later by torch under the original's key).
    from torch._inductor.codecache import PyCodeCache

    write = getattr(PyCodeCache, "write", None)
    if write is None:
        return False
    key, _ = write(lightened)
    graph.source_code = lightened
    graph.cache_key = key
    return True


# -- FxGraphCache.cache_hit_post_compile ----------------------------------------------------
_HOOK_IMPORT = re.compile(r"^(?P<indent>[ ]+)from \.graph import GraphLowering$", re.MULTILINE)
_HOOK_TEST = re.compile(r"^(?P<indent>[ ]+)if GraphLowering\.save_output_code is not None:$", re.MULTILINE)
# -- CompiledFxGraph.__call__ ---------------------------------------------------------------
_DEBUG_ATTR = "torch._inductor.debug."
_DEBUG_READS = 5  # torch 2.11 and 2.13: RECORD_GRAPH_EXECUTION, GRAPH_EXECUTION_ORDER x2, GRAPH_COMPILE_IDS x2
_DEBUG_FLAG = re.compile(r"^(?P<indent>[ ]+)(?P<flag>torch\._inductor\.debug\.RECORD_GRAPH_EXECUTION)$", re.MULTILINE)
_PRIVATE_NAME = re.compile(r"\b__[A-Za-z0-9]\w*(?<!__)\b")


@contextlib.contextmanager
def hit_post_compile(graphs: Iterable[Any] = (), *, enabled: bool = True) -> Iterator[bool]:
    """While entered, torch's cache-hit post-compile step runs without importing
    ``torch._inductor.graph`` (module docstring, point 2), and ``graphs`` (freshly
    deserialized ``CompiledFxGraph`` objects) run without ``torch._inductor.debug`` (point 3).
    Yields whether the post-compile step is the lean one."""
    from torch._inductor.codecache import FxGraphCache

    from .patching import patched

    lean = _post_compile_without_graph_import() if enabled and applies() else None
    if lean is None:
        yield False
        return
    if not all([lean_call(graph) for graph in graphs]):  # noqa: C419 - a list: every graph gets its try
        runtime_imports()
    # Process-wide for the length of one rebuild.  Rebuilds never interleave (Dynamo calls
    # backends under its global compile_lock), and a torch cache hit on another thread in
    # that window runs the same steps, reading the hook the same way once graph is imported.
    with patched(FxGraphCache, "cache_hit_post_compile", staticmethod(lean)):
        yield True


def lean_call(graph: Any) -> bool:
    """Give one freshly deserialized ``CompiledFxGraph`` the ``__call__`` that reads the
    graph-execution recorder only when ``torch._inductor.debug`` is loaded (point 3).  True
    when it has it; False leaves the graph as it was (then :func:`runtime_imports` runs)."""
    from torch._inductor.output_code import CompiledFxGraph

    cls = _lean_call_class() if applies() else None
    if cls is None or type(graph) is not CompiledFxGraph:
        return False
    # Reaches into torch: the class of a live instance is swapped for a subclass that adds
    # nothing but the method, so isinstance checks and every attribute stay torch's.
    graph.__class__ = cls
    return True


def _rebuilt(original: Any, rewrite: Callable[[str], str | None]) -> types.FunctionType | None:
    """torch's function ``original`` recompiled from torch's own source after ``rewrite``
    (which returns None when the text is not what it expects), with torch's globals,
    defaults and line numbers, or None when that cannot be done exactly."""
    if not isinstance(original, types.FunctionType) or original.__code__.co_freevars:
        return None  # a closure (or super()) cannot be rebuilt at module level
    try:
        source = textwrap.dedent(inspect.getsource(original))
    except (OSError, TypeError):  # no source installed
        return None
    if _PRIVATE_NAME.search(source):
        return None  # class-private names are mangled inside a class body, not at module level
    rewritten = rewrite(source)
    if rewritten is None:
        log.debug("artcache: %s is not the expected text; torch's is used", original.__qualname__)
        return None
    # Padded so tracebacks point at the real lines of torch's file.
    padding = "\n" * (original.__code__.co_firstlineno - 1)
    module_code = compile(padding + rewritten, original.__code__.co_filename, "exec", dont_inherit=True)
    codes = [c for c in module_code.co_consts if isinstance(c, types.CodeType) and c.co_name == original.__name__]
    if len(codes) != 1:
        return None
    # torch's module globals, so every other name resolves exactly as in torch's function.
    rebuilt = types.FunctionType(codes[0], original.__globals__, original.__name__, original.__defaults__)
    rebuilt.__kwdefaults__ = original.__kwdefaults__
    rebuilt.__qualname__ = original.__qualname__
    rebuilt.__doc__ = original.__doc__
    return rebuilt


@functools.cache  # a pure function of torch's installed source: derive it once per process
def _post_compile_without_graph_import() -> Callable[..., Any] | None:
    from torch._inductor.codecache import FxGraphCache

    original = getattr(FxGraphCache.__dict__.get("cache_hit_post_compile"), "__func__", None)
    return _rebuilt(original, _without_graph_import)


def _without_graph_import(source: str) -> str | None:
    imports, tests = _HOOK_IMPORT.findall(source), _HOOK_TEST.findall(source)
    if len(imports) != 1 or len(tests) != 1 or source.count("GraphLowering") != 3:
        return None
    # GraphLowering is None unless torch._inductor.graph was imported already; the hook is
    # a class attribute of it, so with the module unloaded it cannot have been set.
    source = _HOOK_IMPORT.sub(
        lambda m: m["indent"] + 'GraphLowering = getattr(__import__("sys").modules.get("torch._inductor.graph"), "GraphLowering", None)',
        source,
    )
    return _HOOK_TEST.sub(
        lambda m: m["indent"] + "if GraphLowering is not None and GraphLowering.save_output_code is not None:", source
    )


@functools.cache  # like the above: one class per process, derived from torch's source
def _lean_call_class() -> type | None:
    from torch._inductor.output_code import CompiledFxGraph

    call = _rebuilt(CompiledFxGraph.__dict__.get("__call__"), _without_debug_import)
    if call is None:
        return None
    return type(
        "CompiledFxGraph",
        (CompiledFxGraph,),
        {"__call__": call, "__module__": __name__,
         "__doc__": "torch's CompiledFxGraph whose __call__ does not need torch._inductor.debug imported."},
    )


def _without_debug_import(source: str) -> str | None:
    # Every read of the recorder sits in one `if` whose condition starts with this flag, so
    # guarding the flag guards them all; the counts make sure no read lives elsewhere.  The
    # guard asks exactly what torch's read needs, the package attribute that importing the
    # submodule sets (80 ns a call, against 1.2 us for a sys.modules lookup via __import__).
    if source.count(_DEBUG_ATTR) != _DEBUG_READS or len(_DEBUG_FLAG.findall(source)) != 1:
        return None
    return _DEBUG_FLAG.sub(
        lambda m: m["indent"] + '"debug" in torch._inductor.__dict__ and ' + m["flag"], source
    )
