"""Access paths and names for the precompile tier: a Dynamo ``Source`` as a plain-data
path a fresh process walks (:func:`source_path`), and an object as the ``[module,
qualname]`` that finds it again (:func:`named`, :func:`resolve_named`).

A path is a root (``["L", local]``, ``["G", global]``, ``["M", module]``) and steps:
``["a", attribute]``, ``["i", key]``, ``["t", ""]`` (``type(x)``: ``x.__class__`` may lie),
``["g", attribute]`` (``object.__getattribute__(x, attribute)``, past a class's own
``__getattribute__``),
and last, a tensor property (``["size", i]``, ``["stride", i]``, ``["offset", 0]``).
Checked on torch 2.13 (CPU) and 2.11 (H200): the ``Source`` classes of
``torch._dynamo.source`` and the globals ``OutputGraph.install_global_by_id`` names.
A source this module does not know raises :class:`NotPrecompilable`.
"""

from __future__ import annotations

import enum
import re
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import NotPrecompilable

_IMPORT_PREFIX = "__import_"  # Dynamo's alias of an imported module in the frame's globals
_BUILTINS_PREFIX = "__builtins_dict__"  # Dynamo's alias of an inlined function's builtins
# A global Dynamo installed for an object by its id (``OutputGraph.install_global_by_id``:
# ``{prefix}_{id(value)}_c{compile id}``): ``torch`` for ``type(tensor)`` (prefix ""), a
# module its code loads (prefix ``___module_NAME``).
_BY_ID = re.compile(r"(?:___module_[A-Za-z0-9_]{1,200})?_([0-9]{1,20})_c[0-9]{1,10}")


def _sources() -> Any:
    import torch._dynamo.source as source

    return source


def _sources() -> Any:
    import torch._dynamo.source as source

    return source


def source_path(source: Any) -> list[list[Any]]:
    """An access path for a Dynamo ``Source``: a root (``["L", local]``, ``["G", global]``,
    ``["M", module]``) followed by steps (``["a", attribute]``, ``["i", key]``)."""
    s = _sources()
    # Markers of how Dynamo treats a module: the object is the base's.
    transparent = tuple(getattr(s, name) for name in (
        "UnspecializedNNModuleSource", "UnspecializedBuiltinNNModuleSource", "NNModuleSource") if hasattr(s, name))
    # Attribute reads (a module's parameter and buffer dicts are read through these).
    attribute = tuple(getattr(s, name) for name in (
        "AttrSource", "ParamBufferSource", "UnspecializedParamBufferSource", "CellContentsSource") if hasattr(s, name))
    # Sources that read one fixed attribute, as Dynamo's source names them: a class's own
    # namespace (``dict({0}.__dict__)``: a mapping proxy here, the same keys and values),
    # its method resolution order, a function's closure cells.
    fixed_attribute = {getattr(s, name): attr for name, attr in (
        ("TypeDictSource", "__dict__"), ("TypeMROSource", "__mro__"), ("ClosureSource", "__closure__"))
        if hasattr(s, name)}
    if type(source) in transparent:
        return source_path(source.base)
    if type(source) is s.LocalSource:  # a local, or the contents of a closure cell by its name
        return [["L", source.local_name]]
    if type(source) is s.GlobalSource:
        name = source.global_name
        if name.startswith(_IMPORT_PREFIX):
            return [["M", name[len(_IMPORT_PREFIX):].replace("_dot_", ".")]]
        if name.startswith(_BUILTINS_PREFIX):  # the builtins namespace of an inlined function
            return [["M", "builtins"]]
        by_id = _BY_ID.fullmatch(name)
        if by_id:
            # The id in the name is the installed object's, alive while installed: a module
            # of that id right now is the object itself.
            found = [m for m in list(sys.modules.values()) if id(m) == int(by_id.group(1))]
            if found and sys.modules.get(found[0].__name__) is found[0]:
                return [["M", found[0].__name__]]
            raise NotPrecompilable("source", f"Dynamo-installed global {name}")
        if name.startswith("__"):
            raise NotPrecompilable("source", f"Dynamo-installed global {name}")
        return [["G", name]]
    if type(source) in attribute:
        return [*source_path(source.base), *(["a", part] for part in source.member.split("."))]
    if type(source) in fixed_attribute:
        return [*source_path(source.base), ["a", fixed_attribute[type(source)]]]
    if type(source) is getattr(s, "GenericAttrSource", None):  # past a class's own __getattribute__
        return [*source_path(source.base), ["g", source.member]]
    if type(source) is getattr(s, "TypeSource", None):  # type(x): a step of its own (x.__class__ may lie)
        return [*source_path(source.base), ["t", ""]]
    if type(source) is getattr(s, "TensorPropertySource", None):  # a size, stride or offset of a tensor
        step = {"SIZE": "size", "STRIDE": "stride", "STORAGE_OFFSET": "offset"}.get(source.prop.name)
        index = 0 if step == "offset" else source.idx
        if step is None or type(index) is not int:
            raise NotPrecompilable("source", f"TensorPropertySource {source.prop.name}")
        return [*source_path(source.base), [step, index]]
    if type(source) is getattr(s, "DefaultsSource", None):  # an inlined function's default argument
        field = "__kwdefaults__" if source.is_kw else "__defaults__"
        if type(source.idx_key) not in (str, int):
            raise NotPrecompilable("source", f"DefaultsSource with index {type(source.idx_key).__name__}")
        return [*source_path(source.base), ["a", field], ["i", source.idx_key]]
    if type(source) in (s.DictGetItemSource, s.GetItemSource):
        index = source.index
        if type(index) not in (str, int) or getattr(source, "index_is_slice", False):
            raise NotPrecompilable("source", f"{type(source).__name__} with index {type(index).__name__}")
        base = source_path(source.base)
        # A name looked up in the builtins namespace: an attribute of the builtins module.
        return [*base, ["a" if base == [["M", "builtins"]] else "i", index]]
    raise NotPrecompilable("source", type(source).__name__)


def named(value: Any) -> list[str]:
    """``[module, qualname]`` of a module, class, function or builtin that is reachable by
    that name right now (checked by walking it), else raises NotPrecompilable."""
    if isinstance(value, types.ModuleType):
        name = value.__name__
        if sys.modules.get(name) is not value:
            raise NotPrecompilable("unnamed-object", f"module {name} is not sys.modules[{name!r}]")
        return [name, ""]
    if isinstance(value, enum.Enum):  # a member is its class's attribute of its name
        owner = type(value)
        name = [owner.__module__, f"{owner.__qualname__}.{value.name}"]
        if "<" in name[1] or resolve_named(name) is not value:
            raise NotPrecompilable("unnamed-object", f"enum member {name[0]}.{name[1]} does not name it")
        return name
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if isinstance(value, (types.BuiltinFunctionType, types.BuiltinMethodType)) and module is None:
        owner = getattr(value, "__self__", None)
        module = getattr(owner, "__name__", None) if isinstance(owner, types.ModuleType) else None
        qualname = value.__name__
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        raise NotPrecompilable("unnamed-object", f"{type(value).__name__} {qualname or value!r}")
    # torch's builtins name a class they are not reachable through (torch.relu's qualname
    # is _VariableFunctionsClass.relu): their module and plain name also identify them.
    found = resolve_named([module, qualname])
    if found is value:
        return [module, qualname]
    if resolve_named([module, getattr(value, "__name__", qualname)]) is value:
        return [module, getattr(value, "__name__", qualname)]
    # A decorated function (functools.wraps): its name finds the wrapper, whose
    # ``__wrapped__`` chain leads to it, and so does the name with that chain appended.
    hops = wrapped_hops(found, lambda candidate: candidate is value)
    if hops:
        return [module, qualname + ".__wrapped__" * hops]
    # Interpreter types with no importable name of their own (method, function, cell).
    for attr, candidate in vars(types).items():
        if candidate is value and not attr.startswith("_"):
            return ["types", attr]
    raise NotPrecompilable("unnamed-object", f"{module}.{qualname} does not name the object it came from")


def wrapped_hops(obj: Any, found: Callable[[Any], bool], limit: int = 8) -> int:
    """How many ``__wrapped__`` steps from ``obj`` (a function ``functools.wraps`` made)
    reach an object ``found`` accepts; 0 when none within ``limit`` does."""
    for hops in range(1, limit + 1):
        obj = getattr(obj, "__wrapped__", None) if isinstance(obj, types.FunctionType) else None
        if obj is None:
            return 0
        if found(obj):
            return hops
    return 0


def resolve_named(name: Sequence[str]) -> Any:
    """The object ``[module, qualname]`` names, among modules already imported (nothing is
    imported here); ``None`` when it names nothing."""
    obj: Any = sys.modules.get(name[0])
    for part in name[1].split(".") if name[1] else ():
        obj = getattr(obj, part, None)
    return obj


def generic_getattr(obj: Any, name: str, default: Any) -> Any:
    """A ``["g", name]`` step: ``object.__getattribute__(obj, name)`` (``default`` when it
    has no such attribute), as Dynamo reads an attribute past a class's own
    ``__getattribute__``."""
    try:
        return object.__getattribute__(obj, name)
    except AttributeError:
        return default


def step_value(obj: Any, step: str, key: Any, missing: Any) -> Any:
    """What one step of an access path after its root reaches from ``obj``: an attribute,
    an item, ``type(obj)``, an attribute past the class's ``__getattribute__``, or a size,
    stride or the storage offset of a plain strided tensor; ``missing`` where it finds
    nothing.  The one reading of a path the replay's checks and torch's guard tree share."""
    try:
        if step == "a":
            return getattr(obj, key, missing)
        if step == "i":
            return obj[key]
        if step == "t":
            return type(obj)
        if step == "g":
            return generic_getattr(obj, key, missing)
    except (AttributeError, KeyError, IndexError, TypeError):
        return missing
    if type(obj) not in (torch.Tensor, torch.nn.Parameter) or obj.layout != torch.strided:
        return missing
    if step == "offset":
        return obj.storage_offset()
    if not 0 <= key < obj.dim():
        return missing
    return obj.size(key) if step == "size" else obj.stride(key)
