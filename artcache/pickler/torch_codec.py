"""Encoders and decoders for torch values: tensors, storages, dtypes, symbolic sizes, ops.

Every reach into torch or sympy internals is commented with *why*; the attributes used
exist in torch 2.11 through 2.13 and sympy 1.13+.  Encoders take the pickler's encoder
and return a tagged array; decoders take the decoder and the array and validate every
field before handing it to torch, so a crafted document fails with CorruptEntryError
instead of reaching a torch assertion or allocating an absurd amount of memory.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any

import sympy
import torch
import torch.utils._pytree as pytree
import torch.utils._sympy.functions as sympy_fns

from artcache.pickler.allowlist import IDENT_RE, is_plain_name
from artcache.pickler.core import EXT, Decoder, Encoder, Tag, corrupt_unless
from artcache.errors import CorruptEntryError, IncompatibleEntryError, Uncacheable



# Tensor record flags.
_RG, _PARAM, _CONJ, _NEG = 1, 2, 4, 8
_MAX_NBYTES = 1 << 48  # no real storage is 256 TiB; larger declared sizes are lies


def _is_int(x: object) -> bool:
    return type(x) is int  # not bool: a bool where an int belongs is a malformed field


def _nonneg_ints(xs: object, what: str) -> list[int]:
    ok = type(xs) is list and all(_is_int(x) and x >= 0 for x in xs)  # type: ignore[union-attr]
    corrupt_unless(ok, f"bad {what}")
    return xs  # type: ignore[return-value]


# -- enum-like torch values ------------------------------------------------------------
@functools.cache
def _torch_named(kind: type) -> tuple[dict[str, Any], dict[Any, str]]:
    """dtype / memory_format / layout objects by their ``str`` name ("float32").

    Enumerated from the torch module itself so every dtype this torch has (float8
    variants, uint16..64, sub-byte ints) is covered without a hand-kept list; ``vars``
    rather than ``getattr`` so torch's lazy-import ``__getattr__`` is not triggered.
    """
    by_name = {}
    for value in list(vars(torch).values()):
        if isinstance(value, kind):
            by_name[str(value).removeprefix("torch.")] = value
    return by_name, {v: k for k, v in by_name.items()}


def _named_value(kind: type, name: object) -> Any:
    value = _torch_named(kind)[0].get(name) if isinstance(name, str) else None
    corrupt_unless(value is not None, f"unknown {kind.__name__}: {name!r}")
    return value


def encode_named(enc: Encoder, obj: Any, depth: int) -> list[Any]:
    tag = {torch.dtype: Tag.DTYPE, torch.memory_format: Tag.MEMORY_FORMAT, torch.layout: Tag.LAYOUT}[type(obj)]
    return [EXT[tag], _torch_named(type(obj))[1][obj]]


def decode_dtype(dec: Decoder, a: list[Any], depth: int) -> Any:
    return _named_value(torch.dtype, a[1] if len(a) == 2 else None)


def decode_memory_format(dec: Decoder, a: list[Any], depth: int) -> Any:
    return _named_value(torch.memory_format, a[1] if len(a) == 2 else None)


def decode_layout(dec: Decoder, a: list[Any], depth: int) -> Any:
    return _named_value(torch.layout, a[1] if len(a) == 2 else None)


def encode_device(enc: Encoder, dev: torch.device, depth: int) -> list[Any]:
    return [EXT[Tag.DEVICE], dev.type, dev.index]


def make_device(kind: object, index: object) -> torch.device:
    corrupt_unless(isinstance(kind, str) and bool(IDENT_RE.match(kind)), f"bad device type {kind!r}")
    ok = index is None or (_is_int(index) and 0 <= index < 1 << 16)  # type: ignore[operator]
    corrupt_unless(ok, f"bad device index {index!r}")
    try:
        return torch.device(kind, index)  # type: ignore[arg-type]
    except RuntimeError as exc:  # torch refuses device types it does not know
        raise CorruptEntryError(f"unknown device type {kind!r}") from exc


def decode_device(dec: Decoder, a: list[Any], depth: int) -> torch.device:
    corrupt_unless(len(a) == 3, "bad device record")
    return make_device(a[1], a[2])


def encode_size(enc: Encoder, size: torch.Size, depth: int) -> list[Any]:
    # The hashing form writes a Size as a tuple: a symbolic Size loads as a tuple (below),
    # and an object must hash the same as its loaded copy.
    return [EXT[Tag.TUPLE if enc.for_hashing else Tag.SIZE], *(enc.enc(d, depth) for d in size)]


def decode_size(dec: Decoder, a: list[Any], depth: int) -> tuple[Any, ...]:
    dims = [dec.dec(d, depth) for d in a[1:]]
    if all(_is_int(d) for d in dims):
        return torch.Size(dims)
    # Symbolic dims load as sympy expressions, which torch.Size refuses: a plain tuple.
    return tuple(dims)


# -- tensors and storages --------------------------------------------------------------
def encode_tensor(enc: Encoder, t: torch.Tensor, depth: int) -> list[Any]:
    cls = type(t)
    if cls is not torch.Tensor and cls is not torch.nn.Parameter:
        # FakeTensor, FunctionalTensor, DTensor and user subclasses carry state we cannot
        # rebuild from bytes; the graph is compiled normally instead.
        raise Uncacheable("tensor-subclass", f"{cls.__module__}.{cls.__qualname__}")
    if t.layout is not torch.strided:
        raise Uncacheable("sparse-tensor", str(t.layout))
    if t.is_quantized or t.is_nested:
        raise Uncacheable("quantized-or-nested-tensor", str(t.dtype))
    # Named tensors no longer exist in torch 2.13 (no .names); older builds still have them.
    if any(n is not None for n in getattr(t, "names", ())):
        raise Uncacheable("named-tensor")
    try:
        storage = t.untyped_storage()
    except RuntimeError as exc:  # functorch-wrapped and other storage-less tensors
        raise Uncacheable("tensor-without-storage", str(exc)) from exc
    flags = (_RG if t.requires_grad else 0) | (_PARAM if cls is torch.nn.Parameter else 0)
    flags |= (_CONJ if t.is_conj() else 0) | (_NEG if t.is_neg() else 0)
    return [
        EXT[Tag.TENSOR], _storage_index(enc, storage), _torch_named(torch.dtype)[1][t.dtype],
        list(t.shape), list(t.stride()), t.storage_offset(), flags,
    ]


def _storage_index(enc: Encoder, storage: torch.UntypedStorage) -> int:
    # _cdata is the address of the C++ StorageImpl: the identity two views of one storage
    # share even though each untyped_storage() call returns a new Python wrapper.  The
    # wrapper is kept alive in enc.keep so the address cannot be reused during this dump.
    key = storage._cdata
    index = enc.storage_ids.get(key)
    if index is not None:
        return index
    nbytes = storage.nbytes()
    device = storage.device
    data: bytes | str | None = None
    if device.type != "meta":
        cpu = storage if device.type == "cpu" else storage.cpu()
        # torch offers no dependency-free bytes view of a storage; string_at copies nbytes
        # from the storage's own allocation, which `cpu` keeps alive for the call.
        raw = ctypes.string_at(cpu.data_ptr(), nbytes) if nbytes else b""
        data = raw if nbytes <= enc.inline_limit else enc.add_blob(raw)
    index = len(enc.storages)
    enc.storages.append([data, nbytes, device.type, device.index])
    enc.storage_ids[key] = index
    enc.keep.append(storage)
    return index


def build_storage(dec: Decoder, rec: object) -> torch.UntypedStorage:
    corrupt_unless(type(rec) is list and len(rec) == 4, "bad storage record")
    data, nbytes, kind, index = rec  # type: ignore[misc]
    corrupt_unless(_is_int(nbytes) and 0 <= nbytes < _MAX_NBYTES, "bad storage size")
    device = make_device(kind, index)
    target = device if device.type == "meta" or dec.map_location is None else torch.device(dec.map_location)
    if data is None:
        corrupt_unless(device.type == "meta", "storage without data")
        raw = None
    elif isinstance(data, str):
        raw = dec.blob(data, nbytes)
    else:
        corrupt_unless(isinstance(data, bytes) and len(data) == nbytes, "inline storage size mismatch")
        raw = data
    try:
        if target.type == "meta":
            return torch.UntypedStorage(nbytes, device="meta")
        # from_buffer copies into memory the storage owns, so the tensor is writable and
        # does not pin the blob.
        cpu = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if nbytes else torch.UntypedStorage(0)
        return cpu if target.type == "cpu" else cpu.to(device=target)
    except (RuntimeError, AssertionError) as exc:  # e.g. a CUDA entry on a CPU-only build
        raise IncompatibleEntryError(f"cannot place storage on {target}: {exc}") from exc


def decode_tensor(dec: Decoder, a: list[Any], depth: int) -> torch.Tensor:
    corrupt_unless(len(a) == 7, "bad tensor record")
    _, index, dtype_name, shape, stride, offset, flags = a
    corrupt_unless(_is_int(index) and 0 <= index < len(dec.storages), "bad storage index")
    dtype = _named_value(torch.dtype, dtype_name)
    corrupt_unless(dtype not in _quantized_dtypes(), "quantized tensors are never stored")
    shape = _nonneg_ints(shape, "tensor shape")
    stride = _nonneg_ints(stride, "tensor stride")
    corrupt_unless(len(shape) == len(stride) and len(shape) <= 64, "shape/stride rank mismatch")
    corrupt_unless(_is_int(offset) and offset >= 0 and _is_int(flags) and 0 <= flags < 16, "bad tensor fields")
    storage = dec.storages[index]
    # The view must lie inside the storage: otherwise set_ would read out of bounds (or
    # torch would assert); a size that does not fit the blob is a lie, not a tensor.
    extent = 0 if 0 in shape else 1 + sum((n - 1) * s for n, s in zip(shape, stride))
    corrupt_unless((offset + extent) * dtype.itemsize <= storage.nbytes(), "tensor exceeds its storage")
    t = torch.empty((0,), dtype=dtype, device=storage.device)
    t.set_(storage, offset, shape, stride)
    if flags & _CONJ:
        t = t.conj()  # a lazy-conjugate view: the storage holds the unconjugated values
    if flags & _NEG:
        t = torch._neg_view(t)  # likewise for the negative bit (torch-private, no public twin)
    try:
        if flags & _PARAM:
            return torch.nn.Parameter(t, requires_grad=bool(flags & _RG))
        return t.requires_grad_(True) if flags & _RG else t
    except RuntimeError as exc:  # requires_grad on an integer dtype
        raise CorruptEntryError(f"bad requires_grad: {exc}") from exc


@functools.cache
def _quantized_dtypes() -> frozenset[torch.dtype]:
    names = ("qint8", "quint8", "qint32", "quint4x2", "quint2x4")
    return frozenset(getattr(torch, n) for n in names if hasattr(torch, n))


# -- sympy expressions ------------------------------------------------------------------
_SYMPY_CORE = (
    "Add", "Mul", "Pow", "Mod", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "Xor", "Max", "Min", "floor",
    "ceiling", "Abs", "Piecewise", "ExprCondPair",
)
_NO_EVALUATE_KW = frozenset({"ExprCondPair"})
# torch builds these classes on demand from a function name; only known names may be built.
_OPAQUE_UNARY = frozenset({
    "sqrt", "cos", "cosh", "sin", "sinh", "tan", "tanh", "asin", "acos", "atan", "exp",
    "log", "asinh", "log2",
})
_OPAQUE_BITWISE = {"bitwise_and": "and_", "bitwise_or": "or_", "bitwise_xor": "xor"}


@functools.cache
def _sympy_classes() -> tuple[dict[str, type], dict[type, str]]:
    """Compound sympy classes by a stable key: sympy's by name, torch's as ``torch.Name``.

    torch's size-arithmetic functions (FloorDiv, ModularIndexing, CleanDiv, PythonMod, ...)
    are enumerated from ``torch.utils._sympy.functions`` because the set differs between
    torch 2.11 and 2.13; an entry naming a class this torch lacks fails to load.
    """
    by_key: dict[str, type] = {n: getattr(sympy, n) for n in _SYMPY_CORE if hasattr(sympy, n)}
    for name, value in list(vars(sympy_fns).items()):
        if isinstance(value, type) and issubclass(value, sympy.Basic) and value.__module__ == sympy_fns.__name__:
            by_key["torch." + name] = value
    return by_key, {v: k for k, v in by_key.items()}


def _sympy_class(key: object) -> type:
    cls = _sympy_classes()[0].get(key) if isinstance(key, str) else None
    if cls is None and isinstance(key, str):
        # Classes torch makes lazily (make_opaque_*_fn are lru_cached, so this returns the
        # same class torch itself would use).
        unary = key.removeprefix("torch.OpaqueUnaryFn_")
        bitwise = key.removeprefix("torch.BitwiseFn_")
        if unary != key and unary in _OPAQUE_UNARY:
            cls = sympy_fns.make_opaque_unary_fn(unary)
        elif bitwise != key and bitwise in _OPAQUE_BITWISE:
            cls = sympy_fns.make_opaque_bitwise_fn(bitwise, _OPAQUE_BITWISE[bitwise])
    corrupt_unless(cls is not None, f"sympy class not allowlisted: {key!r}")
    return cls  # type: ignore[return-value]


@functools.cache
def _sympy_singletons() -> tuple[dict[str, Any], dict[int, str]]:
    from torch.utils._sympy.numbers import int_oo

    S = sympy.S
    by_name = {
        "oo": S.Infinity, "-oo": S.NegativeInfinity, "nan": S.NaN, "zoo": S.ComplexInfinity,
        "true": S.true, "false": S.false, "pi": S.Pi, "E": S.Exp1, "I": S.ImaginaryUnit,
        "int_oo": int_oo, "-int_oo": -int_oo,
    }
    return by_name, {id(v): k for k, v in by_name.items()}  # singletons: identity is enough


@functools.cache
def _assumption_names() -> frozenset[str]:
    # sympy.core.assumptions is shadowed by a function of the same name on sympy.core.
    return frozenset(sys.modules["sympy.core.assumptions"]._assume_defined)


def encode_sympy(enc: Encoder, e: sympy.Basic, depth: int) -> list[Any]:
    head = EXT[Tag.SYMPY]
    single = _sympy_singletons()[1].get(id(e))
    if single is not None:
        return [head, "S", single]
    if isinstance(e, sympy.Integer):
        return [head, "Integer", enc.enc(int(e), depth)]
    if isinstance(e, sympy.Rational):
        return [head, "Rational", enc.enc(int(e.p), depth), enc.enc(int(e.q), depth)]
    if isinstance(e, sympy.Float):
        # _mpf_ is the exact (sign, mantissa, exponent, bitcount) of the binary float and
        # _prec its precision: storing them round-trips bit-exactly, a decimal string not.
        sign, man, exp, bc = e._mpf_
        return [head, "Float", int(sign), enc.enc(int(man), depth), enc.enc(int(exp), depth), int(bc), int(e._prec)]
    if type(e) is sympy.Symbol:
        # _assumptions_orig: the assumptions the symbol was created with (integer=True,
        # positive=True...), which are part of its identity: Symbol('s0') != Symbol('s0', integer=True).
        assumptions = getattr(e, "_assumptions_orig", None)
        if assumptions is None or not IDENT_RE.match(e.name):
            raise Uncacheable("sympy-symbol", repr(e))
        return [head, "Symbol", e.name, {k: bool(v) for k, v in sorted(assumptions.items())}]
    key = _sympy_classes()[1].get(type(e))
    if key is None:
        name = type(e).__name__
        if type(e).__module__ == sympy_fns.__name__ and name.startswith(("OpaqueUnaryFn_", "BitwiseFn_")):
            key = "torch." + name
        else:
            raise Uncacheable("sympy-type-not-allowlisted", f"{type(e).__module__}.{name}")
    return [head, key, *(enc.enc(arg, depth) for arg in e.args)]


def decode_sympy(dec: Decoder, a: list[Any], depth: int) -> sympy.Basic:
    corrupt_unless(len(a) >= 2, "bad sympy record")
    kind = a[1]
    try:
        if kind == "S":
            value = _sympy_singletons()[0].get(a[2]) if len(a) == 3 and isinstance(a[2], str) else None
            corrupt_unless(value is not None, "unknown sympy singleton")
            return value
        if kind == "Integer":
            v = dec.dec(a[2], depth) if len(a) == 3 else None
            corrupt_unless(_is_int(v), "bad sympy Integer")
            return sympy.Integer(v)
        if kind == "Rational":
            p, q = (dec.dec(x, depth) for x in a[2:]) if len(a) == 4 else (None, None)
            corrupt_unless(_is_int(p) and _is_int(q) and q != 0, "bad sympy Rational")
            return sympy.Rational(p, q)
        if kind == "Float":
            corrupt_unless(len(a) == 7, "bad sympy Float")
            sign, man, exp, bc, prec = a[2], dec.dec(a[3], depth), dec.dec(a[4], depth), a[5], a[6]
            corrupt_unless(sign in (0, 1) and all(_is_int(x) for x in (man, exp, bc, prec)), "bad sympy Float")
            corrupt_unless(man >= 0 and 0 < prec <= 4096 and 0 <= bc <= 1 << 20, "bad sympy Float")
            return sympy.Float._new((sign, man, exp, bc), prec)
        if kind == "Symbol":
            corrupt_unless(len(a) == 4 and isinstance(a[2], str) and bool(IDENT_RE.match(a[2])), "bad Symbol name")
            assumptions = a[3]
            corrupt_unless(
                type(assumptions) is dict
                and all(k in _assumption_names() and type(v) is bool for k, v in assumptions.items()),
                "bad Symbol assumptions",
            )
            # Graph metadata repeats a handful of symbols thousands of times: build each once.
            key = (a[2], *sorted(assumptions.items()))
            symbol = dec.symbols.get(key)
            if symbol is None:
                symbol = dec.symbols[key] = sympy.Symbol(a[2], **assumptions)
            return symbol
        cls = _sympy_class(kind)
        args = [dec.dec(x, depth) for x in a[2:]]
        corrupt_unless(all(isinstance(x, sympy.Basic) for x in args), "sympy argument is not sympy")
        # evaluate=False rebuilds the node as stored instead of re-simplifying it, so the
        # loaded expression is structurally identical (same srepr) to the dumped one.
        if kind in _NO_EVALUATE_KW:
            return cls(*args)
        return cls(*args, evaluate=False)
    except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        raise CorruptEntryError(f"malformed sympy expression: {exc}") from exc


# -- SymInt / SymFloat / SymBool -----------------------------------------------------------
_SYM_KIND = {torch.SymInt: "i", torch.SymFloat: "f", torch.SymBool: "b"}
_HINT_TYPE = {"i": int, "f": float, "b": bool}


def encode_sym(enc: Encoder, s: Any, depth: int) -> list[Any]:
    node = s.node  # the SymNode behind the SymInt: the only place its expression lives
    if getattr(node, "is_nested_int", lambda: False)():
        raise Uncacheable("nested-int", repr(s))
    # SymNode.expr is the expression after the ShapeEnv's replacements (s0 == s1 folded).
    expr = getattr(node, "expr", None)
    if not isinstance(expr, sympy.Basic):
        raise Uncacheable("symbolic-value-without-expression", repr(s))
    # The hint is the example value this trace saw; a cache key must not depend on it
    # (the artifact is valid for every size its guards admit), so hashing keeps only the
    # expression, which is also what the value loads as: the loaded copy hashes the same.
    if enc.for_hashing:
        return enc.enc(expr, depth)
    hint = None
    if node.has_hint():
        hint = _HINT_TYPE[_SYM_KIND[type(s)]](node.hint)
    return [EXT[Tag.SYM], _SYM_KIND[type(s)], enc.enc(expr, depth), hint]


def decode_sym(dec: Decoder, a: list[Any], depth: int) -> Any:
    corrupt_unless(len(a) == 4 and a[1] in _HINT_TYPE, "bad symbolic value record")
    expr = dec.dec(a[2], depth)
    hint = a[3]
    corrupt_unless(isinstance(expr, sympy.Basic), "symbolic value without sympy expression")
    corrupt_unless(hint is None or type(hint) is _HINT_TYPE[a[1]], "bad symbolic hint")
    if dec.symbolic is not None:
        return dec.symbolic(a[1], expr, hint)
    return expr


# -- operators ----------------------------------------------------------------------------
def encode_op(enc: Encoder, op: Any, depth: int) -> list[Any]:
    # torch._ops classes: OpOverload (aten.add.Tensor), OpOverloadPacket (aten.add) and
    # HigherOrderOperator (cond, while_loop...); their names are what torch.ops resolves.
    if isinstance(op, torch._ops.OpOverload):
        ns, _, name = op._schema.name.partition("::")
        return [EXT[Tag.OP], ns, name, op._overloadname]
    if isinstance(op, torch._ops.OpOverloadPacket):
        ns, _, name = op._qualified_op_name.partition("::")
        return [EXT[Tag.OP_PACKET], ns, name]
    return [EXT[Tag.HOP], op.name()]


def _op_namespace(ns: object) -> Any:
    corrupt_unless(is_plain_name(ns), f"bad op namespace {ns!r}")
    namespace = getattr(torch.ops, ns)  # type: ignore[arg-type]  # creates an empty namespace if new
    corrupt_unless(isinstance(namespace, torch._ops._OpNamespace), f"not an op namespace: {ns!r}")
    return namespace


def decode_op(dec: Decoder, a: list[Any], depth: int) -> Any:
    corrupt_unless(len(a) == 4 and is_plain_name(a[2]) and is_plain_name(a[3]), "bad op record")
    try:
        op = getattr(getattr(_op_namespace(a[1]), a[2]), a[3])
    except AttributeError as exc:  # not registered here: another torch or a missing library
        raise IncompatibleEntryError(f"operator {a[1]}::{a[2]}.{a[3]} is not available") from exc
    corrupt_unless(isinstance(op, torch._ops.OpOverload), "op record names a non-operator")
    return op


def decode_op_packet(dec: Decoder, a: list[Any], depth: int) -> Any:
    corrupt_unless(len(a) == 3 and is_plain_name(a[2]), "bad op packet record")
    try:
        op = getattr(_op_namespace(a[1]), a[2])
    except AttributeError as exc:
        raise IncompatibleEntryError(f"operator {a[1]}::{a[2]} is not available") from exc
    corrupt_unless(isinstance(op, torch._ops.OpOverloadPacket), "op record names a non-operator")
    return op


def decode_hop(dec: Decoder, a: list[Any], depth: int) -> Any:
    corrupt_unless(len(a) == 2 and is_plain_name(a[1]), "bad higher-order op record")
    try:
        op = getattr(torch.ops.higher_order, a[1])
    except AttributeError as exc:
        raise IncompatibleEntryError(f"higher-order op {a[1]} is not available") from exc
    corrupt_unless(isinstance(op, torch._ops.HigherOrderOperator), "not a higher-order op")
    return op


# -- pytree specs ---------------------------------------------------------------------------
def encode_treespec(enc: Encoder, spec: Any, depth: int) -> list[Any]:
    # treespec_dumps is JSON naming only *registered* pytree node types; treespec_loads
    # maps those names back through torch's registry, never through import or pickle.
    try:
        return [EXT[Tag.TREESPEC], pytree.treespec_dumps(spec)]
    except (NotImplementedError, TypeError, ValueError) as exc:
        raise Uncacheable("treespec-not-serializable", str(exc)) from exc


def decode_treespec(dec: Decoder, a: list[Any], depth: int) -> Any:
    corrupt_unless(len(a) == 2 and isinstance(a[1], str), "bad treespec record")
    try:
        return pytree.treespec_loads(a[1])
    except (NotImplementedError, TypeError, ValueError, KeyError, IndexError) as exc:
        raise CorruptEntryError(f"bad treespec: {exc}") from exc
