"""Developer probe (GPU machine): list every type in captured CUDA entries, as pickle walks
them, and whether artcache's pickler stores them.  Used to build the Triton allowlist in
``artcache/_pickle_triton.py``; not a test.

    python -m tests.gpu.probe_types
"""

from __future__ import annotations

import collections
import copyreg
import io
import pickle
import sys
import traceback
from typing import Any

import torch


def qn(t: type) -> str:
    return f"{t.__module__}:{t.__qualname__}"


class Walker(pickle.Pickler):
    def __init__(self, f: Any) -> None:
        super().__init__(f, protocol=4)
        self.types: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, Any] = {}

    def persistent_id(self, obj: Any) -> None:
        self.types[qn(type(obj))] += 1
        self.examples.setdefault(qn(type(obj)), obj)
        return None


def flags(t: type) -> list[str]:
    out = []
    for name in ("__reduce__", "__reduce_ex__", "__getstate__", "__setstate__", "__new__", "__slots__"):
        for k in t.__mro__:
            if name in k.__dict__ and k is not object:
                out.append(f"{name}@{k.__qualname__}")
                break
    if t in copyreg.dispatch_table:
        out.append("copyreg")
    return out


def find_refs(obj: Any, path: str, seen: set[int], out: list[str], depth: int = 0) -> None:
    """Paths to functions, methods and classes held as values (pickled by reference)."""
    import types

    if id(obj) in seen or depth > 60 or isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return
    seen.add(id(obj))
    if isinstance(obj, (types.BuiltinFunctionType, types.MethodType, types.FunctionType, type)):
        out.append(f"{path}: {type(obj).__name__} {getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', obj)}")
        return
    if isinstance(obj, torch.Tensor):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            find_refs(k, f"{path}[key]", seen, out, depth + 1)
            find_refs(v, f"{path}[{k!r}]", seen, out, depth + 1)
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            find_refs(v, f"{path}[{i}]", seen, out, depth + 1)
        return
    state = None
    if hasattr(type(obj), "__getstate__") and type(obj).__getstate__ is not object.__getstate__:
        try:
            state = obj.__getstate__()
        except Exception:  # noqa: BLE001
            state = None
    if state is None:
        state = getattr(obj, "__dict__", None)
    if isinstance(state, dict):
        for k, v in state.items():
            find_refs(v, f"{path}.{k}", seen, out, depth + 1)


def main() -> None:
    import artcache
    from artcache import output_code
    from tests.gpu import models

    original = output_code.CompiledGraph.to_blobs

    def to_blobs(self: Any) -> Any:
        w = Walker(io.BytesIO())
        try:
            w.dump(self.entry)
        except Exception as exc:  # noqa: BLE001 - a probe reports everything
            print("pickle walk failed:", repr(exc))
        print(f"## entry: {sum(w.types.values())} objects")
        for k, v in sorted(w.types.items()):
            t = type(w.examples[k])
            print(f"{v:6d}  {k}  {' '.join(flags(t)) if t.__module__ != 'builtins' else ''}")
        refs: list[str] = []
        find_refs(self.entry, "entry", set(), refs)
        print("-- by-reference values:")
        for line in sorted(set(refs)):
            print("   ", line)
        for sa in getattr(self.entry.compiled_fw.result._triton_bundle, "static_autotuners", [])[:1]:
            tuner = sa.kernel
            print("CachingAutotuner state keys:", sorted(tuner.__getstate__()))
            print("fn:", type(tuner.fn), sorted(vars(tuner.fn)) if hasattr(tuner.fn, "__dict__") else "")
            for r in tuner.compile_results[:1]:
                print("compile result:", type(r), sorted(vars(r)))
                print("kernel:", type(r.kernel), sorted(vars(r.kernel)))
        try:
            blobs = original(self)
            print("artcache pickler: OK,", sum(len(b.data) for b in blobs), "bytes")
            return blobs
        except Exception:  # noqa: BLE001
            traceback.print_exc(file=sys.stdout)
            raise

    output_code.CompiledGraph.to_blobs = to_blobs  # type: ignore[method-assign]
    for mode, train in ((None, False), (None, True)):
        print(f"\n==== mode={mode} train={train}")
        cache = artcache.Cache("memory://")
        model = models.make()
        compiled = torch.compile(model, backend=cache.backend(mode=mode))
        x = models.inputs(64)
        if train:
            compiled(x).sum().backward()
        else:
            with torch.no_grad():
                compiled(x)
        print("stats:", cache.stats())
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
