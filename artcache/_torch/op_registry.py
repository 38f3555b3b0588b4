"""What user code a custom operator brings into a trace, read from torch's registries."""

from __future__ import annotations

import collections.abc
from typing import Any

from ..errors import Uncacheable


def custom_op_code(op: Any) -> dict[str, Any]:
    """The user code that tracing or compiling ``op`` (an OpOverload outside torch's own
    namespaces) can run, by role: values for :func:`artcache.code_digest.code_digest`.

    Reads torch's registries: ``torch.library.custom_op``'s definition (kernels per
    device, fake kernel, autograd formula and setup_context, vmap and torch-dispatch
    rules, autocast), the fake kernel of an op defined with ``torch.library`` directly,
    Python kernels attached to the overload (``py_impl``), and decompositions and
    Inductor lowerings registered for it.  Inductor's own tables are read only when their
    module is loaded: a process that never imported one cannot have registered into it.
    Raises ``Uncacheable`` for an op whose implementation is nowhere to be found.
    """
    import sys

    from torch._library.custom_ops import OPDEFS
    from torch._library.simple_registry import singleton

    qualname = op._schema.name  # "namespace::name"
    parts: dict[str, Any] = {"schema": str(op._schema)}
    opdef = OPDEFS.get(qualname)
    if opdef is not None:
        for attr in ("_init_fn", "_backend_fns", "_abstract_fn", "_setup_context_fn", "_backward_fn",
                     "_torch_dispatch_fns", "_vmap_fn", "_autocast_dtype", "_tags"):
            parts[attr] = getattr(opdef, attr, None)
    # The registry's own dict: ``find`` would create an entry for an op that has none.
    entry = getattr(singleton, "_data", {}).get(qualname)
    fake = getattr(getattr(entry, "fake_impl", None), "kernel", None)
    if fake is not None:
        parts["fake_impl"] = getattr(fake, "func", fake)
    parts["torch_dispatch_rules"] = dict(getattr(getattr(entry, "torch_dispatch_rules", None), "_data", {}) or {})
    parts["py_kernels"] = {str(k): v for k, v in getattr(op, "py_kernels", {}).items()}
    tables = [("decomposition_table", "torch._decomp", "decomposition_table"),
              ("inductor_decompositions", "torch._inductor.decomposition", "decompositions"),
              ("inductor_lowerings", "torch._inductor.lowering", "lowerings"),
              ("inductor_fallbacks", "torch._inductor.lowering", "fallbacks")]
    for role, module_name, attr in tables:
        module = sys.modules.get(module_name)
        table = getattr(module, attr, None) if module is not None else None
        if table is not None:
            found = [] if isinstance(table, collections.abc.Set) else [table[k] for k in (op, op.overloadpacket) if k in table]
            parts[role] = [op in table] if isinstance(table, collections.abc.Set) else found
    if opdef is None and fake is None and not parts["py_kernels"]:
        raise Uncacheable("custom-op", f"cannot identify the implementation of {qualname}")
    return parts
