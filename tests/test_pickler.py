"""Tests for artcache.pickler: round trips, hashing form, determinism and hostile payloads."""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import math
import operator
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import pytest
import sympy
import torch
import torch.utils._pytree as pytree
import torch.utils._sympy.functions as sympy_fns
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo
from torch.utils._ordered_set import OrderedSet

from artcache.pickler.allowlist import DeferredCallable
from artcache.errors import CorruptEntryError, IncompatibleEntryError, Uncacheable
from artcache.pickler import (
    FORMAT_VERSION,
    Allowlist,
    Pickled,
    TensorSpec,
    default_allowlist,
    dumps,
    hash_object,
    loads,
)

REPO = Path(__file__).resolve().parents[1]
HEADER = b"ACPK" + FORMAT_VERSION.to_bytes(2, "big")


def rt(obj: Any, **kw: Any) -> Any:
    p = dumps(obj, allow=kw.get("allow"))
    return loads(p.data, p.blobs, **kw)


def doc(root: Any, storages: list[Any] | None = None) -> bytes:
    """A hand-built document, as an attacker would write one."""
    return HEADER + msgpack.packb([root, storages or []], use_bin_type=True)


def ext(code: int) -> msgpack.ExtType:
    return msgpack.ExtType(code, b"")


def body(p: Pickled) -> list[Any]:
    return msgpack.unpackb(p.data[len(HEADER):], raw=False, strict_map_key=False)


# -- plain values ------------------------------------------------------------------------
PLAIN = [
    None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**200), 3**100,
    1.5, float("inf"), float("-inf"), "", "héllo", b"", b"\x00\xff", [], [1, [2, [3]]],
    (), (1,), (1, (2, "x")), {"a": 1, "b": [2]}, {1: "x", (1, 2): "y", None: 3, 2.5: 4},
    {"b", "a", "c"}, frozenset({1, 2}), set(), slice(1, None, 2), range(2, 10, 3), ...,
    complex(1, -2), bytearray(b"abc"), collections.OrderedDict([("z", 1), ("a", 2)]),
    OrderedSet(["q", "b", "a"]), [{"k": (None, ...)}],
]


@pytest.mark.parametrize("value", PLAIN, ids=lambda v: type(v).__name__)
def test_plain_round_trip(value: Any) -> None:
    out = rt(value)
    assert type(out) is type(value)
    assert out == value


def test_float_specials_and_dict_order() -> None:
    nan, negzero = rt([float("nan"), -0.0])
    assert math.isnan(nan) and negzero == 0.0 and math.copysign(1.0, negzero) == -1.0
    assert list(rt({"z": 1, "a": 2, "m": 3})) == ["z", "a", "m"]
    assert list(rt({3: "a", 1: "b", (0,): "c"})) == [3, 1, (0,)]


def test_defaultdict_and_partial() -> None:
    out = rt(dd := collections.defaultdict(list, {"a": [1]}))
    assert type(out) is collections.defaultdict and out == dd
    out["new"].append(2)  # the factory was restored
    assert out["new"] == [2] and rt(functools.partial(operator.add, 10))(5) == 15


def test_large_bytes_are_blobs_and_small_inline() -> None:
    big = os.urandom(10_000)
    p = dumps({"big": big, "small": b"tiny"}, inline_limit=4096)
    assert list(p.blobs.values()) == [big]
    assert loads(p.data, p.blobs) == {"big": big, "small": b"tiny"}
    assert loads(p.data, p.blobs.__getitem__)["big"] == big  # blobs may come from a function


# -- tensors -------------------------------------------------------------------------------
QUANTIZED = {"qint8", "quint8", "qint32", "quint4x2", "quint2x4"}
DTYPES = sorted(
    {str(v).removeprefix("torch.") for v in vars(torch).values() if isinstance(v, torch.dtype)} - QUANTIZED
)


def storage_bytes(t: torch.Tensor) -> bytes:
    s = t.untyped_storage()
    return bytes(torch.empty(0, dtype=torch.uint8).set_(s).tolist())


def assert_same_tensor(a: torch.Tensor, b: torch.Tensor) -> None:
    assert type(a) is type(b)
    assert (a.dtype, a.shape, a.stride(), a.storage_offset()) == (b.dtype, b.shape, b.stride(), b.storage_offset())
    assert (a.requires_grad, a.device, a.is_conj(), a.is_neg()) == (b.requires_grad, b.device, b.is_conj(), b.is_neg())
    if a.device.type != "meta":
        assert storage_bytes(a) == storage_bytes(b)


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_tensor_every_dtype(dtype_name: str) -> None:
    dtype = getattr(torch, dtype_name)
    nbytes = 64 * dtype.itemsize
    storage = torch.UntypedStorage.from_buffer(os.urandom(nbytes), dtype=torch.uint8)
    base = torch.empty(0, dtype=dtype).set_(storage, 0, (8, 8), (8, 1))
    view = torch.empty(0, dtype=dtype).set_(storage, 3, (3, 4), (1, 8))  # transposed, offset
    a, b = rt([base, view])
    assert_same_tensor(a, base)
    assert_same_tensor(b, view)
    assert a.untyped_storage()._cdata == b.untyped_storage()._cdata  # one shared storage
    if dtype in (torch.int64, torch.int8, torch.uint16):  # random bytes: no NaN in these
        assert torch.equal(b, view)


def test_views_share_one_storage_and_one_blob() -> None:
    t = torch.arange(2000, dtype=torch.float32)
    views = [t, t[10:], t.view(40, 50).t(), t[::3], t.view(torch.int32)]
    p = dumps(views)
    assert len(p.blobs) == 1 and len(body(p)[1]) == 1
    out = loads(p.data, p.blobs)
    for a, b in zip(views, out):
        assert_same_tensor(a, b)
        assert torch.equal(a, b)
    out[0][11] = -1.0  # writes through the shared storage, as in the original
    assert out[1][1] == -1.0 and out[4][11] == torch.tensor(-1.0).view(torch.int32)


def test_identical_storages_dedupe_but_do_not_alias() -> None:
    a, b = torch.ones(5000), torch.ones(5000)
    p = dumps([a, b])
    assert len(p.blobs) == 1 and len(body(p)[1]) == 2
    la, lb = loads(p.data, p.blobs)
    assert la.untyped_storage()._cdata != lb.untyped_storage()._cdata


def test_tensor_flags_params_zero_size_meta_conj() -> None:
    conj = torch.randn(3, dtype=torch.complex64).conj()
    values = [torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.randn(2), requires_grad=False),
              torch.randn(4, requires_grad=True), torch.empty(0, 5), torch.arange(10.0)[10:],
              torch.empty(4, 6, device="meta").t(), conj, torch.tensor(3.5)]
    out = rt(values)
    for a, b in zip(values, out):
        assert_same_tensor(a, b)
    assert torch.equal(out[6].resolve_conj(), conj.resolve_conj())
    t = torch.randn(3, 4)
    moved = rt(t, map_location="meta")
    assert moved.device.type == "meta" and moved.shape == t.shape and moved.stride() == t.stride()


def test_unsupported_tensors_are_uncacheable() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.empty(3)
    for t in (torch.randn(3, 3).to_sparse(), torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.qint8), fake):
        with pytest.raises(Uncacheable):
            dumps(t)


def test_torch_enums() -> None:
    values = [torch.float8_e5m2, torch.uint64, torch.device("cpu"), torch.device("cuda", 1), torch.device("meta"),
              torch.Size([2, 0, 3]), torch.channels_last, torch.preserve_format, torch.strided, torch.sparse_csr]
    out = rt(values)
    assert out == values and type(out[5]) is torch.Size


# -- sympy and symbolic values -----------------------------------------------------------
s0 = sympy.Symbol("s0", integer=True, positive=True)
s1 = sympy.Symbol("s1", integer=True, nonnegative=True)
f0 = sympy.Symbol("zf0", real=True)


def _torch_exprs() -> list[Any]:
    F = sympy_fns
    candidates = {
        "FloorDiv": (s0, 2), "ModularIndexing": (s0, 2, 4), "CleanDiv": (4 * s0, 2),
        "CeilDiv": (s0, 3), "Max": (s0, s1), "Min": (s0, s1, 3), "PythonMod": (s0, s1),
        "Mod": (s0, s1), "FloatTrueDiv": (f0, s0), "IntTrueDiv": (s0, s1), "ToFloat": (s0,),
        "TruncToInt": (f0,), "TruncToFloat": (f0,), "RoundToInt": (f0,), "RoundDecimal": (f0, 2),
        "CeilToInt": (f0,), "FloorToInt": (f0,), "PowByNatural": (s0, s1), "FloatPow": (f0, f0),
        "LShift": (s0, s1), "RShift": (s0, s1), "Where": (s0 < 3, s0, s1), "Identity": (s0,),
        "IsNonOverlappingAndDenseIndicator": (s0, 1, 1, s0),
    }
    for name in vars(F):  # classes torch generates per function name
        candidates.update({name: (f0,)} if name.startswith("OpaqueUnaryFn_") else {})
        candidates.update({name: (s0, s1)} if name.startswith("BitwiseFn_") else {})
    # evaluate=False: each head survives construction instead of folding into another.
    # (CeilDiv takes no evaluate: it always rewrites itself to CleanDiv or FloorDiv.)
    kw = {name: {} if name == "CeilDiv" else {"evaluate": False} for name in candidates}
    return [getattr(F, name)(*args, **kw[name]) for name, args in candidates.items() if hasattr(F, name)]


SYMPY_EXPRS = [
    s0, s1 + 1, 2 * s0 * s1, s0**2, sympy.Mod(s0, 3), sympy.Eq(s0, s1), sympy.Ne(s0, 2),
    s0 < s1, s0 <= s1, s0 > 3, s0 >= 2, sympy.And(s0 < 3, s1 > 2), sympy.Or(s0 < 3, s1 > 2),
    sympy.Not(s0 < 3), sympy.true, sympy.false, sympy.oo, -sympy.oo, sympy.nan,
    sympy.Integer(-7), sympy.Integer(2**100), sympy.Rational(-3, 7), sympy.Float(1.25),
    sympy.Float("0.1", 30), sympy.floor(s0 / 3), sympy.ceiling(s0 / 3), sympy.Max(s0, s1),
    sympy.Symbol("x"), *_torch_exprs(),
]


@pytest.mark.parametrize("expr", SYMPY_EXPRS, ids=lambda e: sympy.srepr(e)[:40])
def test_sympy_structurally_identical(expr: Any) -> None:
    out = rt(expr)
    assert sympy.srepr(out) == sympy.srepr(expr)
    assert out == expr and type(out) is type(expr)


def test_int_infinity_and_all_torch_sympy_classes_known() -> None:
    from torch.utils._sympy.numbers import int_oo

    assert rt([int_oo, -int_oo]) == [int_oo, -int_oo]
    defined = {n for n, v in vars(sympy_fns).items()
               if isinstance(v, type) and issubclass(v, sympy.Basic) and v.__module__ == sympy_fns.__name__}
    # Every concrete class this torch defines is exercised by test_sympy_structurally_identical.
    assert defined - {type(e).__name__ for e in _torch_exprs()} == {"MinMaxBase", "CeilDiv"}


def _symbolic_graph() -> torch.fx.GraphModule:
    def f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ y).sum(0) + x.shape[0]

    return make_fx(f, tracing_mode="symbolic")(torch.randn(3, 4), torch.randn(4, 5))


def test_symint_loads_as_expression_or_through_hook() -> None:
    gm = _symbolic_graph()
    val = next(n for n in gm.graph.nodes if n.name == "sym_size_int").meta["val"]
    assert isinstance(val, torch.SymInt)
    expr = rt(val)
    assert isinstance(expr, sympy.Symbol) and expr.is_integer and expr == val.node.expr
    seen = []
    p = dumps(val)
    loads(p.data, p.blobs, symbolic=lambda kind, e, hint: seen.append((kind, e, hint)) or e)
    assert seen == [("i", val.node.expr, 3)]


# -- allowlisted classes and callables ------------------------------------------------------
class Color(enum.Enum):
    RED, BLUE = "r", 2


class Point(NamedTuple):
    x: int
    y: Any


@dataclasses.dataclass(frozen=True)
class Frozen:
    name: str
    items: tuple[int, ...]
    color: Color
    _private: int = dataclasses.field(default=0, init=False)


@dataclasses.dataclass
class Mutable:
    point: Point
    tensors: dict[str, torch.Tensor]


class Opaque:
    def __init__(self, v: int) -> None:
        self.v = v


class Custom(Opaque):
    pass


def _allow() -> Allowlist:
    allow = default_allowlist().copy()
    for cls in (Color, Point, Frozen, Mutable, Opaque):
        allow.register(cls, reason="a test class")
    allow.register(Custom, "custom", encode=lambda c: c.v * 2, decode=lambda v: Custom(v // 2), reason="a test class")
    return allow


def test_dataclass_enum_namedtuple_dict_custom_round_trip() -> None:
    allow = _allow()
    frozen = Frozen("n", (1, 2), Color.BLUE)
    object.__setattr__(frozen, "_private", 5)
    value = [frozen, Mutable(Point(1, Color.RED), {"w": torch.ones(2)}), Opaque(3), Custom(21), Color]
    out = rt(value, allow=allow)
    assert out[0] == frozen and out[0]._private == 5
    assert out[1].point == Point(1, Color.RED) and type(out[1].point) is Point
    assert torch.equal(out[1].tensors["w"], torch.ones(2))
    assert (type(out[2]), out[2].v, type(out[3]), out[3].v, out[4]) == (Opaque, 3, Custom, 21, Color)
    with pytest.raises(CorruptEntryError, match="not allowlisted"):
        p = dumps(value, allow=allow)
        loads(p.data, p.blobs)  # the default allowlist does not know these classes


def test_unregistered_classes_and_lambdas_are_uncacheable() -> None:
    for obj in (Opaque(1), lambda x: x, os.system, subprocess.Popen, eval, torch.load, object()):
        with pytest.raises(Uncacheable):
            dumps(obj)
    with pytest.raises(TypeError):  # the default allowlist is frozen
        default_allowlist().register(Opaque, reason="a test class")
    assert default_allowlist() is default_allowlist()


def test_callables_by_name() -> None:
    fns = [operator.getitem, operator.add, math.sqrt, len, getattr, torch.add, torch.split,
           torch.nn.functional.relu, torch._C._nn.linear, torch.sym_max, torch.Tensor,
           torch.ops.aten.add.Tensor, torch.ops.aten.add, torch.ops.prims.convert_element_type.default,
           torch.ops.higher_order.cond]
    assert rt(fns) == fns and all(a is b for a, b in zip(rt(fns), fns))
    _, spec = pytree.tree_flatten(((1, 2), {"a": [3, 4], "b": None}))
    assert rt(spec) == spec


def test_deferred_callable_is_imported_at_its_first_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deferred name loads without importing its module while that module is unloaded,
    imports it at the first call, and is the real function whenever the module is loaded."""
    (tmp_path / "artcache_deferred_probe.py").write_text("def double(x):\n    return 2 * x\n\ndef triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import artcache_deferred_probe as probe

    allow = default_allowlist().copy()
    allow.register_deferred_callable("artcache_deferred_probe", "double", reason="a test function")
    allow.freeze()
    p = dumps({"f": probe.double}, allow=allow)
    real_hash = hash_object(probe.double, allow=allow)
    assert loads(p.data, p.blobs, allow=allow)["f"] is probe.double
    with pytest.raises(Uncacheable):
        dumps(probe.triple, allow=allow)  # only the registered name

    monkeypatch.delitem(sys.modules, "artcache_deferred_probe")
    deferred = loads(p.data, p.blobs, allow=allow)["f"]
    assert isinstance(deferred, DeferredCallable) and "artcache_deferred_probe" not in sys.modules
    assert hash_object(deferred, allow=allow) == real_hash  # the same bytes as the function's
    assert deferred(21) == 42 and "artcache_deferred_probe" in sys.modules
    forged = bytes(p.data).replace(b"double", b"triple")  # same length: still a valid document
    with pytest.raises(CorruptEntryError, match="not allowlisted"):
        loads(forged, p.blobs, allow=allow)


# -- FX graphs -------------------------------------------------------------------------------
class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
        self.register_buffer("scale", torch.full((4,), 2.0))
        self.w = torch.nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x) * self.scale + self.w + self.layers[0].bias.sum()
        parts = torch.split(y, 2, dim=1)
        return torch.nn.functional.relu(parts[0]).sum() + torch.add(parts[1], math.pi).mean() + operator.mul(y, 2)


def test_symbolic_trace_graph_module_round_trip() -> None:
    gm = torch.fx.symbolic_trace(Block())
    first = next(iter(gm.graph.nodes))
    first.meta.update(custom_key={"a": (1, torch.float16)}, junk=object())
    out = rt(gm)
    assert next(iter(out.graph.nodes)).meta == {"custom_key": {"a": (1, torch.float16)}}  # junk dropped
    x = torch.randn(3, 4)
    assert isinstance(out, torch.fx.GraphModule) and torch.equal(gm(x), out(x))
    assert [n.name for n in out.graph.nodes] == [n.name for n in gm.graph.nodes]
    assert isinstance(out.get_submodule("layers.0"), torch.nn.Linear)
    assert isinstance(out.w, torch.nn.Parameter) and "scale" in dict(out.named_buffers())


def test_make_fx_graph_round_trip_with_meta() -> None:
    gm = _symbolic_graph()
    out = rt(gm)
    a, b = torch.randn(5, 4), torch.randn(4, 2)
    assert torch.equal(gm(a, b), out(a, b))
    for n_in, n_out in zip(gm.graph.nodes, out.graph.nodes):
        assert (n_in.op, n_in.name, n_in.target) == (n_out.op, n_out.name, n_out.target)
        if isinstance(n_in.meta.get("val"), torch.Tensor):
            spec = n_out.meta["val"]
            assert isinstance(spec, TensorSpec) and spec.dtype == n_in.meta["val"].dtype
            shape = n_in.meta["val"].shape
            assert spec.shape == tuple(s.node.expr if isinstance(s, torch.SymInt) else s for s in shape)
            assert n_out.meta["tensor_meta"].dtype == n_in.meta["tensor_meta"].dtype
    assert hash_object(gm) == hash_object(out)  # the loaded copy hashes like the original


def test_higher_order_subgraphs_and_constants() -> None:
    const = torch.tensor([1.0, -2.0, 3.0])

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda x: x.sin() * const, lambda x: x.cos(), (x,))

    gm = make_fx(f)(torch.randn(3))
    out = rt(gm)
    for x in (torch.ones(3), -torch.ones(3)):
        assert torch.equal(gm(x), out(x))
    assert isinstance(out.true_graph_0, torch.fx.GraphModule)


def test_pytree_codegen_round_trip() -> None:
    gm = torch.fx.symbolic_trace(Block())
    _, in_spec = pytree.tree_flatten(((1,), {}))
    gm.graph._codegen = _PyTreeCodeGen(_PyTreeInfo(["x"], in_spec, None))
    gm.recompile()
    out = rt(gm)
    x = torch.randn(2, 4)
    assert torch.equal(gm(x), out(x))
    assert out.graph._codegen.pytree_info.in_spec == in_spec


def _renamed_and_annotated(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    gm2 = rt(gm)
    for i, n in enumerate(gm2.graph.nodes):
        if n.op != "output":
            n.name = f"renamed_{i}"
        if n.op == "placeholder":
            n.target = n.name
        n.meta["stack_trace"] = f'File "other.py", line {i}, in f\n    x = y\n'
        n.meta["nn_module_stack"] = {"L__self__": ("", torch.nn.Linear)}
        n.meta["from_node"] = [object()]
    gm2.recompile()
    return gm2


def test_hash_ignores_names_and_volatile_meta() -> None:
    gm = _symbolic_graph()
    for i, n in enumerate(gm.graph.nodes):
        n.meta["seq_nr"] = 100 + i // 2
    gm2 = _renamed_and_annotated(gm)
    for i, n in enumerate(gm2.graph.nodes):
        n.meta["seq_nr"] = 7 + 10 * (i // 2)  # same pairing and order, other absolute values
    assert hash_object(gm) == hash_object(gm2)
    assert dumps(gm).data != dumps(gm2).data  # the normal form keeps names


def test_hash_sees_ops_and_constants() -> None:
    gm = torch.fx.symbolic_trace(Block())
    base = hash_object(gm)
    changed_op = rt(gm)
    relu = next(n for n in changed_op.graph.nodes if n.target is torch.nn.functional.relu)
    relu.target = torch.sigmoid
    changed_op.recompile()
    assert hash_object(changed_op) != base
    changed_const = rt(gm)
    changed_const.scale[0] = 3.0
    assert hash_object(changed_const) != base
    changed_arg = rt(gm)
    split = next(n for n in changed_arg.graph.nodes if n.target is torch.split)
    split.args = (split.args[0], 1)
    assert hash_object(changed_arg) != base


def test_hash_of_lifted_inputs_sees_their_specs_not_their_values() -> None:
    """With ``lifted_inputs`` (how the backend keys a graph AOTAutograd compiles) a
    buffer's values are not part of the hash, its dtype and shape are."""
    gm = torch.fx.symbolic_trace(Block())
    base = hash_object(gm, lifted_inputs=True)
    changed_value = rt(gm)
    changed_value.scale[0] = 3.0
    assert hash_object(changed_value, lifted_inputs=True) == base
    assert hash_object(changed_value) != hash_object(gm)
    changed_dtype = rt(gm)
    changed_dtype.scale = changed_dtype.scale.double()
    assert hash_object(changed_dtype, lifted_inputs=True) != base


# -- determinism ----------------------------------------------------------------------------
DETERMINISM_SCRIPT = textwrap.dedent(
    """
    import hashlib, sys, torch
    sys.path.insert(0, sys.argv[1])
    from artcache.pickler import dumps
    from tests.test_pickler import Block
    torch.manual_seed(0)
    obj = {"s": {"alpha", "beta", "gamma", "delta"}, "f": frozenset({"x", "y", ("z", 1)}),
           "t": torch.arange(5000.0), "g": torch.fx.symbolic_trace(Block())}
    for form in (False, True):
        print(hashlib.sha256(dumps(obj, for_hashing=form).data).hexdigest())
    """
)


def test_deterministic_across_processes_and_hash_seeds() -> None:
    outs = []
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        res = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, str(REPO)], env=env,
                             capture_output=True, text=True, timeout=120, check=True, cwd=REPO)
        outs.append(res.stdout)
    assert outs[0] == outs[1] and len(outs[0].split()) == 2
    obj = {"s": {"b", "a"}, "t": torch.arange(3000.0), "g": _symbolic_graph()}
    assert dumps(obj).data == dumps(obj).data  # and within one process


# -- hostile and corrupt payloads ---------------------------------------------------------------
FN, OBJ, PARTIAL, DEFAULT_DICT, TENSOR, BLOB, GM = 21, 20, 15, 13, 35, 10, 40


def hostile_docs(cmd: str) -> list[bytes]:
    names = ["os:system", "subprocess:Popen", "builtins:eval", "builtins:exec", "torch:os.system",
             "torch:load", "torch:_C._dlopen", "operator:attrgetter", "torch:Tensor.__init__.__globals__"]
    return [
        *(doc([ext(FN), name]) for name in names),
        doc([ext(PARTIAL), [ext(FN), "os:system"], [cmd], {}]),
        doc([ext(DEFAULT_DICT), [ext(FN), "os:system"], cmd, 1]),
        doc([ext(OBJ), "os:system", cmd]),
        doc([ext(OBJ), "subprocess:Popen", {"args": cmd}]),
        pickle.dumps(_Evil(cmd)),
        HEADER + pickle.dumps(_Evil(cmd)),
    ]


@dataclasses.dataclass
class _Evil:
    cmd: str

    def __reduce__(self) -> Any:
        return (os.system, (self.cmd,))


def test_hostile_payloads_refused_and_do_not_run(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    for i, data in enumerate(hostile_docs(f"touch {sentinel}")):
        with pytest.raises(CorruptEntryError):
            loads(data, {})
        assert not sentinel.exists(), i


def test_fx_source_injection_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    gm = torch.fx.symbolic_trace(torch.nn.ReLU())
    inject = f"__import__('os').system('touch {sentinel}')"
    mutations = [
        lambda g: g[2][0].__setitem__(1, f"x; {inject}"),  # node name
        lambda g: g[2][0].__setitem__(2, f"x=({inject})"),  # placeholder name
        lambda g: g[2][-1][5].__setitem__("stack_trace", f'File "a", line 1, in f\n  x\r{inject}\n'),
        lambda g: g[4].__init__([1, [f"x=({inject})"], None, None]),  # pytree orig_args
        lambda g: g[2][1].__setitem__(0, 4) or g[2][1].__setitem__(2, "__class__"),  # call_method dunder
    ]
    for mutate in mutations:
        tree = body(dumps(gm))
        mutate(tree[0])
        data = HEADER + msgpack.packb(tree, use_bin_type=True)
        with pytest.raises(CorruptEntryError):
            out = loads(data, {})
            out(torch.randn(2))
        assert not sentinel.exists()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"ACP",
        b"\x80\x04junk",
        doc([ext(99), 1]),  # unknown ext code
        doc([msgpack.ExtType(1, b"x"), 1]),  # ext with a payload
        doc([1, ext(1)]),  # ext outside the tag position
        doc([ext(OBJ), "tests.test_pickler:Opaque", {}]),  # unknown class
        doc([ext(TENSOR), 0, "float32", [2], [1], 0, 0]),  # no such storage
        doc([ext(TENSOR), 0, "float32", [1000], [1], 0, 0], [[b"\x00" * 16, 16, "cpu", None]]),  # size lie
        doc([ext(TENSOR), 0, "float32", [2], [1], 0, 0], [[b"\x00" * 8, 64, "cpu", None]]),  # nbytes lie
        doc([ext(TENSOR), 0, "qint8", [2], [1], 0, 0], [[b"\x00" * 8, 8, "cpu", None]]),
        doc([ext(TENSOR), 0, "float32", [2], [1], 0, 0], [[b"\x00" * 8, 8, "nosuchdevice", None]]),
        doc([ext(BLOB), "0" * 64, 10]),  # missing blob
        doc([ext(GM), None, [[9, "x", "x", [], {}, {}, None]], {}, [0], {}]),  # bad op
        doc({1: 2}),  # non-str map key where none is written
    ],
)
def test_corrupt_documents(data: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        loads(data, {})


def test_deep_nesting_refused() -> None:
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    with pytest.raises(CorruptEntryError):
        loads(doc(deep), {})
    raw = HEADER + b"\x91" * 100_000 + b"\x01"  # deeper than msgpack's own stack
    with pytest.raises(CorruptEntryError):
        loads(raw, {})
    with pytest.raises(Uncacheable):
        dumps(deep)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(Uncacheable):
        dumps(cyclic)


def test_truncated_data_refused() -> None:
    p = dumps({"g": torch.fx.symbolic_trace(Block()), "t": torch.randn(3000)})
    for cut in range(0, len(p.data) - 1, max(1, len(p.data) // 97)):
        with pytest.raises((CorruptEntryError, IncompatibleEntryError)):
            loads(p.data[:cut], p.blobs)


def test_blob_digest_verified() -> None:
    p = dumps(torch.randn(5000))
    (digest, blob), = p.blobs.items()
    tampered = bytearray(blob)
    tampered[100] ^= 1
    with pytest.raises(CorruptEntryError, match="digest"):
        loads(p.data, {digest: bytes(tampered)})
    with pytest.raises(CorruptEntryError, match="missing"):
        loads(p.data, {})
    with pytest.raises(CorruptEntryError):
        loads(p.data, {digest: blob[:-4]})


def test_version_and_magic() -> None:
    p = dumps([1, 2])
    with pytest.raises(IncompatibleEntryError):
        loads(b"ACPK" + (FORMAT_VERSION + 1).to_bytes(2, "big") + p.data[6:], {})
    with pytest.raises(CorruptEntryError):
        loads(b"XXXX" + p.data[4:], {})
    with pytest.raises(IncompatibleEntryError):
        loads(doc([ext(22), "aten", "no_such_op_xyz", "default"]), {})
    with pytest.raises(CorruptEntryError):
        loads(doc([ext(22), "aten", "add", "__call__"]), {})


def test_dict_state_cannot_shadow_methods() -> None:
    root, storages = body(dumps(torch.nn.Linear(2, 2)))
    assert isinstance(loads(doc(root, storages), {}), torch.nn.Linear)
    root[2]["forward"] = [ext(FN), "torch:add"]
    with pytest.raises(CorruptEntryError, match="state key"):
        loads(doc(root, storages), {})
