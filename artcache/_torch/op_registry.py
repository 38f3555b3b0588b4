"""What user code a custom operator brings into a trace, read from torch's registries."""

from __future__ import annotations

import sys
from typing import Any

from ..errors import Uncacheable


def _torch_own(fn: Any) -> bool:
    """Whether ``fn`` is torch's own code (its module is torch or under it)."""
    module = getattr(getattr(fn, "func", fn), "__module__", None) or ""
    return module == "torch" or module.startswith("torch.")


def custom_op_code(op: Any) -> dict[str, Any]:
    """The user code that tracing or compiling ``op`` (an OpOverload outside torch's own
    namespaces) can run, by role: values for :func:`artcache.code_digest.code_digest`.

    Reads torch's registries: ``torch.library.custom_op``'s definition (kernels per
    device, fake kernel, autograd formula and setup_context, vmap and torch-dispatch
    rules, autocast), the fake kernel of an op defined with ``torch.library`` directly,
    Python kernels attached to the overload (``py_impl``), and decompositions and
    Inductor lowerings that user code registered for it.
    Raises ``Uncacheable`` for an op whose implementation is nowhere to be found.
    """
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
    # Decompositions and lowerings registered for the op by user code.  torch's own
    # functions in these tables are left out: they are pinned by the torch version, and
    # Inductor adds some while it compiles (a fallback lowering for every custom op it
    # meets), so they depend on what this process compiled before, not on the op.  A table
    # whose module is not loaded holds no user registration (registering imports it).
    tables = [("decomposition_table", "torch._decomp", "decomposition_table"),
              ("inductor_decompositions", "torch._inductor.decomposition", "decompositions"),
              ("inductor_lowerings", "torch._inductor.lowering", "lowerings")]
    for role, module_name, attr in tables:
        module = sys.modules.get(module_name)
        table = getattr(module, attr, None) if module is not None else None
        if table is None:
            continue
        found = [table[k] for k in (op, op.overloadpacket) if k in table]
        user = [fn for fn in found if not _torch_own(fn)]
        if user:
            parts[role] = user
    if opdef is None and fake is None and not parts["py_kernels"]:
        raise Uncacheable("custom-op", f"cannot identify the implementation of {qualname}")
    return parts
