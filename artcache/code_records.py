"""How a frame entry of the precompile tier names and pins the code it depends on, so
that a fresh process can find that code again and refuse the entry when it changed:

* **traced-code records** of the functions Dynamo inlined: ``[module, qualname, digest]``
  (:func:`artcache.code_digest.code_digest`), or for code of an installed package other
  than torch and the standard library ``[top module, "", "package <version>"]`` (its code
  is pinned by its version; torch and the standard library by the environment factors);
* **called-frame names** of the functions a chain reaches that Dynamo compiled as frames of
  their own (:mod:`artcache.chain_capture`): ``[module, qualname, pin, code shape digest]``,
  found again by that name and checked before their precompile entries are installed.

Code made by ``exec`` (a dataclass's ``__init__``) is named through the one function that
holds it; a decorated function through ``__wrapped__``; a property's getter through
``fget``.
"""

from __future__ import annotations

import gc
import sys
import types
from typing import Any

from ._torch import frame_capture as fc
from .code_digest import code_digest, code_shape_digest, installed_module, package_version
from .errors import NotPrecompilable


def traced_records(traced_code: list[Any], frame_codes: list[Any], guards: list[list[Any]]) -> list[list[str]]:
    """The traced-code records of a frame entry: each function Dynamo inlined, by name and
    digest (installed code: its package's version, once per package)."""
    # Code nested in the frame's or a traced function's code (a generator expression, a
    # local function) is part of that code's digest (code_digest walks code constants).
    nested = set().union(*(_nested_code(c) for c in [*frame_codes, *traced_code]))
    # Code a ``code`` guard checks where the call finds it (a function reached through
    # an object, not by a name: a registered closure) is pinned by that guard.
    checked = {check[2] for check in guards if check[0] == "code"}
    traced = [_traced_name(code) for code in traced_code
              if code not in nested and not (checked and code_shape_digest(code) in checked)]
    return list({tuple(t): t for t in traced if t is not None}.values())


def called_name(code: Any) -> list[str]:
    """``[module, qualname, pin, code shape digest]`` of a called frame's function (the
    function whose code it is, found again by that name: a property's getter through
    ``fget``, a decorated function through ``__wrapped__``).  The pin is the function's
    code digest, its package's version for installed code, or ``environment`` for torch
    and the standard library (environment factors of every key)."""
    module = fc.module_of_code(code)
    qualname = code.co_qualname
    if module is None:  # code made by exec (a dataclass's __init__): named by its function
        functions = [f for f in gc.get_referrers(code) if type(f) is types.FunctionType and f.__code__ is code]
        if len(functions) != 1 or not isinstance(functions[0].__module__, str):
            raise NotPrecompilable("called-frame", f"{qualname} cannot be found by name")
        module, qualname = functions[0].__module__, functions[0].__qualname__
    if "<" in qualname:
        raise NotPrecompilable("called-frame", f"{qualname} cannot be found by name")
    qualname, fn = _function_of(code, module, qualname, "called-frame")
    return [module, qualname, _code_pin(module, fn), code_shape_digest(code)]


def _function_of(code: Any, module: str, qualname: str, reason: str) -> tuple[str, Any]:
    """The name under which ``module`` holds the function whose code is ``code`` (a
    property's getter through ``fget``, a decorated function through ``__wrapped__``), and
    that function; NotPrecompilable with ``reason`` when the name finds another."""
    fn = fc.resolve_named([module, qualname])
    if isinstance(fn, property):
        qualname, fn = qualname + ".fget", fn.fget
    if getattr(fn, "__code__", None) is not code:
        # A decorated function: its name finds the wrapper (functools.wraps).
        hops = fc.wrapped_hops(fn, lambda found: getattr(found, "__code__", None) is code)
        if not hops:
            raise NotPrecompilable(reason, f"{module}.{qualname} names another function")
        qualname += ".__wrapped__" * hops
        fn = fc.resolve_named([module, qualname])
    return qualname, fn


def _code_pin(module: str, fn: Any) -> str:
    if code_digest_installed(module):
        record = _package_record(module)
        return record[2] if record is not None else "environment"
    return code_digest(fn)


def called_function(name: list[str]) -> Any:
    """The function a called frame's name finds now, when its code is the recorded one
    (same code shape, same pin); else None."""
    module, qualname, pin, shape = name
    fn = fc.resolve_named([module, qualname])
    if type(fn) is not types.FunctionType or code_shape_digest(fn.__code__) != shape:
        return None
    try:
        return fn if _code_pin(module, fn) == pin else None
    except NotPrecompilable:
        return None


def _traced_name(code: Any) -> list[str] | None:
    """``[module, qualname, digest]`` of a user function Dynamo inlined; for installed
    code, its package's record (:func:`_package_record`).  NotPrecompilable when the
    function cannot be found again by its name."""
    module = fc.module_of_code(code)
    if module is None:
        return _generated_name(code)
    if code_digest_installed(module):
        return _package_record(module)
    if "<" in code.co_qualname:
        raise NotPrecompilable("traced-code", f"{code.co_qualname} cannot be found by name")
    qualname, fn = _function_of(code, module, code.co_qualname, "traced-code")
    return [module, qualname, code_digest(fn)]


def _generated_name(code: Any) -> list[str] | None:
    """``_traced_name`` of code that no module's file holds: code made with ``exec``, as
    a dataclass's ``__init__``.  Found through the function that holds it (the garbage
    collector's referrers: this runs once, when a frame is recorded), named as the
    function names itself (dataclasses name a method ``Class.__init__``)."""
    functions = [f for f in gc.get_referrers(code) if type(f) is types.FunctionType and f.__code__ is code]
    module = functions[0].__module__ if len(functions) == 1 else None
    if not isinstance(module, str) or sys.modules.get(module) is None:
        raise NotPrecompilable("traced-code", f"{code.co_qualname} cannot be found by name")
    if code_digest_installed(module):
        return _package_record(module)
    fn = functions[0]
    if "<" in fn.__qualname__ or fc.resolve_named([module, fn.__qualname__]) is not fn:
        raise NotPrecompilable("traced-code", f"{fn.__qualname__} cannot be found by name")
    return [module, fn.__qualname__, code_digest(fn)]


def _nested_code(code: Any) -> set[Any]:
    out: set[Any] = set()
    stack = [code]
    while stack:
        for const in stack.pop().co_consts:
            if isinstance(const, type(code)) and const not in out:
                out.add(const)
                stack.append(const)
    return out


# The third field of a traced-code record of installed code: the package's version, where a
# user function's record has its code digest.
_PACKAGE = "package "


def _package_record(module: str) -> list[str] | None:
    """The traced-code record of installed code.  The Python and torch versions are
    environment factors of every key, so the standard library and torch need none; any
    other package is recorded by its version (``[top module, "", "package <version>"]``):
    upgraded, its code may trace to another program, and the entry is refused.
    NotPrecompilable for a package whose version cannot be read."""
    top = module.split(".", 1)[0]
    if top in sys.stdlib_module_names or top in ("torch", "builtins", "_operator"):
        return None
    version = package_version(top)
    if not version:
        raise NotPrecompilable("traced-code", f"package {top} has no version to pin its code")
    return [top, "", _PACKAGE + version]


def traced_now(module: str, qualname: str, recorded: str) -> str | None:
    """What a traced-code record would hold now (compared with the stored one)."""
    if recorded.startswith(_PACKAGE):
        version = package_version(module)
        return _PACKAGE + version if version else None
    return _traced_digest(module, qualname)


def _traced_digest(module: str, qualname: str) -> str | None:
    fn = fc.resolve_named([module, qualname])
    return code_digest(fn) if getattr(fn, "__code__", None) is not None else None


def code_digest_installed(module: str) -> bool:
    return installed_module(module)
