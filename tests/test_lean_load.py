"""The lean hit path's source rewrite and its refusals (artcache/_lean_load.py).

Whole warm starts through it are proven in fresh processes by test_warm_start.py (the
corpus, bitwise against cold, with Inductor's compiler never imported); these tests pin
down each condition under which the wrapper is left as torch wrote it.
"""

from __future__ import annotations

import sys

import pytest
import torch

from artcache import _lean_load as lean

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
    ],
)
def test_source_kept_as_torch_wrote_it(body: str, refs: dict[str, tuple[str, str]]) -> None:
    assert lean.lighten_source(_source(body), refs) is None


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


def test_capture_records_nothing_without_select_algorithm(monkeypatch: pytest.MonkeyPatch) -> None:
    # A process that never compiled has no registry to read, and must not import one.
    monkeypatch.delitem(sys.modules, "torch._inductor.select_algorithm")
    assert lean.extern_kernel_refs([_source("extern_kernels.addmm(a, b, c)")]) == {}
    assert "torch._inductor.select_algorithm" not in sys.modules
