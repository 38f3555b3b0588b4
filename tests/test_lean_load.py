"""The lean hit path's source rewrite and its refusals (artcache/_lean_load.py).

Whole warm starts through it are proven in fresh processes by test_warm_start.py (the
corpus, bitwise against cold, with Inductor's compiler never imported); these tests pin
down each condition under which the wrapper is left as torch wrote it.
"""

from __future__ import annotations

import sys

import pytest
import torch

from artcache._torch import lean_load as lean

# Imported here on purpose: capture runs in a compiling process, where it always is.
import torch._inductor.select_algorithm  # noqa: F401  isort: skip

HEADER = "\n".join([
    "import torch",
    lean.ALIGN_IMPORT,
    lean.EXTERN_IMPORT,
    "aten = torch.ops.aten",
    "inductor_ops = torch.ops.inductor",
])


def _source(body: str) -> str:
    return HEADER + "\n\ndef call(args):\n" + "\n".join("    " + line for line in body.splitlines()) + "\n"


def test_refs_are_the_registered_objects() -> None:
    source = _source("extern_kernels.addmm(a, b, c, out=d)\nextern_kernels.bmm(a, b, out=c)\nextern_kernels.convolution(x, w)")
    refs = lean.extern_kernel_refs([source])
    assert set(refs) == {"addmm", "bmm", "convolution"}
    namespace = torch._inductor.select_algorithm.extern_kernels
    for name, (module, path) in refs.items():
        assert module == "torch" or module.startswith("torch.")
        assert lean._resolve(module, path) is getattr(namespace, name)


def test_unregistered_name_gets_no_ref() -> None:
    assert lean.extern_kernel_refs([_source("extern_kernels.no_such_kernel_anywhere(a)")]) == {}


def test_lightened_source_builds_the_same_namespace_line_for_line() -> None:
    source = _source("buf = extern_kernels.addmm(a, b, c)\nreturn aten.relu(buf)")
    refs = lean.extern_kernel_refs([source])
    lightened = lean.lighten_source(source, refs)
    assert lightened is not None
    assert lean.EXTERN_IMPORT not in lightened and lean.ALIGN_IMPORT not in lightened
    assert len(lightened.split("\n")) == len(source.split("\n"))  # the line map stays right
    namespace: dict[str, object] = {}
    exec(compile(lightened, "<lightened>", "exec"), namespace)  # our own generated text
    assert namespace["extern_kernels"].addmm is torch.addmm  # type: ignore[attr-defined]
    assert "align" not in namespace


@pytest.mark.parametrize(
    "body,refs",
    [
        ("extern_kernels.addmm(a, b, c)", {}),  # a used name without a reference
        ("extern_kernels.addmm(a, b, c)", {"addmm": ("os", "system")}),  # outside torch: never imported
        ("extern_kernels.addmm(a, b, c)", {"addmm": ("torch", "no_such_attribute")}),  # does not resolve
        ("extern_kernels.addmm(a, b, c)", {"addmm": ("torch", "float32")}),  # resolves, not callable
        ("f(extern_kernels)", {}),  # the namespace itself used
        ("torch.ops.artcache_nowhere.op.default(a)", {}),  # an operator nobody registered
        ("inductor_ops.artcache_no_such_op(a)", {}),  # the same, through the wrapper's alias
        ("y = torch.ops.artcache_nowhere.op.default(a)  # a call with a comment after it", {}),
    ],
)
def test_source_kept_as_torch_wrote_it(body: str, refs: dict[str, tuple[str, str]]) -> None:
    assert lean.lighten_source(_source(body), refs) is None


def test_an_operator_named_only_in_a_comment_line_is_not_needed() -> None:
    """Inductor annotates kernels with the FX nodes they came from; an operator named only
    there (one Inductor's own modules register) is not called, and the source is lightened."""
    body = ("# %op : [num_users=1] = call_function[target=torch.ops.artcache_nowhere.op.default](args = (%a,))\n"
            "    # torch.ops.artcache_nowhere.other.default\n"
            "buf = extern_kernels.addmm(a, b, c)")
    source = _source(body)
    assert lean.lighten_source(source, lean.extern_kernel_refs([source])) is not None


def test_import_line_must_be_there_once() -> None:
    assert lean.lighten_source(_source("pass").replace(lean.EXTERN_IMPORT, ""), {}) is None
    twice = _source("pass").replace(lean.EXTERN_IMPORT, lean.EXTERN_IMPORT + "\n" + lean.EXTERN_IMPORT)
    assert lean.lighten_source(twice, {}) is None


def test_align_import_kept_when_align_is_used() -> None:
    lightened = lean.lighten_source(_source("n = align(64)"), {})
    assert lightened is not None and lean.ALIGN_IMPORT in lightened and lean.EXTERN_IMPORT not in lightened


def test_namespace_refuses_a_reference_that_does_not_resolve() -> None:
    with pytest.raises(ImportError):
        lean.kernel_namespace((("addmm", "torch", "no_such_attribute"),))


def test_post_compile_variant_exists_on_checked_torch() -> None:
    """On the torch CI runs, torch's source has the expected text, so the lean variant is
    built (and used by every corpus hit); on an unchecked version nothing applies."""
    assert lean.applies(), torch.__version__
    variant = lean._post_compile_without_graph_import()
    assert variant is not None
    from torch._inductor.codecache import FxGraphCache

    original = FxGraphCache.__dict__["cache_hit_post_compile"].__func__
    assert variant.__code__.co_filename == original.__code__.co_filename
    assert variant.__code__.co_firstlineno == original.__code__.co_firstlineno  # tracebacks: torch's lines
    assert variant.__globals__ is original.__globals__


def test_nothing_applies_on_an_unchecked_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    assert not lean.applies()
    with lean.hit_post_compile() as used:
        assert used is False

    class Graph:
        source_code = _source("pass")

    assert lean.lighten(Graph(), {}) is False
    graph = _bare_graph()
    assert lean.lean_call(graph) is False and type(graph).__module__ == "torch._inductor.output_code"


def test_capture_records_nothing_without_select_algorithm(monkeypatch: pytest.MonkeyPatch) -> None:
    # A process that never compiled has no registry to read, and must not import one.
    monkeypatch.delitem(sys.modules, "torch._inductor.select_algorithm")
    assert lean.extern_kernel_refs([_source("extern_kernels.addmm(a, b, c)")]) == {}
    assert "torch._inductor.select_algorithm" not in sys.modules


# -- CompiledFxGraph.__call__ without torch._inductor.debug (point 3) -------------------------
def _bare_graph() -> object:
    """A CompiledFxGraph with just what ``__call__`` reads (building a real one compiles)."""
    from torch._inductor.output_code import CompiledFxGraph

    graph = CompiledFxGraph.__new__(CompiledFxGraph)
    graph.current_callable = lambda inputs: [x * 2 for x in inputs]
    graph.fx_kwargs = {"graph_id": 7}
    graph._compile_context = None
    graph._fx_graph_cache_key = "k"
    return graph


def test_call_variant_exists_on_checked_torch() -> None:
    from torch._inductor.output_code import CompiledFxGraph

    cls = lean._lean_call_class()
    assert cls is not None and issubclass(cls, CompiledFxGraph)
    original = CompiledFxGraph.__dict__["__call__"]
    assert cls.__call__.__code__.co_firstlineno == original.__code__.co_firstlineno
    assert cls.__call__.__globals__ is original.__globals__


def test_lean_call_records_execution_like_torch_when_debug_is_loaded() -> None:
    from torch._inductor import debug
    from torch._inductor.output_code import CompiledFxGraph

    lean_graph, torch_graph = _bare_graph(), _bare_graph()
    assert lean.lean_call(lean_graph) and isinstance(lean_graph, CompiledFxGraph)
    assert type(lean_graph) is not CompiledFxGraph and type(torch_graph) is CompiledFxGraph
    orders = []
    for graph in (lean_graph, torch_graph):
        with debug.record_and_log_graph_execution_order():
            debug.GRAPH_COMPILE_IDS[7] = "0/1"
            assert graph([1, 2]) == [2, 4]
            orders.append(list(debug.GRAPH_EXECUTION_ORDER))
    assert orders[0] == orders[1] == [{"compile_id": "0/1"}]


def test_lean_call_runs_without_debug_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor

    graph, plain = _bare_graph(), _bare_graph()
    assert lean.lean_call(graph)
    monkeypatch.delitem(sys.modules, "torch._inductor.debug", raising=False)
    monkeypatch.delattr(torch._inductor, "debug", raising=False)
    assert graph([3]) == [6]
    assert "torch._inductor.debug" not in sys.modules
    with pytest.raises(AttributeError):  # torch's own __call__ needs the module (why point 3 exists)
        plain([3])


def test_lean_call_refuses_other_types_and_other_text() -> None:
    class NotAGraph:
        pass

    thing = NotAGraph()
    assert not lean.lean_call(thing) and type(thing) is NotAGraph
    flag = "        torch._inductor.debug.RECORD_GRAPH_EXECUTION"
    body = "def __call__(self, inputs):\n    if (\n" + flag + "\n    ):\n        pass\n"
    assert lean._without_debug_import(body) is None  # one read where torch has five
    assert lean._without_debug_import("def __call__(self, inputs):\n    return 1\n") is None


@pytest.mark.parametrize("text", [
    "extern_kernels.a(x)\nmy_extern_kernels.b\n(extern_kernels.c, q.extern_kernels.d)\n2extern_kernels.e",
    "aten.mm(aten.add(x)) + xaten.sub + _aten.mul\naten.bmm",
    "",
])
def test_word_matches_equal_a_leading_word_boundary(text: str) -> None:
    import re

    for pattern in (lean._EXTERN_USE, lean._EXTERN_ANY, lean._OP_USE, re.compile(r"aten\.([A-Za-z_]\w*)")):
        assert lean._words(pattern, text) == re.findall(r"\b" + pattern.pattern, text)
