"""torch.fx.GraphModule encoding for :mod:`artcache.pickler`.

A GraphModule is stored as its graph (nodes with op, name, target, args, kwargs, metadata),
the attributes its ``get_attr``/``call_module`` nodes reach (parameters, buffers, constants,
leaf modules, nested GraphModules of higher-order ops) and its pytree codegen.  Loading
rebuilds a ``torch.fx.Graph`` node by node and lets ``GraphModule`` regenerate its code,
so no stored source is ever executed.  Because that regenerated source *is* executed,
every string that FX splices into it (node names, placeholder names, attribute paths,
method names, argument reprs, stack-trace comments) is validated on load.

Node metadata policy:
* ``val`` / ``example_value``: tensors (FakeTensors included) become :class:`TensorSpec`
  (sizes as ints or sympy expressions); the hashing form keeps all of it.
* other known semantic keys (``tensor_meta``, ``seq_nr``, ``original_aten``,
  ``partitioner_tag``, ``is_backward``, ...) must encode, or the graph is Uncacheable.
* ``VOLATILE_META`` (stack traces, module stacks, provenance) is kept when encodable and
  dropped from the hashing form; unknown keys are kept when encodable, else dropped.
"""

from __future__ import annotations

import builtins
import enum
import re
import types
from typing import Any

import sympy
import torch
import torch.fx
from torch.fx._lazy_graph_module import _LazyGraphModule  # Inductor/AOT build these
from torch.fx.graph import CodeGen, _PyTreeCodeGen, _PyTreeInfo
from torch.fx.immutable_collections import immutable_dict

from artcache.pickler.allowlist import IDENT_RE, TensorSpec, is_plain_name
from artcache.pickler.core import EXT, Decoder, Encoder, Tag, corrupt_unless
from artcache.errors import CorruptEntryError, Uncacheable


OPS = ("placeholder", "get_attr", "call_function", "call_module", "call_method", "output")
_OP_INDEX = {op: i for i, op in enumerate(OPS)}
VOLATILE_META = frozenset({
    "stack_trace", "source_fn_stack", "nn_module_stack", "fwd_nn_module_stack",
    "fwd_source_fn_stack", "from_node", "creation_timestamp", "debug_handle", "torch_fn",
    "source_fn", "grapharg", "tensor_dict", "is_wrapped",
})
SEMANTIC_META = frozenset({
    "val", "example_value", "tensor_meta", "seq_nr", "original_aten", "partitioner_tag",
    "is_backward", "unbacked_bindings", "recompute", "ac_graph_id", "custom",
})
_SPEC_META = ("val", "example_value")
# Placeholders may be *args / **kwargs; attribute paths have numeric segments ("layers.0").
_PLACEHOLDER_RE = re.compile(r"\*{0,2}[A-Za-z_][A-Za-z0-9_]*\Z")
_PATH_SEGMENT_RE = re.compile(r"[A-Za-z0-9_]+\Z")


def _graph_module_bases() -> tuple[type, ...]:
    return (torch.fx.GraphModule, _LazyGraphModule)


# -- encoding -------------------------------------------------------------------------------
def encode_node_ref(enc: Encoder, node: torch.fx.Node, depth: int) -> list[Any]:
    index = enc.node_ids.get(node) if enc.node_ids is not None else None
    if index is None:
        raise Uncacheable("fx-node-outside-graph", node.name)
    return [EXT[Tag.NODE], index]


def _to_spec(value: Any) -> Any:
    """Replace tensors (FakeTensors included) in a meta value by TensorSpecs."""
    if isinstance(value, torch.Tensor):
        try:
            return TensorSpec(
                shape=tuple(_sym_expr(s) for s in value.shape),
                stride=tuple(_sym_expr(s) for s in value.stride()),
                storage_offset=_sym_expr(value.storage_offset()),
                dtype=value.dtype,
                device=value.device,
                requires_grad=value.requires_grad,
            )
        except RuntimeError as exc:  # sparse and other stride-less layouts
            raise Uncacheable("fx-meta-tensor-without-strides", str(exc)) from exc
    if isinstance(value, list):
        # list and FX's immutable_list (the outputs of torch._foreach_* ops, as in the
        # foreach optimizers), which the encoder writes as a list either way.
        return [_to_spec(v) for v in value]
    if type(value) is tuple:
        return tuple(_to_spec(v) for v in value)
    if isinstance(value, tuple) and type(value).__module__ == "torch.return_types":  # (values, indices) of max, sort...
        return type(value)([_to_spec(v) for v in value])
    if isinstance(value, dict) and type(value) in (dict, immutable_dict):
        return {k: _to_spec(v) for k, v in value.items()}
    return value


def _sym_expr(x: Any) -> Any:
    # A SymInt's sympy expression lives on its SymNode (see _pickle_torch.encode_sym).
    return x.node.expr if isinstance(x, torch.SymInt) else x


def _encode_meta(
    enc: Encoder, meta: dict[str, Any], seq_rank: dict[Any, int], depth: int, *, node_meta: bool = True
) -> dict[str, Any]:
    """Node metadata by the policy in the module docstring; GraphModule.meta best-effort."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if not isinstance(key, str) or (enc.for_hashing and key in VOLATILE_META):
            continue
        if node_meta and key in _SPEC_META:
            value = _to_spec(value)
        elif node_meta and key == "seq_nr" and enc.for_hashing:
            # seq_nr comes from a process-wide autograd counter: its absolute value depends
            # on what ran before, only the pairing of forward/backward nodes matters.
            value = seq_rank.get(value)
        if node_meta and key in SEMANTIC_META:
            out[key] = enc.enc(value, depth)
            continue
        try:
            out[key] = enc.enc(value, depth)
        except Uncacheable:
            pass  # debugging metadata (module stacks holding classes, provenance objects)
    return out


def _encode_target(enc: Encoder, node: torch.fx.Node, depth: int) -> Any:
    if node.op == "call_function":
        return enc.enc(node.target, depth)
    if node.op == "placeholder" and enc.for_hashing:
        return None  # the argument's name, not its position, would only add noise to a key
    if not isinstance(node.target, str):
        raise Uncacheable("fx-target-not-str", f"{node.op} {node.target!r}")
    return node.target


def _fetch_attr(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise Uncacheable("fx-missing-attribute", target) from exc
    return obj


def lifted_tensor_ids(gm: torch.nn.Module) -> set[int]:
    """The parameters and buffers of ``gm``, which AOTAutograd lifts to graph inputs
    (``aot_module_simplified``: ``named_parameters`` then ``named_buffers``, duplicates
    kept).  Their values are read at every call, never compiled in, unless Inductor's
    ``freezing`` turns them into constants; ``hash_object(lifted_inputs=True)`` is for
    the former case only."""
    tensors = [t for _, t in gm.named_parameters(remove_duplicate=False)] + [t for _, t in gm.named_buffers(remove_duplicate=False)]
    return {id(t) for t in tensors}


def _lifted_spec(t: torch.Tensor) -> list[Any]:
    # For the key: what the compiled code depends on for an input (dtype, shape, strides,
    # device type, grad), never its values, so a compiled optimizer step keyed on its state
    # tensors is found again whatever their values are.
    stride = list(t.stride()) if t.layout is torch.strided else []
    return [EXT[Tag.TUPLE], "lifted-tensor", str(t.dtype), list(t.shape), stride, t.device.type,
            bool(t.requires_grad), isinstance(t, torch.nn.Parameter)]


def encode_graph_module(enc: Encoder, gm: torch.fx.GraphModule, depth: int) -> list[Any]:
    # GraphModule gives every instance its own subclass of GraphModule (or of
    # _LazyGraphModule); a subclass with its own behaviour cannot be rebuilt generically.
    if type(gm).__bases__[0] not in _graph_module_bases():
        raise Uncacheable("graph-module-subclass", type(gm).__qualname__)
    graph = gm.graph
    seq_rank: dict[Any, int] = {}
    if enc.for_hashing:
        seqs = {n.meta["seq_nr"] for n in graph.nodes if type(n.meta.get("seq_nr")) is int}
        seq_rank = {s: i for i, s in enumerate(sorted(seqs))}
    saved, enc.node_ids = enc.node_ids, {}
    nodes = []
    try:
        for i, node in enumerate(graph.nodes):
            node_type = None
            # Only classes: FX writes a str annotation (from `from __future__ import
            # annotations`) verbatim into source, so strings and typing generics are dropped.
            if isinstance(node.type, type) and not enc.for_hashing:
                try:
                    node_type = enc.enc(node.type, depth)
                except Uncacheable:
                    node_type = None  # an annotation only; the code runs the same without it
            nodes.append([
                _OP_INDEX[node.op],
                None if enc.for_hashing else node.name,
                _encode_target(enc, node, depth),
                [enc.enc(a, depth) for a in node.args],
                {k: enc.enc(v, depth) for k, v in node.kwargs.items()},
                _encode_meta(enc, node.meta, seq_rank, depth),
                node_type,
            ])
            enc.node_ids[node] = i  # after its own args: FX args only point backwards
    finally:
        enc.node_ids = saved
    attrs: dict[str, Any] = {}
    lifted = lifted_tensor_ids(gm) if enc.for_hashing and enc.lifted_inputs else set()
    for node in graph.nodes:
        if node.op in ("get_attr", "call_module") and node.target not in attrs:
            value = _fetch_attr(gm, node.target)
            if id(value) in lifted:
                attrs[node.target] = _lifted_spec(value)
            else:
                attrs[node.target] = enc.enc(value, depth)
    return [
        EXT[Tag.GRAPH_MODULE],
        None if enc.for_hashing else type(gm).__name__,
        nodes,
        attrs,
        _encode_codegen(enc, graph._codegen, depth),
        {} if enc.for_hashing else _encode_meta(enc, gm.meta, {}, depth, node_meta=False),
    ]


def _encode_codegen(enc: Encoder, codegen: Any, depth: int) -> list[Any]:
    # graph._codegen decides the forward signature: plain positional (CodeGen) or
    # pytree-flattened in/out (_PyTreeCodeGen, used by export and some Dynamo graphs).
    if type(codegen) is CodeGen:
        return [0]
    if type(codegen) is _PyTreeCodeGen:
        info = codegen.pytree_info
        return [1, list(info.orig_args), enc.enc(info.in_spec, depth), enc.enc(info.out_spec, depth)]
    raise Uncacheable("fx-custom-codegen", type(codegen).__qualname__)


# -- decoding -------------------------------------------------------------------------------
def decode_node_ref(dec: Decoder, a: list[Any], depth: int) -> torch.fx.Node:
    corrupt_unless(len(a) == 2 and type(a[1]) is int, "bad node reference")
    nodes = dec.nodes
    corrupt_unless(nodes is not None and 0 <= a[1] < len(nodes), "node reference out of range")
    return nodes[a[1]]  # type: ignore[index]


def _is_path(target: object) -> bool:
    return isinstance(target, str) and all(
        _PATH_SEGMENT_RE.match(p) and not p.startswith("__") for p in target.split(".")
    )


# Values whose repr torch.fx splices into generated source verbatim or escaped safely.
_CODE_SAFE_LEAVES = (
    type(None), bool, int, float, complex, str, bytes, type(Ellipsis), torch.dtype,
    torch.device, torch.layout, torch.memory_format, torch.fx.Node, torch.Tensor,
    torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator,
    type, types.FunctionType, types.BuiltinFunctionType,  # printed as globals by name
    sympy.Basic,  # symbols are validated identifiers, other heads are fixed class names
    enum.Enum,  # printed as ClassName.MEMBER from the registered class itself
)


def _check_code_safe(value: Any, depth: int = 0) -> None:
    """Refuse argument values whose repr could smuggle text into FX-generated code.

    FX writes args into ``forward``'s source with ``repr``; for str, numbers and torch
    enums that is a literal, callables become globals, but an arbitrary allowlisted
    object's ``__repr__`` may echo stored strings unescaped.
    """
    corrupt_unless(depth < 64, "FX argument nests too deep")
    if isinstance(value, _CODE_SAFE_LEAVES):
        return
    if isinstance(value, (tuple, list)):  # namedtuples too: FX prints repr(tuple(value))
        for v in value:
            _check_code_safe(v, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_code_safe(k, depth + 1)
            _check_code_safe(v, depth + 1)
        return
    if isinstance(value, slice):
        for v in (value.start, value.stop, value.step):
            _check_code_safe(v, depth + 1)
        return
    raise CorruptEntryError(f"{type(value).__qualname__} is not allowed in FX node arguments")


def _check_target(op: str, target: Any) -> None:
    if op == "call_function":
        corrupt_unless(callable(target), "call_function target is not callable")
    elif op == "placeholder":
        corrupt_unless(isinstance(target, str) and bool(_PLACEHOLDER_RE.match(target)), "bad placeholder name")
    elif op in ("get_attr", "call_module"):
        corrupt_unless(_is_path(target), f"bad attribute path {target!r}")
    elif op == "call_method":
        corrupt_unless(is_plain_name(target), f"bad method name {target!r}")
    else:
        corrupt_unless(target == "output", "bad output target")


def decode_graph_module(dec: Decoder, a: list[Any], depth: int) -> torch.fx.GraphModule:
    corrupt_unless(len(a) == 6 and type(a[2]) is list and type(a[3]) is dict, "bad GraphModule record")
    _, class_name, node_recs, attr_recs, codegen_rec, gm_meta = a
    class_name = "GraphModule" if class_name is None else class_name
    # Only becomes type(gm).__name__ (never source text); make_fx names some "<lambda>".
    corrupt_unless(isinstance(class_name, str) and len(class_name) < 256 and class_name.isprintable(), "bad class name")
    graph = torch.fx.Graph()
    saved, dec.nodes = dec.nodes, []
    try:
        for rec in node_recs:
            corrupt_unless(type(rec) is list and len(rec) == 7, "bad node record")
            op_index, name, target, args, kwargs, meta, type_expr = rec
            corrupt_unless(type(op_index) is int and 0 <= op_index < len(OPS), "bad node op")
            op = OPS[op_index]
            corrupt_unless(name is None or (isinstance(name, str) and bool(IDENT_RE.match(name))), "bad node name")
            target = dec.dec(target, depth)
            _check_target(op, target)
            args, kwargs = dec.dec(args, depth), dec.dec(kwargs, depth)
            corrupt_unless(type(args) is list and type(kwargs) is dict, "bad node arguments")
            _check_code_safe(args)
            _check_code_safe(kwargs)
            if target is builtins.getattr:
                # getattr(x, "__class__") and friends would let a graph climb to globals.
                corrupt_unless(len(args) >= 2 and is_plain_name(args[1]), "getattr of a non-plain name")
            meta = dec.dec(meta, depth)
            corrupt_unless(type(meta) is dict, "bad node meta")
            _check_meta(meta)
            type_expr = dec.dec(type_expr, depth)
            corrupt_unless(type_expr is None or isinstance(type_expr, type), "bad node type")
            node = graph.create_node(op, target, tuple(args), kwargs, name=name, type_expr=type_expr)
            node.meta = meta
            dec.nodes.append(node)
    finally:
        dec.nodes = saved
    root = {}
    for path, value in attr_recs.items():
        corrupt_unless(_is_path(path), f"bad attribute path {path!r}")
        root[path] = dec.dec(value, depth)
    graph._codegen = _decode_codegen(dec, codegen_rec, depth)
    meta_value = dec.dec(gm_meta, depth)
    corrupt_unless(type(meta_value) is dict, "bad GraphModule meta")
    try:
        # A dict root: GraphModule copies exactly the targets the graph uses (tensors not
        # Parameters become buffers, as GraphModule does for a module root).  The lazy
        # variant (what AOTAutograd and Inductor build too) generates and compiles
        # forward's source on first use, keeping codegen off the hit path until needed.
        gm = _LazyGraphModule(root, graph, class_name)
    except (RuntimeError, TypeError, ValueError, AttributeError, SyntaxError) as exc:
        raise CorruptEntryError(f"graph does not rebuild: {exc}") from exc
    gm.meta.update(meta_value)
    return gm


def _check_meta(meta: dict[str, Any]) -> None:
    # FX copies these into comments of the generated source; a carriage return would end
    # the comment line there (Python treats "\r" as a line break) and start live code.
    trace = meta.get("stack_trace")
    corrupt_unless(trace is None or (isinstance(trace, str) and "\r" not in trace), "bad stack_trace")
    if "custom" in meta:
        _check_code_safe(meta["custom"])
        corrupt_unless("\r" not in repr(meta["custom"]), "bad custom annotation")


def _decode_codegen(dec: Decoder, rec: Any, depth: int) -> CodeGen:
    corrupt_unless(type(rec) is list and (rec == [0] or (len(rec) == 4 and rec[0] == 1)), "bad codegen record")
    if rec == [0]:
        return CodeGen()
    orig_args = rec[1]
    # orig_args become forward's parameter list in the generated source.
    ok = type(orig_args) is list and all(isinstance(x, str) and IDENT_RE.match(x) for x in orig_args)
    corrupt_unless(ok, "bad codegen args")
    in_spec, out_spec = dec.dec(rec[2], depth), dec.dec(rec[3], depth)
    return _PyTreeCodeGen(_PyTreeInfo(orig_args, in_spec, out_spec))
