"""What pins code the key does not see: the version of an installed package (also one that
sets no ``__version__``) and a code object's structural digest."""

from __future__ import annotations

import importlib.metadata
import types

import typing_extensions

from artcache.code_digest import code_shape_digest, package_version


def test_a_package_without_a_version_attribute_is_named_by_its_distribution() -> None:
    assert not hasattr(typing_extensions, "__version__")
    assert package_version("typing_extensions") == importlib.metadata.version("typing_extensions")
    assert package_version("json") == __import__("json").__version__  # a module's own attribute first
    assert package_version("collections") == ""  # the standard library: Python's version pins it


def _one(x: int) -> int:
    return x + 1


def _two(x: int) -> int:
    return x + 2


def test_a_code_shape_digest_follows_the_instructions_not_the_place() -> None:
    moved = compile("\n\n\ndef _one(x):\n    return x + 1\n", "elsewhere.py", "exec")
    again = next(c for c in moved.co_consts if isinstance(c, types.CodeType))
    assert code_shape_digest(again) == code_shape_digest(_one.__code__)  # other file and line
    assert code_shape_digest(_two.__code__) != code_shape_digest(_one.__code__)
