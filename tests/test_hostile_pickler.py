"""The safe pickler as a boundary: a stored document can make decoding *construct* data and
*name* allowlisted callables, and nothing else.  No allowlisted callable evaluates strings,
loads libraries or touches files, neither during ``loads`` nor when a decoded object's
``__hash__``, ``__eq__``, ``__reduce_ex__`` or ``_sympy_`` runs later.

The targeted cases reproduce attacks on the allowlist as it was (each created its sentinel
file before the fix); the property test decodes random documents naming every allowlisted
name with file, library, process, import and ``eval`` functions trapped (tests/_io_tripwire.py).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import Any

import msgpack
import pytest
import sympy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artcache import pickler
from artcache._torch import triton_codec
from artcache._torch.entry_types import entry_allowlist
from artcache.errors import ArtcacheError, CorruptEntryError
from artcache.pickler.allowlist import default_allowlist
from artcache.pickler.core import Tag

from . import _io_tripwire
from .conftest import run_python


def ext(tag: Tag) -> msgpack.ExtType:
    return msgpack.ExtType(int(tag), b"")


def doc(root: Any) -> bytes:
    return pickler.MAGIC + pickler.FORMAT_VERSION.to_bytes(2, "big") + msgpack.packb([root, []], use_bin_type=True)


def fn(name: str) -> list[Any]:
    return [ext(Tag.FN), name]


def partial(name: str, *args: Any) -> list[Any]:
    return [ext(Tag.PARTIAL), fn(name), list(args), {}]


def integer(value: int) -> list[Any]:
    return [ext(Tag.SYMPY), "Integer", value]


def source_state(**extra: Any) -> dict[str, Any]:
    import torch._dynamo.source as sources

    state: dict[str, Any] = {f.name: False for f in dataclasses.fields(sources.LocalSource)}
    state.update(local_name="x", dynamism=None, **extra)
    return state


EVAL_GUARDS = "torch.fx.experimental.symbolic_shapes:ShapeEnv.evaluate_guards_expression"


def touch(sentinel: Path) -> str:
    return f"open({str(sentinel)!r}, 'w').close()"


def refused(data: bytes, sentinel: Path) -> None:
    with pytest.raises(CorruptEntryError):
        pickler.loads(data, {}, allow=entry_allowlist())
    assert not sentinel.exists()


# -- the attacks, one by one ------------------------------------------------------------------
def test_sympy_hook_planted_on_a_decoded_record_is_refused(tmp_path: Path) -> None:
    """The reviewed attack: a set holds a sympy Integer and a Dynamo Source whose restored
    state sets its cached ``_hash`` to the Integer's hash, so building the set compares
    them; sympy then calls the Source's ``_sympy_``, a partial of a ShapeEnv method that
    ``eval``s its argument."""
    sentinel = tmp_path / "sentinel"
    state = source_state(_hash=12345, _sympy_=partial(EVAL_GUARDS, None, touch(sentinel), []))
    refused(doc([ext(Tag.SET), integer(12345), [ext(Tag.OBJ), "torch._dynamo.source:LocalSource", state]]), sentinel)


def test_a_callable_hook_alone_is_refused() -> None:
    state = source_state(_sympy_=partial("torch:add", 1, 2))
    with pytest.raises(CorruptEntryError, match="undeclared"):
        pickler.loads(doc([ext(Tag.OBJ), "torch._dynamo.source:LocalSource", state]), {}, allow=entry_allowlist())


def test_a_stored_cached_hash_is_refused() -> None:
    with pytest.raises(CorruptEntryError, match="_hash"):
        pickler.loads(doc([ext(Tag.OBJ), "torch._dynamo.source:LocalSource", source_state(_hash=5)]), {},
                      allow=entry_allowlist())


def test_encoding_drops_the_cached_hash() -> None:
    import torch._dynamo.source as sources

    src = sources.LocalSource("x")
    before = pickler.dumps(src, allow=entry_allowlist()).data
    hash(src)  # caches _hash on the instance
    assert "_hash" in vars(src) and pickler.dumps(src, allow=entry_allowlist()).data == before
    assert pickler.loads(before, {}, allow=entry_allowlist()) == src


COLLIDE_SCRIPT = """
import msgpack, sys
from artcache import pickler
from artcache._torch.entry_types import entry_allowlist
from artcache.pickler.core import Tag
E = lambda t: msgpack.ExtType(int(t), b"")
code = "open(%r, 'w').close()" % sys.argv[1]
# With the hash seed known (PYTHONHASHSEED set), a writer computes the hash of a tuple of
# strings and stores a sympy Integer of the same hash: the set compares them, and sympy's
# Integer.__eq__ sympifies the tuple, parsing its strings with eval.
# Python's int hashes stay below 2**61 - 1: pad the code until the tuple's hash is one.
while abs(hash((code,))) >= (1 << 61) - 1:
    code += " "
target = hash((code,))
root = [E(Tag.SET), [E(Tag.SYMPY), "Integer", target], [E(Tag.TUPLE), code]]
data = pickler.MAGIC + pickler.FORMAT_VERSION.to_bytes(2, "big") + msgpack.packb([root, []], use_bin_type=True)
try:
    pickler.loads(data, {}, allow=entry_allowlist())
    print("loaded")
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_hash_collision_between_sympy_number_and_string_tuple_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    proc = run_python(COLLIDE_SCRIPT.replace("sys.argv[1]", repr(str(sentinel))), env={"PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not sentinel.exists()
    assert proc.stdout.startswith("CorruptEntryError") and "collide" in proc.stdout


def test_collisions_between_plain_values_still_load() -> None:
    """-1 and -2 share a hash in CPython, as do 1 and sympy's Integer(1): sets of such
    values are ordinary data and load as before."""
    values = [{-1, -2}, {(-1, "a"), (-2, "a")}, {sympy.Integer(-1), sympy.Integer(-2)}, {-1: "a", -2: "b"}]
    for value in values:
        p = pickler.dumps(value)
        assert pickler.loads(p.data, p.blobs) == value


@pytest.mark.parametrize(
    "name",
    [
        EVAL_GUARDS,  # a method reached by walking into a class of an allowed module
        "torch:CompilationUnit",  # a class of an allowed module: it compiles TorchScript source
        "torch:_preload_cuda_lib",  # ctypes.CDLL
        "torch:import_ir_module",  # TorchScript from a file
        "torch:_import_device_backends",
        "torch:load",
        "torch:ops",  # an object, not a function (torch.ops.load_library hangs off it)
        "torch:classes",
        "torch.fx.experimental.symbolic_shapes:ShapeEnv",
        "builtins:eval",
    ],
)
def test_dangerous_names_do_not_resolve(name: str) -> None:
    with pytest.raises(CorruptEntryError):
        pickler.loads(doc(fn(name)), {}, allow=entry_allowlist())


def test_module_state_serves_only_tensors_and_modules() -> None:
    root = msgpack.unpackb(pickler.dumps(torch.nn.Linear(2, 2)).data[6:], raw=False, ext_hook=msgpack.ExtType)[0]
    storages = msgpack.unpackb(pickler.dumps(torch.nn.Linear(2, 2)).data[6:], raw=False, ext_hook=msgpack.ExtType)[1]

    def load(state: dict[str, Any]) -> Any:
        data = pickler.MAGIC + pickler.FORMAT_VERSION.to_bytes(2, "big") + msgpack.packb(
            [[root[0], root[1], state], storages], use_bin_type=True)
        return pickler.loads(data, {})

    assert isinstance(load(root[2]), torch.nn.Linear)
    # Module.__getattr__ serves _parameters entries as attributes (e.g. a `_sympy_` hook).
    with pytest.raises(CorruptEntryError, match="_parameters"):
        load({**root[2], "_parameters": {"_sympy_": partial("torch:add", 1)}})
    with pytest.raises(CorruptEntryError, match="hooks"):
        load({**root[2], "_forward_hooks": [ext(Tag.ORDERED_DICT), 1, fn("torch:add")]})


def test_enum_values_and_partials_of_getattr_are_plain() -> None:
    bad_enum = [ext(Tag.OBJ), "torch._guards:GuardSource", [ext(Tag.TUPLE), "x"]]
    with pytest.raises(CorruptEntryError, match="value"):
        pickler.loads(doc(bad_enum), {}, allow=entry_allowlist())
    with pytest.raises(CorruptEntryError, match="getattr"):
        pickler.loads(doc(partial("builtins:getattr", 1, "real")), {})


def test_sym_int_eq_holds_an_int_or_a_symbolic_expression() -> None:
    name = "torch.fx.experimental.symbolic_shapes:SymIntEqByExpr"
    assert hash(pickler.loads(doc([ext(Tag.OBJ), name, {"val": 3}]), {})) == hash(sympy.Integer(3))
    assert hash(pickler.loads(doc([ext(Tag.OBJ), name, {"val": integer(16)}]), {})) == hash(sympy.Integer(16))
    symbolic = pickler.loads(doc([ext(Tag.OBJ), name, {"val": [ext(Tag.SYMPY), "Symbol", "s0", {"integer": True}]}]), {})
    assert symbolic.val == sympy.Symbol("s0", integer=True)
    with pytest.raises(CorruptEntryError):  # its __hash__ would evaluate the expression
        pickler.loads(doc([ext(Tag.OBJ), name, {"val": [ext(Tag.SYMPY), "Pow", integer(10), integer(10**9)]}]), {})


def test_triton_state_follows_the_same_rules() -> None:
    """The Triton codecs rebuild kernel objects from their __getstate__ dicts (GPU only; the
    rule is checked on a stand-in class here, as no Triton is installed on CI)."""

    class Kernel:
        name: str

        def run(self) -> None: ...

    ok = triton_codec._new_with_state(Kernel, {"name": "k", "__name__": "k", "__globals__": None}, None)
    assert ok.name == "k"
    for state in ({"run": 1}, {"_sympy_": torch.add}, {"_hash": 1}, {"__reduce_ex__": None}, {"__name__": torch.add}):
        with pytest.raises(CorruptEntryError):
            triton_codec._new_with_state(Kernel, state, None)


def test_a_typed_callable_attribute_holds_only_its_type() -> None:
    """A kernel tuner's ``fn`` is its JITFunction, assigned without an annotation: a real
    one decodes (every GPU hit refused it while undeclared), any other callable there is
    refused.  A stand-in type plays the JITFunction here."""

    class Jit:
        def __call__(self) -> None: ...

    class Tuner:
        pass

    typed = {"fn": Jit}
    assert isinstance(triton_codec._new_with_state(Tuner, {"fn": Jit()}, None, typed).fn, Jit)
    assert triton_codec._new_with_state(Tuner, {"fn": None}, None, typed).fn is None
    with pytest.raises(CorruptEntryError):
        triton_codec._new_with_state(Tuner, {"fn": Jit()}, None)  # undeclared: refused
    for planted in (torch.add, print, Jit):
        with pytest.raises(CorruptEntryError):
            triton_codec._new_with_state(Tuner, {"fn": planted}, None, typed)


# -- the allowlist, entry by entry ------------------------------------------------------------
def test_every_allowlist_entry_has_a_one_line_reason() -> None:
    allow = entry_allowlist()
    reasons = allow.reasons()
    registered = set(allow._by_name) | set(allow._callables) | allow._deferred
    registered |= {f"{m}:*" for m in allow._modules} | {f"deny {n}" for n in allow._denied}
    assert registered and registered <= set(reasons)
    for key, reason in reasons.items():
        assert reason.strip() and "\n" not in reason and len(reason) <= 100, key
    with pytest.raises(ValueError, match="reason"):
        default_allowlist().copy().register_callable(len, "builtins:len", reason="")


# Names a function's code may use only where the reason is reviewed here.
_SUSPECT = {"eval", "exec", "compile", "open", "__import__", "import_module", "CDLL", "PyDLL",
            "LoadLibrary", "cdll", "dlopen", "load_library", "subprocess", "system", "popen",
            "_import_dotted_name", "run_path", "environ"}
_REVIEWED = {
    # F.pad and friends import torch._decomp.decompositions (a fixed module name) lazily.
    "torch.nn.functional:pad": {"import_module"},
    "torch.nn.functional:interpolate": {"import_module"},
    "torch.nn.functional:max_pool3d_with_indices": {"import_module"},
}


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def test_no_allowlisted_function_names_eval_libraries_or_files() -> None:
    """Every function a document can name, read from its code: none uses eval, exec,
    compile, open, ctypes, import by name, processes or the environment (the reviewed
    exceptions import one fixed torch module)."""
    allow = entry_allowlist()
    names = allow.callable_names()
    assert len(names) > 1000  # torch's operators are all there
    found = {}
    for name in names:
        obj = allow.resolve_callable(name)
        code = getattr(obj, "__code__", None)
        if isinstance(code, types.CodeType):
            hits = (_code_names(code) & _SUSPECT) - _REVIEWED.get(name, set())
            if hits:
                found[name] = sorted(hits)
        elif isinstance(obj, type) or not isinstance(obj, types.BuiltinFunctionType):
            assert name in allow._by_name or name in allow._callables or name in allow._deferred, name
    assert not found, found


# -- the property test ------------------------------------------------------------------------
_PROTOCOL_KEYS = ["_sympy_", "_hash", "__sympy__", "_sympystr", "__reduce_ex__", "forward", "val",
                  "_parameters", "_modules", "_forward_hooks", "__class__", "__dict__"]
_CODE = "__import__('os').system('true')"
_DANGEROUS = [EVAL_GUARDS, "torch:CompilationUnit", "torch:_preload_cuda_lib", "torch:import_ir_module",
              "builtins:eval", "builtins:exec", "builtins:open", "os:system", "sympy:sympify",
              "sympy.parsing.sympy_parser:parse_expr", "torch:load", "torch.hub:load",
              "torch.utils.cpp_extension:load_inline", "importlib:import_module"]


def _documents(allow: Any) -> st.SearchStrategy[Any]:
    names = allow.callable_names() + _DANGEROUS
    classes = sorted(allow._by_name)
    small = st.integers(-3, 5)
    scalars = st.one_of(small, st.none(), st.booleans(), st.just(_CODE), st.text(max_size=4),
                        st.floats(allow_nan=False, width=32))

    def extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        def obj(name: str, state: dict[str, Any], items: list[Any]) -> list[Any]:
            entry = allow._by_name[name]
            cls = entry.cls
            if entry.strategy == "enum":
                return [ext(Tag.OBJ), name, items[0] if items else 0]
            if entry.strategy == "namedtuple":
                return [ext(Tag.OBJ), name, (items * 9)[: len(cls._fields)]]
            if entry.strategy == "dataclass":
                fields = [f.name for f in dataclasses.fields(cls)]
                return [ext(Tag.OBJ), name, {f: state.get(f, items[0] if items else None) for f in fields}]
            if entry.strategy == "custom":
                return [ext(Tag.OBJ), name, items if len(items) != 1 else items[0]]
            fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
            return [ext(Tag.OBJ), name, {**{f: None for f in fields}, **state}]

        keys = st.sampled_from(_PROTOCOL_KEYS)
        return st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.text(max_size=3), inner, max_size=3),
            st.lists(inner, max_size=4).map(lambda xs: [ext(Tag.TUPLE), *xs]),
            st.lists(inner, max_size=4).map(lambda xs: [ext(Tag.SET), *xs]),
            st.lists(inner, max_size=4).map(lambda xs: [ext(Tag.FROZENSET), *xs]),
            st.lists(inner, max_size=4).map(lambda xs: [ext(Tag.DICT), *(xs + xs[:1] if len(xs) % 2 else xs)]),
            st.tuples(st.sampled_from(names), st.lists(inner, max_size=3)).map(
                lambda t: [ext(Tag.PARTIAL), fn(t[0]), t[1], {}]),
            st.tuples(st.sampled_from(names), st.lists(inner, max_size=4)).map(
                lambda t: [ext(Tag.DEFAULT_DICT), fn(t[0]), *(t[1] + t[1][:1] if len(t[1]) % 2 else t[1])]),
            st.tuples(st.sampled_from(classes), st.dictionaries(keys, inner, max_size=3), st.lists(inner, max_size=3)).map(
                lambda t: obj(*t)),
            st.lists(inner, min_size=1, max_size=2).map(lambda xs: [ext(Tag.SYMPY), "Add", *[integer(1), *[
                x for x in xs if isinstance(x, list) and x[:1] == [ext(Tag.SYMPY)]]]]),
        )

    leaves = st.one_of(
        scalars,
        st.sampled_from(names).map(fn),
        small.map(integer),
        st.just([ext(Tag.SYMPY), "Symbol", "s0", {"integer": True}]),
        st.just([ext(Tag.TUPLE), _CODE]),
    )
    return st.recursive(leaves, extend, max_leaves=12)


def _walk(obj: Any, out: list[Any], depth: int = 0) -> None:
    if depth > 12 or len(out) > 200:
        return
    out.append(obj)
    children: Any = ()
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = obj
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType, types.FunctionType)):
        children = list(vars(obj).values())
    for child in children:
        _walk(child, out, depth + 1)


def _exercise(decoded: Any) -> None:
    """What torch's runtime may do with decoded objects later: hash them, compare the ones
    a dict or set would compare (equal hashes), reduce them, ask them for ``_sympy_``."""
    objects: list[Any] = []
    _walk(decoded, objects)
    by_hash: dict[int, list[Any]] = {}
    for obj in objects:
        try:
            by_hash.setdefault(hash(obj), []).append(obj)
        except Exception:  # noqa: BLE001 - unhashable or refusing: fine, nothing ran
            pass
        for probe in (lambda o: o.__reduce_ex__(2), lambda o: getattr(o, "_sympy_", None)):
            try:
                hook = probe(obj)
                if callable(hook) and not isinstance(hook, type):
                    hook()
            except Exception:  # noqa: BLE001
                pass
    for group in by_hash.values():
        for a in group:
            for b in group:
                try:
                    _ = a == b
                except Exception:  # noqa: BLE001
                    pass


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_documents_never_evaluate_load_or_touch_files(data: st.DataObject) -> None:
    allow = _ALLOW
    root = data.draw(_documents(allow))
    raw = doc(root)
    with _io_tripwire.armed() as calls:
        try:
            decoded = pickler.loads(raw, {}, allow=allow)
        except ArtcacheError:
            decoded = None
        except _io_tripwire.Tripped:
            raise
        except Exception:  # noqa: BLE001 - a library refusing bad data; the boundary catches it
            decoded = None
        if decoded is not None:
            _exercise(decoded)
    assert not calls, f"{calls} while decoding {json.dumps(root, default=repr)[:2000]}"


_ALLOW = entry_allowlist()


def test_the_tripwires_trip() -> None:
    """The property test's traps work: eval, file opens and imports of new modules raise."""
    with _io_tripwire.armed() as calls:
        for act in (lambda: eval("1"), lambda: open("/dev/null"), lambda: __import__("artcache_never_imported"),
                    lambda: sympy.sympify("x + 1"), lambda: torch.ops.load_library("x.so")):
            with pytest.raises(_io_tripwire.Tripped):
                act()
    assert len(calls) == 5 and "sympy" in sys.modules


@pytest.mark.parametrize("bomb", [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
                                  b"\xc6\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x05"],
                         ids=["array", "map", "str", "bin", "ext"])
def test_a_document_declaring_huge_sizes_is_refused_without_allocating(bomb: bytes) -> None:
    """msgpack limits sized from the document's length: a few bytes cannot claim 4 GiB."""
    import tracemalloc

    data = pickler.MAGIC + pickler.FORMAT_VERSION.to_bytes(2, "big") + b"\x92" + bomb + b"\x90"
    tracemalloc.start()
    try:
        with pytest.raises(CorruptEntryError):
            pickler.loads(data, {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
